"""`gvtsim bench`: every section runs, the e2e one included (it once failed with NameError)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gvtsim.orchestration import bench, e2ebench


def test_e2e_section_runs_and_prints_its_figures(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[int] = []

    def fake_run(n: int) -> dict[str, Any]:  # the real one starts vhm and gvt processes
        asked.append(n)
        return {"ioreq_p50_us": 123.0}

    monkeypatch.setattr(e2ebench, "run", fake_run)
    assert bench.main(["--only", "e2e", "--json", "-n", "5000"]) == 0
    assert json.loads(capsys.readouterr().out) == {"e2e": {"ioreq_p50_us": 123.0}}
    assert asked == [500]  # n // 10 operations (at least 200)


def test_e2e_subcommand_still_reaches_its_own_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from gvtsim.orchestration import bench_e2e

    seen: list[list[str]] = []
    monkeypatch.setattr(bench_e2e, "main", lambda argv: seen.append(argv) or 0)
    assert bench.main(["e2e", "--rounds", "1"]) == 0
    assert seen == [["--rounds", "1"]]
