"""The swarm tier: host stacks on a real Docker Swarm of several daemons (``.ci/swarm-tier`` builds it).

It runs only when asked (``GVTSIM_SWARM_TIER=1``, which ``.ci/swarm-tier`` sets once the swarm is up, with
DOCKER_HOST pointing at its manager); a plain ``make test`` reports these tests as skipped with that
reason. Once asked, a missing swarm is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess

import pytest

TIER = os.environ.get("GVTSIM_SWARM_TIER") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="swarm tier: run .ci/swarm-tier (sets GVTSIM_SWARM_TIER=1)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.swarm)
            if not TIER:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def swarm_manager() -> None:
    """Fail loudly when the tier is asked for and no swarm manager answers."""
    if not TIER:
        return
    r = subprocess.run(["docker", "info", "-f", "{{.Swarm.ControlAvailable}}"], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0 or r.stdout.strip() != "true":
        pytest.fail(f"swarm tier: no swarm manager at DOCKER_HOST={os.environ.get('DOCKER_HOST')}: "
                    f"{r.stderr.strip() or r.stdout.strip()}", pytrace=False)
