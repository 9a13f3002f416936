"""The compose tier: the real docker-compose.yml on a real Docker engine (docs/ARCHITECTURE.md, tests).

It runs only when asked (``GVTSIM_COMPOSE_TIER=1``, which ``.ci/compose-tier`` sets after starting the
engine); a plain ``make test`` reports these tests as skipped with that reason. Once asked, a missing
engine is a failure, never a skip.
"""

from __future__ import annotations

import os

import pytest

from support.tier import Tier, docker

TIER = Tier("compose", os.path.dirname(__file__), "GVTSIM_COMPOSE_TIER", ".ci/compose-tier")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    TIER.mark(items)


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """Fail loudly when the tier is asked for and no engine answers."""
    def check() -> str | None:
        r = docker("info")
        return None if r.returncode == 0 else f"no Docker engine: {r.stderr.strip()}"
    TIER.require(check)
