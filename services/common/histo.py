"""Latency histograms recorded at the source, that merge exactly across processes (HdrHistogram).

Percentiles cannot be averaged: the p99 of two processes is not any mix of their p99s. So every process
records each latency into an HdrHistogram (values in microseconds, 2 significant digits: any value is
known within 1 %, from 1 us to an hour) and reports it encoded (HdrHistogram's compressed base64 form,
the one every HdrHistogram implementation reads); a reader decodes and adds the histograms of every
process and takes percentiles of the sum. See http://hdrhistogram.org and the `hdrhistogram` package.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from itertools import accumulate
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

    __slots__ = ("_h", "_pending", "_counts", "_summaries", "_encoded")

    def __init__(self, h: HdrHistogram | None = None) -> None:
        self._h = h
        self._pending: Counter[int] = Counter()
        # every value this histogram holds, by the lowest value of its bucket (a few hundred keys at most in
        # practice): summary() walks these instead of HdrHistogram's ~3,300 counts. None for a histogram
        # decoded from another process (only its HdrHistogram counts are known)
        self._counts: Counter[int] | None = Counter() if h is None else None
        # what summary() and encode() last returned, until a value is recorded or added: a STATUS of a vhm
        # with 64 VMs reads every VM's histograms, most of them unchanged since the last one
        self._summaries: dict[float, dict[str, Any]] = {}
        self._encoded: str | None = None

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
        self._record(_bucket(seconds * 1e6))

    def record_us(self, us: float) -> None:
        """Record one latency given in microseconds (clamped into the histogram's range)."""
        self._record(_bucket(us))

    def _record(self, v: int) -> None:
        self._pending[v] += 1
        if self._counts is not None:
            self._counts[v] += 1
        if self._encoded is not None or self._summaries:
            self._encoded = None
            self._summaries = {}
        if len(self._pending) > PENDING_MAX:
            self.h  # noqa: B018  (the property folds the pending values in)

    def add(self, other: "Histogram") -> "Histogram":
        """Merge ``other`` into this one (exact: bucket counts add). Returns self."""
        if other.count:
            self.h.add(other.h)
            if self._counts is not None and other._counts is not None:
                self._counts.update(other._counts)
            else:
                self._counts = None
            self._encoded = None
            self._summaries = {}
        return self

    @property
    def count(self) -> int:
        held = int(self._h.get_total_count()) if self._h is not None else 0
        return held + sum(self._pending.values())

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (0..100), in microseconds; 0.0 when empty."""
        return float(self.h.get_value_at_percentile(p)) if self.count else 0.0

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        """{n, p50, p90, p99, max, mean}, values divided by ``scale`` (1000: milliseconds).

        HdrHistogram's own percentile and mean each walk every one of its ~3,300 counts in Python (about
        1.5 ms each, 6 ms a summary); this walks the buckets holding a value once (those this object
        recorded, without touching the HdrHistogram; a decoded one's counts otherwise), for all five
        figures, with the same definitions
        (``get_value_at_percentile``: the highest value equivalent to the first bucket whose cumulative
        count reaches ``int(p / 100 * n + 0.5)``; ``get_mean_value``: bucket medians weighted by count)."""
        cached = self._summaries.get(scale)
        if cached is not None:
            return dict(cached)
        n = self.count
        if not n:
            return {"n": 0}
        lows, counts, sizes = self._buckets()
        cumulative = list(accumulate(counts))
        found: dict[str, int] = {}
        for name, p in PERCENTILES.items():
            i = bisect_left(cumulative, max(1, int(p * n / 100 + 0.5)))
            found[name] = lows[i] + sizes[i] - 1
        weighted = sum(c * (low + (size >> 1)) for low, c, size in zip(lows, counts, sizes))
        total = cumulative[-1]
        top = lows[-1] + sizes[-1] - 1
        digits = 1 if scale == 1.0 else 3
        out: dict[str, Any] = {"n": n}
        for name in PERCENTILES:
            out[name] = round(found[name] / scale, digits)
        out["max"] = round(float(top) / scale, digits)  # get_max_value: the highest equivalent value
        out["mean"] = round(weighted / total / scale, digits)
        self._summaries[scale] = out
        return dict(out)

    def _buckets(self) -> tuple[list[int], list[int], list[int]]:
        """The lowest value, count and size of every bucket holding a value, ascending (three lists). A
        bucket's size is HdrHistogram's ``_hdr_size_of_equiv_value_range``: 1 below 2^SUB_BUCKET_BITS,
        doubling per bit above."""
        if self._counts is not None:
            lows = sorted(self._counts)
            return (lows, [self._counts[low] for low in lows],
                    [1 << max(0, low.bit_length() - SUB_BUCKET_BITS) for low in lows])
        h = self.h
        held = [(i, c) for i, c in enumerate(h.counts) if c]
        lows = [h.get_value_from_index(i) for i, _ in held]
        return lows, [c for _, c in held], [h._hdr_size_of_equiv_value_range(low) for low in lows]

    def encode(self) -> str:
        """HdrHistogram's compressed base64 encoding (what goes into JSON events and STATUS)."""
        if self._encoded is None:
            self._encoded = self.h.encode().decode("ascii")
        return self._encoded

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


def _bucket(us: float) -> int:
    """The value a latency of ``us`` microseconds is counted as: clamped into the histogram's range, and
    the lowest value of its HdrHistogram bucket (the same bucket, few distinct keys in the pending counter)."""
    v = min(HIGHEST_US, max(LOWEST_US, int(us + 0.5)))
    shift = v.bit_length() - SUB_BUCKET_BITS
    return (v >> shift) << shift if shift > 0 else v


def record_pair(a: Histogram, b: Histogram, seconds: float) -> None:
    """Record one latency in two histograms (one VM's and the total over all VMs), rounded once."""
    v = _bucket(seconds * 1e6)
    a._record(v)
    b._record(v)


def merge(parts: Iterable[Histogram | str]) -> Histogram:
    """One histogram from several (objects or encoded strings)."""
    out = Histogram()
    for part in parts:
        out.add(Histogram.decode(part) if isinstance(part, (str, bytes)) else part)
    return out
