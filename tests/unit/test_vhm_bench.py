"""The vhm core benchmark runs and reports every figure (its numbers are printed, never asserted)."""

from __future__ import annotations

from gvtsim.services.vhm import bench


def test_bench_runs_and_reports_figures(capsys):
    figures = bench.run(n=64, mem_mb=320)
    for name in ("ioreq_mmio_dispatch_complete", "ioreq_cf8_latch_read", "ioreq_fallback_pio", "read_gpa_4k"):
        assert figures[name]["median_ns"] > 0
    assert figures["vm_create_256mb_extents"] >= 256 * 256 // 16  # fragmented: runs of at most 16 frames
    with capsys.disabled():
        print(f"\nvhm core bench (tiny n): {figures}")
