"""Test configuration shared by every tier: uvloop for asyncio tests, process fixtures."""

from __future__ import annotations

import os
import tempfile

import pytest
import uvloop

from gvtsim.services.common import curve


def pytest_asyncio_loop_factories(config, item):  # pytest-asyncio >= 1.4 hook
    """Run every asyncio test on uvloop, as the services do."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session", autouse=True)
def topology_keys():
    """CURVE is on by default: one set of topology keys for the whole run, seen by every process we start
    (through GVTSIM_KEYS) and by in-process clients."""
    keys_dir = tempfile.mkdtemp(prefix="gvtsim-keys-")
    curve.generate(keys_dir)
    os.environ[curve.ENV_KEYS] = keys_dir
    insecure = bool(os.environ.get("GVTSIM_TEST_INSECURE"))  # to compare a run without CURVE
    if insecure:
        os.environ[curve.ENV_INSECURE] = "1"
    else:
        os.environ.pop(curve.ENV_INSECURE, None)
    curve.configure(keys_dir, insecure=insecure)
    yield keys_dir
