"""An opt-in test tier (compose, swarm): its tests run only when the tier's script asks for them.

A plain ``make test`` collects them and reports them skipped with the reason; once asked for (the tier's
environment variable is ``1``), a missing engine or swarm is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest


class Tier:
    """The tier of the tests under ``here`` (a conftest's folder), asked for by ``env_var=1``."""

    def __init__(self, name: str, here: str, env_var: str, script: str) -> None:
        self.name, self.here, self.env_var, self.script = name, here, env_var, script
        self.asked = os.environ.get(env_var) == "1"

    def mark(self, items: list[pytest.Item]) -> None:
        """Mark the tier's tests (``-m NAME``), and skip them when the tier was not asked for."""
        skip = pytest.mark.skip(reason=f"{self.name} tier: run {self.script} (sets {self.env_var}=1)")
        for item in items:
            if str(item.fspath).startswith(self.here):
                item.add_marker(getattr(pytest.mark, self.name))
                if not self.asked:
                    item.add_marker(skip)

    def require(self, check: Callable[[], str | None]) -> None:
        """Fail loudly when the tier is asked for and ``check`` (None when ready, else why not) says no."""
        if not self.asked:
            return
        why = check()
        if why is not None:
            pytest.fail(f"{self.name} tier: {why}", pytrace=False)


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` (the engine at DOCKER_HOST), output captured."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30)
