"""``blupow-gateway decode``: users paste frames from logs; errors are one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway import cli
from blupow_gateway.devices import _docs

ROOT = Path(__file__).resolve().parents[2]
ROVER = (
    "ff0344005700810102211900000000000000ab00cc00230000007c0090044c0000008f00000022002201b0000002bf"
    "0000059b000015e700000000000680360000000000020000cab2"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_prints_physical_values(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "decode", "--type", "renogy_charge_controller", "--start", "0x0100", ROVER)
    assert code == 0, err
    values = json.loads(out)
    assert values["battery_soc"] == 87 and values["battery_voltage"] == 12.9
    assert values["power_generation_total"] == 426.038 and values["charging_state"] == "mppt"


def test_decode_accepts_spaced_hex_and_decimal_start(capsys: pytest.CaptureFixture[str]) -> None:
    spaced = " ".join(ROVER[i : i + 2] for i in range(0, len(ROVER), 2))
    code, out, _ = run(capsys, "decode", "--type", "renogy_charge_controller", "--start", "256", *spaced.split())
    assert code == 0 and json.loads(out)["pv_power"] == 35


def test_decode_lists_and_variants(capsys: pytest.CaptureFixture[str]) -> None:
    frame = "300344" + "0004" + "0021" * 4 + "0000" * 12 + "0001" + "ff9c" + "0000" * 14 + "0000"
    from blupow_gateway import modbus

    frame = modbus.with_crc(bytes.fromhex(frame)).hex()
    code, out, err = run(
        capsys, "decode", "--type", "renogy_battery", "--variant", "legacy", "--start", "5000", "--id", "0x30", frame
    )
    assert code == 0, err
    values = json.loads(out)
    assert values["cell_voltages"] == [3.3, 3.3, 3.3, 3.3] and values["cell_temperatures"] == [-10.0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--type", "renogy_charge_controller", "--start", "0x100", ROVER[:-1]], "odd number of hex digits"),
        (["--type", "renogy_charge_controller", "--start", "0x100", ROVER[:-2] + "b3"], "CRC mismatch"),
        (["--type", "renogy_charge_controller", "--start", "0x100", "ff8302a101"], "Modbus exception 0x02"),
        (["--type", "renogy_charge_controller", "--start", "0x100", "ff03"], "too short"),
        (["--type", "renogy_charge_controller", "--start", "0x100", "zz"], "not valid hex"),
        (["--type", "renogy_charge_controller", "--start", "0x100", "--id", "1", ROVER], "expected 0x01"),
        (["--type", "nope", "--start", "0x100", ROVER], "unknown type 'nope'"),
        (["--type", "renogy_battery", "--variant", "x", "--start", "0x100", ROVER], "unknown variant"),
        (["--type", "renogy_inverter", "--start", "0x100", ROVER], "no renogy_inverter field"),
        (["--type", "generic_modbus", "--start", "0x100", ROVER], "config block is required"),
    ],
)
def test_decode_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "decode", *argv)
    assert code == 2
    assert out == ""
    assert message in err and err.count("\n") == 1


def test_decode_generic_with_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = {
        "modbus_id": 255,
        "blocks": [{"start": 256, "count": 2}],
        "fields": [
            {"key": "soc", "register": 256, "type": "u16", "unit": "%"},
            {"key": "volts", "register": 257, "type": "u16", "scale": 0.1},
        ],
    }
    path = tmp_path / "device.json"
    path.write_text(json.dumps(config))
    code, out, err = run(capsys, "decode", "--type", "generic_modbus", "--config", str(path), "--start", "0x100", ROVER)
    assert code == 0, err
    assert json.loads(out) == {"soc": 87, "volts": 12.9}


def test_console_script_runs_as_a_process() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "blupow_gateway",
            "decode",
            "--type",
            "renogy_charge_controller",
            "--start",
            "0x0100",
            ROVER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["battery_voltage"] == 12.9


def test_device_reference_is_up_to_date() -> None:
    assert (ROOT / "docs" / "devices.md").read_text("utf-8") == _docs.render(), "run scripts/gen-device-docs"


def test_probe_rejects_a_bad_mac_before_touching_bluetooth(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "probe", "xyz", "--type", "renogy_charge_controller")
    assert code == 2 and out == ""
    assert "invalid MAC address 'xyz'" in err


def test_probe_module_lists_the_units_of_a_simulated_hub(sim_process: Any) -> None:
    """``blupow-gateway probe-module`` as a user runs it, against blupow-sim's hub over real bleak."""
    sim = sim_process("hub:battery*2,controller@97")
    (module,) = sim.modules
    command = [str(Path(sys.executable).with_name("blupow-gateway")), "probe-module", module.mac, "--wait", "0.3"]
    done = subprocess.run([*command, "--json"], env=sim.env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["summary"] == "2 batteries (48, 49) and a charge controller (97)"
    assert [(u["modbus_id"], u["type"]) for u in report["units"]] == [
        (48, "renogy_battery"),
        (49, "renogy_battery"),
        (97, "renogy_charge_controller"),
    ]
    table = subprocess.run(command, env=sim.env(), capture_output=True, text=True, timeout=60, check=False)
    assert table.stdout.startswith(f"{module.mac}: 2 batteries (48, 49) and a charge controller (97) (")
