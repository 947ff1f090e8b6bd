"""Shared pytest configuration for the gateway and add-on tests.

Fixtures that start real parts live in tests/plugins/ (private Mosquitto,
fake BlueZ on a private D-Bus, fake Supervisor); each module is listed here
once it exists so that a missing optional part never breaks collection.
"""

from importlib.util import find_spec

pytest_plugins = [
    name
    for name in (
        "tests.plugins.mosquitto",
        "tests.plugins.fake_bluez",
        "tests.plugins.supervisor",
        "tests.plugins.gateway",
    )
    if find_spec(name) is not None
]
