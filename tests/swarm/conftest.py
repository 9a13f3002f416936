"""The swarm tier: host stacks on a real Docker Swarm of several daemons (``.ci/swarm-tier`` builds it).

It runs only when asked (``GVTSIM_SWARM_TIER=1``, which ``.ci/swarm-tier`` sets once the swarm is up, with
DOCKER_HOST pointing at its manager); a plain ``make test`` reports these tests as skipped with that
reason. Once asked, a missing swarm is a failure, never a skip.
"""

from __future__ import annotations

import os

import pytest

from support.tier import Tier, docker

TIER = Tier("swarm", os.path.dirname(__file__), "GVTSIM_SWARM_TIER", ".ci/swarm-tier")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    TIER.mark(items)


@pytest.fixture(scope="session", autouse=True)
def swarm_manager() -> None:
    """Fail loudly when the tier is asked for and no swarm manager answers."""
    def check() -> str | None:
        r = docker("info", "-f", "{{.Swarm.ControlAvailable}}")
        if r.returncode == 0 and r.stdout.strip() == "true":
            return None
        why = r.stderr.strip() or r.stdout.strip()
        return f"no swarm manager at DOCKER_HOST={os.environ.get('DOCKER_HOST')}: {why}"
    TIER.require(check)
