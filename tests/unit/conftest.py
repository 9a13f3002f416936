"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from test_gvt_cmd_parser_fixtures import Rig

from gvtsim.services.common.memory import MachineMemory


@pytest.fixture
def mem(tmp_path) -> Iterator[MachineMemory]:
    """64 MB of machine memory in a file of the test's own (a module that needs another size defines its own)."""
    mm = MachineMemory(str(tmp_path / "machine.mem"), 64 << 20, create=True)
    yield mm
    mm.close()


@pytest.fixture
def rig(tmp_path) -> Iterator[Rig]:
    """gvt's and pgpu's cores on one machine memory, the shells played by ``pump()`` (test_gvt_cmd_parser_fixtures)."""
    rg = Rig(f"{tmp_path}/machine.mem")
    yield rg
    rg.close()
