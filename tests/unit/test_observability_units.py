"""Pure parts of metrics, histograms, traces and help: HdrHistogram merging, Prometheus families re-binned
from them (checked with prometheus_client's own parser), trace files merged into trace-event JSON, and the
help formatter."""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from gvtsim.services.common import trace
from gvtsim.services.common.helptext import UserHelpFormatter, plain
from gvtsim.services.common.histo import Histogram, merge
from gvtsim.services.common.metrics import families, parse_address


@settings(deadline=None, max_examples=40)  # decoding histograms is slowish in pure Python on a shared machine
@given(st.lists(st.lists(st.integers(1, 10_000_000), min_size=1, max_size=50), min_size=1, max_size=5))
def test_merged_histograms_equal_one_histogram_of_every_sample(parts: list[list[int]]) -> None:
    hists = []
    for values in parts:
        h = Histogram()
        for v in values:
            h.record_us(v)
        hists.append(h.encode())
    merged = merge(hists)
    everything = sorted(v for values in parts for v in values)
    assert merged.count == len(everything)
    for q in (50.0, 90.0, 99.0):  # within HdrHistogram's 2-digit (1 %) resolution of the true percentile
        # the value of rank round(q % of n), HdrHistogram's definition (get_value_at_percentile)
        true = everything[max(1, int(q / 100 * len(everything) + 0.5)) - 1]
        assert merged.percentile(q) == pytest.approx(true, rel=0.02)
    with pytest.raises(ValueError):
        Histogram.decode("not a histogram")


class _Snapshot:
    def __init__(self, fams: list) -> None:
        self.fams = fams

    def collect(self):
        yield from self.fams


def _expose(role: str, counters: dict, info: dict) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(families(role, True, counters, info)))  # type: ignore[arg-type]
    return {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}


def test_prometheus_histogram_buckets_come_from_the_hdr_histogram() -> None:
    h = Histogram()
    for us in (5, 20, 20, 300, 4000, 4000, 4000, 2_000_000):
        h.record_us(us)
    fams = _expose("vhm", {"ioreq_dispatched": 8}, {"vms": {"count": 1, "list": []}, "ioreq_hist": {"MMIO": h.encode()},
                                                    "ioreqs": {"mmio": 8}, "ioreqs_by_vm": {"1": {"MMIO": 8}}})
    hist = fams["gvtsim_vhm_ioreq_service_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["1e-05"] == 1 and buckets["2.5e-05"] == 3 and buckets["0.0005"] == 4 and buckets["0.005"] == 7
    assert buckets["1.0"] == 7 and buckets["2.5"] == 8 and buckets["+Inf"] == 8
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == 8
    # the sum is the samples' total to within the histogram's bucket widths (bucket medians times counts)
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert abs(total - 2_012_345e-6) < 2_012_345e-6 * 5e-3, total
    assert fams["gvtsim_events"].samples[0].labels == {"role": "vhm", "counter": "ioreq_dispatched"}
    assert fams["gvtsim_vm_ioreqs"].samples[0].labels == {"vm": "1", "kind": "MMIO"}


def test_metrics_address_parsing() -> None:
    assert parse_address("") is None and parse_address("off") is None
    assert parse_address("9100") == "127.0.0.1:9100" and parse_address("0.0.0.0:0") == "0.0.0.0:0"
    with pytest.raises(ValueError):
        parse_address("host:port")


def test_trace_is_cheap_off_and_merges_into_trace_event_json(tmp_path) -> None:
    assert not trace.on
    trace.complete("ioreq MMIO", "ioreq", trace.now_us(), 5.0)  # off: nothing written anywhere
    path = trace.enable(str(tmp_path), "gvt", "gvt-test")
    try:
        trace.complete("gvt emulate", "ioreq", trace.now_us() - 10, 10.0, ioreqs=2)
        trace.instant("MSI inject", "gpu", vm=1)
    finally:
        trace.disable()
    with open(path, "a") as f:
        f.write('{"name": "cut by a kill"')  # a last line a SIGKILL cut in half is skipped
    doc = trace.merge(str(tmp_path))
    json.dumps(doc)
    evs = doc["traceEvents"]
    assert [e["ph"] for e in evs] == ["M", "M", "X", "i"]
    assert evs[1]["args"]["labels"] == "gvt" and evs[2]["dur"] == 10.0 and evs[3]["args"] == {"vm": 1}


def test_help_formatter_shows_defaults_and_no_markup() -> None:
    p = argparse.ArgumentParser(prog="x", description="``gvtsim x``: see :mod:`.report`",
                                formatter_class=UserHelpFormatter)
    p.add_argument("--ivl", type=float, default=0.5, help="interval [GVTSIM_IVL]")
    p.add_argument("--metrics", default="", help="endpoint [GVTSIM_METRICS]")
    text = p.format_help()
    assert "gvtsim x: see report" in text and "``" not in text
    assert "[GVTSIM_IVL, default: 0.5]" in text and "[GVTSIM_METRICS, default: off]" in text
    assert plain(":class:`~.Foo` and ``bar``") == "Foo and bar"
