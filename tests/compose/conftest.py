"""The compose tier: the real docker-compose.yml on a real Docker engine (docs/ARCHITECTURE.md, tests).

It runs only when asked (``GVTSIM_COMPOSE_TIER=1``, which ``.ci/compose-tier`` sets after starting the
engine); a plain ``make test`` reports these tests as skipped with that reason. Once asked, a missing
engine is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess

import pytest

TIER = os.environ.get("GVTSIM_COMPOSE_TIER") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="compose tier: run .ci/compose-tier (sets GVTSIM_COMPOSE_TIER=1)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.compose)
            if not TIER:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """Fail loudly when the tier is asked for and no engine answers."""
    if not TIER:
        return
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.fail(f"compose tier: no Docker engine: {r.stderr.strip()}", pytrace=False)
