"""Test configuration shared by every tier: uvloop for asyncio tests, process fixtures."""

from __future__ import annotations

import uvloop


def pytest_asyncio_loop_factories(config, item):  # pytest-asyncio >= 1.4 hook
    """Run every asyncio test on uvloop, as the services do."""
    return {"uvloop": uvloop.new_event_loop}
