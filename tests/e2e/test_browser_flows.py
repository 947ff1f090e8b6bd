"""The BluPow options flow as a person uses it: clicked through the real frontend in headless Chromium.

API-driven flow tests read the flow's JSON; the frontend renders it with its own rules (titles,
placeholders, spinners), so these tests look at what the dialog shows. Every state the dialog
shows is recorded; any "Translation Error" or a spinner that does not end fails the test with a
screenshot. Screenshots of each step go to artifacts/e2e/browser-flows/.

Runs before test_system.py (files run in alphabetical order) on the same stack, before any device
is added, and leaves it as it found it: flow A adds the Communication Hub, flow C removes it again
(test_system.py adds it once more through the API and builds on it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .browser import CHROMIUM, chromium, log_in
from .flow_dialog import FlowDialog
from .ha_api import HomeAssistantAPI
from .procs import wait_until
from .stack import GATEWAY_ID, SimModule, Stack

ENTITY_TIMEOUT = 60.0
SCAN = "Scan for Bluetooth modules and the devices behind them"
ADD = "Add a device by its address"
REMOVE = "Remove a device"
INVALID_MAC = "This is not a Bluetooth address. Write it as AA:BB:CC:DD:EE:FF."
KEEP = "Keep it: the gateway keeps trying"
UNDO = "Do not add it"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def dialog(stack: Stack, artifacts: Path) -> Iterator[FlowDialog]:
    """One Chromium for the module, logged in, recording the flow dialog."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup system)")
    close_flow(stack, stack.options_flow_menu()["flow_id"])  # the integration sees the gateway online
    tokens = HomeAssistantAPI(stack.ha_url).login(stack.options.username, stack.options.password)
    with chromium(stack.logs_dir / "chromium-flows.log") as page:
        log_in(page, stack.ha_url, tokens)
        FlowDialog.install(page)
        yield FlowDialog(page, artifacts / "browser-flows")


def close_flow(stack: Stack, flow_id: str) -> None:
    """Drop a flow opened through the API (as closing its dialog does)."""
    stack.api.call("DELETE", f"/api/config/config_entries/options/flow/{flow_id}")


def hub(stack: Stack) -> SimModule:
    """The simulated Communication Hub: batteries at Modbus 48 and 49, a charge controller at 97."""
    assert stack.sim is not None and stack.sim.modules
    return stack.sim.modules[0]


def hub_unique_ids(module: SimModule) -> set[str]:
    """An entity of each of the hub's three devices (the first unit's carry no Modbus id)."""
    key = module.topic_id
    return {f"blupow_{key}_current", f"blupow_{key}_49_current", f"blupow_{key}_97_pv_power"}


def test_browser_scan_then_add_the_hub(stack: Stack, dialog: FlowDialog) -> None:
    """Flow A: Configure → scan → pick the hub → the gateway asks its devices → all ticked → added."""
    module = hub(stack)
    dialog.open_options(stack.ha_url, "blupow")
    dialog.expect("menu", SCAN, ADD, REMOVE, shot="a1-menu")
    dialog.choose_menu(SCAN)
    dialog.expect("form", "Bluetooth modules found", module.mac, shot="a2-modules-found")
    assert any(s["kind"] == "progress" and "is scanning" in s["text"] for s in dialog.seen), dialog.seen

    dialog.choose(module.mac)
    picked = [option["label"] for option in dialog.options() if option["checked"]]
    assert len(picked) == 1 and module.mac in picked[0], picked  # the frontend preselects the first module
    dialog.submit()
    text = dialog.expect("form", "Found: 2 batteries (48, 49) and a charge controller (97)", shot="a3-devices-behind")
    assert module.mac in text
    assert any(s["kind"] == "progress" and f"asks the devices behind {module.mac}" in s["text"] for s in dialog.seen)
    units = dialog.options()
    assert [u["label"].split(":")[0] for u in units] == [
        "Battery at Modbus id 48",
        "Battery at Modbus id 49",
        "Charge controller at Modbus id 97",
    ], units
    assert all(u["checked"] for u in units), units

    dialog.submit()
    dialog.expect(
        "abort",
        f"Added to gateway {GATEWAY_ID}:",
        "Battery at Modbus id 48",
        "Battery at Modbus id 49",
        "Charge controller at Modbus id 97",
        shot="a4-added",
    )
    dialog.close()
    # What the dialog promised: each device's entities appear after its first poll.
    wanted = hub_unique_ids(module)
    wait_until(lambda: wanted <= set(stack.entities_of(module.mac)), ENTITY_TIMEOUT, "the hub's devices' entities")


def test_browser_add_by_address_rejects_a_wrong_address(stack: Stack, dialog: FlowDialog) -> None:
    """Flow B: no type is guessed for the user, and a Bluetooth address that is not one is refused
    in words, on the form, which keeps what was typed."""
    dialog.open_options(stack.ha_url, "blupow")
    dialog.expect("menu", ADD)
    dialog.choose_menu(ADD)
    dialog.expect("form", "Bluetooth address", "Device type")
    dialog.fill("Bluetooth address", "not-a-mac")
    dialog.submit()
    dialog.expect("form", "Pick the device type", shot="b1-no-type")
    dialog.select("Device type", "Battery: Renogy smart lithium")
    dialog.submit()
    dialog.expect("form", INVALID_MAC, shot="b2-invalid-address")
    assert dialog.field_value("Bluetooth address") == "not-a-mac"
    dialog.close()


def test_browser_remove_the_hub(stack: Stack, dialog: FlowDialog) -> None:
    """Flow C (after A): remove all three devices of the hub in one go; their entities go too."""
    module = hub(stack)
    whole = f"All 3 devices on {module.mac}"
    dialog.open_options(stack.ha_url, "blupow")
    dialog.expect("menu", REMOVE)
    dialog.choose_menu(REMOVE)
    dialog.expect("form", whole, shot="c1-remove-form")
    offered = dialog.options()
    assert offered and not any(option["checked"] for option in offered), offered  # nothing pre-selected
    dialog.choose(whole)
    dialog.submit()
    # nothing goes before the dialog said what goes, in words
    dialog.expect("form", "Remove this device?", f"all 3 devices on {module.mac}", shot="c2-remove-confirm")
    assert stack.entities_of(module.mac), "removed before the confirmation"
    dialog.submit()
    last4 = module.topic_id[-4:]
    dialog.expect(
        "abort",
        f"Removed from gateway {GATEWAY_ID}:",
        *(
            f"{name} {last4} #{modbus_id}"
            for name, modbus_id in (("Battery", 48), ("Battery", 49), ("Charge controller", 97))
        ),
        shot="c3-removed",
    )
    dialog.close()
    # Gone for good before test_system.py adds the hub again through the API.
    wait_until(lambda: not stack.entities_of(module.mac), ENTITY_TIMEOUT, "the hub's entities to go")


def test_browser_add_by_address_always_finishes(stack: Stack, dialog: FlowDialog) -> None:
    """Flow D: add a device by its address, five times over (removed through the API in between).
    In Home Assistant 2024.3's frontend the spinner of such an add never ended in 2 of 5 tries (the
    answer came before the page listened for it); every try must now end on the result."""
    assert stack.sim is not None
    charger = stack.sim.device("renogy_dcc")
    for attempt in range(5):
        dialog.open_options(stack.ha_url, "blupow")
        dialog.expect("menu", ADD)
        dialog.choose_menu(ADD)
        dialog.expect("form", "Bluetooth address", "Device type")
        dialog.fill("Bluetooth address", charger.mac)
        dialog.select("Device type", "DC-DC charger")
        dialog.submit()
        # found, in words: what the charger said it is, then where its entities are
        text = dialog.expect("abort", "Found ", f"is added to gateway {GATEWAY_ID}", shot=f"d{attempt + 1}-found")
        entry = wait_until(lambda: stack.device_entry(charger.mac), 30, "the charger's device entry")
        assert f"Found {entry['model']}" in text and charger.mac in text, (text, entry)
        dialog.close()
        removed = stack.remove_device(charger.mac)
        assert removed.get("reason") == "device_removed", removed


def test_browser_add_a_device_that_is_not_there(stack: Stack, dialog: FlowDialog) -> None:
    """Flow E: a well-formed address of no device is not "added" in silence: the dialog says it
    could not be reached and why, and "Do not add it" leaves nothing behind."""
    nobody = "C4:64:E3:00:99:99"
    dialog.open_options(stack.ha_url, "blupow")
    dialog.expect("menu", ADD)
    dialog.choose_menu(ADD)
    dialog.expect("form", "Bluetooth address", "Device type")
    dialog.fill("Bluetooth address", nobody)
    dialog.select("Device type", "Battery: Renogy smart lithium")
    dialog.submit()
    text = dialog.expect("menu", "Device not reachable now", nobody, KEEP, UNDO, shot="e1-not-reachable")
    assert "not connected to the Renogy app" in text, text
    # the spinner meanwhile said what it waits for
    waits = [s["text"] for s in dialog.seen if s["kind"] == "progress"]
    assert any(f"adds {nobody} and connects to it" in text for text in waits), waits
    assert nobody in {d["mac_address"] for d in stack.gateway_devices()}  # added, until the user says
    dialog.choose_menu(UNDO)
    dialog.expect("abort", f"{nobody}) was not added", shot="e2-not-added")
    dialog.close()
    assert nobody not in {d["mac_address"] for d in stack.gateway_devices()}
    assert not stack.entities_of(nobody)
