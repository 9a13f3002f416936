"""Histogram.summary() (services/common/histo.py) walks HdrHistogram's counts once: it must give exactly
what HdrHistogram's own get_value_at_percentile / get_max_value / get_mean_value give, and a summary kept
from before must never outlive a new value."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.services.common.histo import PERCENTILES, Histogram

values = st.lists(st.floats(min_value=0.0, max_value=5e9, allow_nan=False), min_size=1, max_size=400)


def _reference(h: Histogram, scale: float) -> dict[str, float]:
    hh = h.h
    digits = 1 if scale == 1.0 else 3
    out: dict[str, float] = {"n": h.count}
    for name, p in PERCENTILES.items():
        out[name] = round(float(hh.get_value_at_percentile(p)) / scale, digits)
    out["max"] = round(float(hh.get_max_value()) / scale, digits)
    out["mean"] = round(float(hh.get_mean_value()) / scale, digits)
    return out


@settings(max_examples=60, deadline=None)
@given(values, st.sampled_from([1.0, 1000.0]))
def test_summary_is_hdrhistograms_own_figures(us: list[float], scale: float) -> None:
    h = Histogram()
    for v in us:
        h.record_us(v)
    assert h.summary(scale) == _reference(h, scale)
    # a histogram from another process (only its HdrHistogram counts) summarises the same
    decoded = Histogram.decode(h.encode())
    assert decoded.summary(scale) == _reference(decoded, scale) == _reference(h, scale)


def test_a_kept_summary_and_encoding_are_dropped_by_a_new_value_or_a_merge() -> None:
    h = Histogram()
    h.record_us(100)
    first, enc = h.summary(), h.encode()
    assert h.summary() == first and h.encode() == enc  # kept: nothing changed
    h.record_us(900)
    assert h.summary()["n"] == 2 and h.summary()["max"] > first["max"] and h.encode() != enc
    other = Histogram()
    other.record_us(50_000)
    before = h.summary()
    h.add(other)
    assert h.summary()["n"] == 3 and h.summary() != before
    h.summary()["n"] = 99  # a caller changing its copy does not change the kept one
    assert h.summary()["n"] == 3


def test_record_pair_counts_the_same_value_in_both() -> None:
    from gvtsim.services.common.histo import Histogram, record_pair

    a, b, ref = Histogram(), Histogram(), Histogram()
    for s in (0.0, 1e-7, 3.3e-5, 0.0123, 7.5):
        record_pair(a, b, s)
        ref.record_s(s)
    assert a.summary() == b.summary() == ref.summary() and a.count == 5
