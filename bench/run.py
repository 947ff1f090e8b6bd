"""Run the benchmarks, print one table and write ``bench/results.json``.

    scripts/bench            every figure at full size (about 10 minutes on 2 cores)
    scripts/bench --quick    every figure, reduced (under 3 minutes)
    scripts/bench --only cycle,scale

Figures (docs/performance.md explains each one and how "ideal" is computed):

  cycle    1. poll cycle of 8 devices at max_connections 1, 2, 3 against the BLE limit
  cost     2. gateway CPU per poll against a python3 process per poll
  memory   3. peak RSS and growth, 10 devices over 1,000 polls
  latency  4. add_device -> response and -> first state on MQTT
  scale    5. 50, 100, 200 devices at zero BLE latency: messages/s and CPU per poll
  keep     6. keep-connected against reconnect-per-poll: steady-state poll time
  storm    7. command answer times under a storm of mixed commands while devices poll
  hub      8. N units behind one module: cycle against connect + sum of unit reads, CPU per unit
  shunt    9. the Smart Shunt's frame stream: share of one core at 8.5 frames/s (<= 2 %)

Exit status: 0 when every figure ran (targets not met are shown in the table),
1 when a figure failed to run, 2 with ``--strict`` when a target was not met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.plugins.mosquitto import MOSQUITTO, Mosquitto

from .common import Figure, machine

ROOT = Path(__file__).resolve().parent
FIGURES = ("cycle", "keep", "scale", "cost", "memory", "latency", "storm", "hub", "shunt")


class Brokers:
    """Two private Mosquittos: with TCP_NODELAY (most figures) and with Mosquitto's defaults."""

    def __init__(self) -> None:
        self.dirs = [Path(tempfile.mkdtemp(prefix="blupow-bench-mqtt-")) for _ in range(2)]
        self.nodelay = Mosquitto(self.dirs[0])
        with self.nodelay.config_path.open("a") as config:
            config.write("set_tcp_nodelay true\n")
        self.default = Mosquitto(self.dirs[1])

    def __enter__(self) -> Brokers:
        self.nodelay.start()
        self.default.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.nodelay.stop()
        self.default.stop()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


def run_figures(selected: list[str], quick: bool) -> tuple[list[Figure], list[str]]:
    from . import cycle, hub, inproc, process, shunt

    figures: list[Figure] = []
    errors: list[str] = []
    measured: dict[str, float] = {}  # what one figure measured that another reports beside its own

    def scale(broker: Mosquitto) -> list[Figure]:
        result, smallest = asyncio.run(inproc.scale_figures(broker, quick))
        measured["inproc_ms"] = smallest.cpu_per_poll_ms
        return result

    with Brokers() as brokers:
        steps: dict[str, Callable[[], list[Figure]]] = {
            "cycle": lambda: asyncio.run(cycle.cycle_figures(quick)),
            "keep": lambda: asyncio.run(cycle.keep_connected_figures(quick)),
            "scale": lambda: scale(brokers.nodelay),
            "cost": lambda: process.cost_figures(brokers.nodelay, quick, measured.get("inproc_ms")),
            "memory": lambda: process.memory_figures(brokers.nodelay, quick),
            "latency": lambda: process.latency_figures(brokers.nodelay, brokers.default, quick),
            "storm": lambda: process.storm_figures(brokers.nodelay, quick),
            "hub": lambda: hub.run(quick),
            "shunt": lambda: shunt.run(quick),
        }
        for name in selected:
            started = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                result = steps[name]()
            except Exception as exc:
                errors.append(f"{name}: {exc}")
                traceback.print_exc()
                figures.append(Figure(f"{name}: FAILED ({exc})", None, "", "runs", False))
                continue
            figures += result
            print(f"bench: {name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return figures, errors


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "target", "met")]
    for f in figures:
        value = "-" if f.value is None else f"{f.value:g} {f.unit}".rstrip()
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.name, value, f.target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced version of every figure (under 3 minutes)")
    parser.add_argument("--only", help=f"comma-separated figures ({', '.join(FIGURES)})")
    parser.add_argument("--output", type=Path, default=ROOT / "results.json", help="where to write the results")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is not met")
    args = parser.parse_args(argv)
    selected = list(FIGURES) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in selected if s not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)} (known: {', '.join(FIGURES)})")
    if "cost" in selected and "scale" in selected:  # cost reports the in-process number scale measured
        selected = [s for s in selected if s != "cost"] + ["cost"]
    if not Path(MOSQUITTO).exists():
        print(f"scripts/bench: {MOSQUITTO} is required (apt-get install mosquitto)", file=sys.stderr)
        return 1

    started = time.monotonic()
    figures, errors = run_figures(selected, args.quick)
    elapsed = time.monotonic() - started
    host = machine()
    print()
    print(table(figures))
    notes = [f"  {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    print()
    print(
        f"{'quick' if args.quick else 'full'} run in {elapsed:.0f} s on {host['nproc']} x {host['cpu']}, "
        f"Python {host['python']}, Linux {host['kernel']}"
    )
    args.output.write_text(json.dumps([f.to_json() for f in figures], indent=2) + "\n")
    print(f"results: {args.output}")
    if errors:
        print("failed: " + "; ".join(errors), file=sys.stderr)
        return 1
    if args.strict and any(f.met is False for f in figures):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
