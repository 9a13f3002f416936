"""Latency histograms recorded at the source, that merge exactly across processes (HdrHistogram).

Percentiles cannot be averaged: the p99 of two processes is not any mix of their p99s. So every process
records each latency into an HdrHistogram (values in microseconds, 2 significant digits: any value is
known within 1 %, from 1 us to an hour) and reports it encoded (HdrHistogram's compressed base64 form,
the one every HdrHistogram implementation reads); a reader decodes and adds the histograms of every
process and takes percentiles of the sum. See http://hdrhistogram.org and the `hdrhistogram` package.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: nothing a simulation measures lasts longer
DIGITS = 2
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


PENDING_MAX = 4096  # distinct values held before they go into the HdrHistogram
#: 2 significant digits: HdrHistogram's first bucket has 256 unit-wide sub-buckets (2^ceil(log2(2 * 10^2))),
#: so a value of b > 8 bits is resolved to 2^(b - 8)
SUB_BUCKET_BITS = 8


class Histogram:
    """One latency distribution, in microseconds.

    Recording is on the ioreq path, and the pure-Python HdrHistogram's ``record_value`` costs tens of
    microseconds, so a value first goes into a plain counter (one dict update) and the counter is added to
    the HdrHistogram (one ``record_value(v, n)`` per distinct value) when the histogram is read or the
    counter grows past PENDING_MAX distinct values. The result is the same histogram.

    The HdrHistogram itself (a pure-Python object with a counts array, about 0.1 ms to build) is made only
    when first read: callers write ``d.setdefault(key, Histogram())`` on the ioreq path, which builds a
    Histogram per call whether or not it is kept."""

    __slots__ = ("_h", "_pending")

    def __init__(self, h: HdrHistogram | None = None) -> None:
        self._h = h
        self._pending: Counter[int] = Counter()

    @property
    def h(self) -> HdrHistogram:
        """The HdrHistogram, with every recorded value in it."""
        if self._h is None:
            self._h = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
        if self._pending:
            for value, n in self._pending.items():
                self._h.record_value(value, n)
            self._pending.clear()
        return self._h

    def record_s(self, seconds: float) -> None:
        """Record one latency given in seconds (clamped into the histogram's range)."""
        self.record_us(seconds * 1e6)

    def record_us(self, us: float) -> None:
        """Record one latency given in microseconds (clamped into the histogram's range)."""
        v = min(HIGHEST_US, max(LOWEST_US, int(us + 0.5)))
        shift = v.bit_length() - SUB_BUCKET_BITS
        if shift > 0:  # the lowest value of its HdrHistogram bucket: the same bucket, few distinct keys
            v = (v >> shift) << shift
        self._pending[v] += 1
        if len(self._pending) > PENDING_MAX:
            self.h  # noqa: B018  (the property folds the pending values in)

    def add(self, other: "Histogram") -> "Histogram":
        """Merge ``other`` into this one (exact: bucket counts add). Returns self."""
        if other.count:
            self.h.add(other.h)
        return self

    @property
    def count(self) -> int:
        held = int(self._h.get_total_count()) if self._h is not None else 0
        return held + sum(self._pending.values())

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (0..100), in microseconds; 0.0 when empty."""
        return float(self.h.get_value_at_percentile(p)) if self.count else 0.0

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        """{n, p50, p90, p99, max, mean}, values divided by ``scale`` (1000: milliseconds)."""
        if not self.count:
            return {"n": 0}
        out: dict[str, Any] = {"n": self.count}
        for name, p in PERCENTILES.items():
            out[name] = round(self.percentile(p) / scale, 1 if scale == 1.0 else 3)
        out["max"] = round(float(self.h.get_max_value()) / scale, 1 if scale == 1.0 else 3)
        out["mean"] = round(float(self.h.get_mean_value()) / scale, 1 if scale == 1.0 else 3)
        return out

    def encode(self) -> str:
        """HdrHistogram's compressed base64 encoding (what goes into JSON events and STATUS)."""
        return self.h.encode().decode("ascii")

    @classmethod
    def decode(cls, text: str | bytes) -> "Histogram":
        """The histogram :meth:`encode` wrote. Raises ValueError for text that is not one."""
        try:
            h = HdrHistogram.decode(text.encode("ascii") if isinstance(text, str) else text)
        except Exception as err:  # the library raises several types for a bad payload
            raise ValueError(f"not an encoded HdrHistogram: {err}") from None
        return cls(h)

    def buckets(self) -> list[tuple[float, int]]:
        """(value_us, count) of every recorded bucket, ascending: for CDF plots."""
        out = []
        for item in self.h.get_recorded_iterator():
            out.append((float(item.value_iterated_to), int(item.count_added_in_this_iter_step)))
        return out


def merge(parts: Iterable[Histogram | str]) -> Histogram:
    """One histogram from several (objects or encoded strings)."""
    out = Histogram()
    for part in parts:
        out.add(Histogram.decode(part) if isinstance(part, (str, bytes)) else part)
    return out
