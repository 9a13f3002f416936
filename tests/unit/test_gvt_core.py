"""The core's ioreq entry point, its robustness, and the shell's pure effect -> message mapping."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gvt_fixtures import create, make_gvt, program_bar0

from gvtsim.protocol import messages as m
from gvtsim.protocol.codec import decode, encode
from gvtsim.protocol.constants import MAX_MESSAGE, IoreqDir, IoreqType
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt.events import LEVELS, EventLog
from gvtsim.services.gvt.service import GGTT_BATCH, GvtService, effects_to_messages


def ioreq(**kw: object) -> m.Ioreq:
    base = dict(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=IoreqDir.READ, addr=0, size=4)
    return m.Ioreq(**{**base, **kw})  # type: ignore[arg-type]


def test_ioreq_for_a_vm_without_vgpu_completes_with_all_ones() -> None:
    gvt = make_gvt()
    assert gvt.handle_ioreq(ioreq(vm=42, size=2), 0.0) == 0xFFFF
    assert gvt.handle_ioreq(ioreq(vm=42, dir=IoreqDir.WRITE), 0.0) == 0
    assert gvt.counters["ioreq_no_vgpu"] == 2


def test_pci_ioreq_for_another_bdf_is_not_ours() -> None:
    gvt = make_gvt()
    create(gvt, 1)
    assert gvt.handle_ioreq(ioreq(kind=IoreqType.PCI, dev=3, reg=0), 0.0) == 0xFFFF_FFFF
    assert gvt.handle_ioreq(ioreq(kind=IoreqType.PCI, dev=2, reg=0), 0.0) == 0x1912_8086


def test_wp_ioreq_without_tracked_page_falls_to_mmio_emulation() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.handle_ioreq(ioreq(kind=IoreqType.WP, dir=IoreqDir.WRITE, addr=0x5000, value=1), 0.0)
    assert not v.failsafe and gvt.counters["mmio_hole_write"] == 1


access = st.builds(
    ioreq, vm=st.sampled_from([1, 2, 3]), kind=st.sampled_from([0, 1, 2, 3]), dir=st.sampled_from([0, 1]),
    addr=st.one_of(st.integers(0, 2**64 - 1), st.integers(0xE000_0000, 0xE100_0000 + 64)),
    size=st.sampled_from([1, 2, 4, 8]), value=st.integers(0, 2**64 - 1), dev=st.sampled_from([2, 2, 5]),
    reg=st.integers(0, 0xFFF))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(access, max_size=40))
def test_no_ioreq_raises_and_every_value_fits_its_size(reqs: list[m.Ioreq]) -> None:
    gvt = make_gvt()
    a, b = create(gvt, 1, "1,8,8,1"), create(gvt, 2, "2,8,8,1")  # small slices keep the fills cheap
    program_bar0(gvt, a)
    program_bar0(gvt, b)
    for r in reqs:
        value = gvt.handle_ioreq(r, 0.0)
        assert 0 <= value < 1 << (8 * r.size)
    # whatever vm 1/2 did, each effect the core produced maps onto a valid wire message
    for _, cls, fields in effects_to_messages(gvt.drain_effects()):
        raw = encode(cls(req=1, **fields))
        assert len(raw) < MAX_MESSAGE and isinstance(decode(raw), cls)
    assert gvt.counters["internal_errors"] == 0


def test_effects_map_to_messages_in_order() -> None:
    out = effects_to_messages([
        fx.InterceptBdf(1, 0, 2, 0, True), fx.AttachVgpu(1, 3, True),
        fx.PgpuGgttWrite(((5, 0x1001),)), fx.PgpuGgttWrite(((6, 0x2001),)),
        fx.SetTrapArea(1, 0x1000, 0x1FFF, True), fx.InjectMsi(1, 0xFEE00000, 0x31), fx.Uevent(1, "X", 1),
        fx.PgpuMmioWrite(0x100020, 8, 0),
    ])
    assert [(peer, cls) for peer, cls, _ in out] == [
        ("vhm", m.InterceptBdf), ("vhm", m.AttachVgpu), ("pgpu", m.GgttWrite), ("vhm", m.IoRange),
        ("vhm", m.InjectMsi), ("pgpu", m.PgpuMmioWrite)]
    assert out[2][2] == {"entries": [(5, 0x1001), (6, 0x2001)]}  # consecutive writes merged
    assert out[3][2] == {"vm": 1, "kind": IoreqType.MMIO, "start": 0x1000, "end": 0x1FFF, "add": True}


def test_scratch_fill_is_one_message_between_the_writes_around_it() -> None:
    count = 2 * GGTT_BATCH + 10
    pte = (0xFFFFF << 12) | 1
    out = effects_to_messages([fx.PgpuGgttWrite(((5, 0x1001),)), fx.PgpuGgttFill(1 << 19, count, pte),
                               fx.PgpuGgttWrite(((6, 0x2001),))])
    assert [cls for _, cls, _ in out] == [m.GgttWrite, m.GgttFill, m.GgttWrite]  # order kept
    assert out[1][2] == {"index": 1 << 19, "count": count, "pte": pte}
    raw = encode(m.GgttFill(req=1, **out[1][2]))
    assert len(raw) < 64 and isinstance(decode(raw), m.GgttFill)


def test_ggtt_writes_are_split_into_batches_that_fit_a_message() -> None:
    entries = tuple((i, (i << 12) | 1) for i in range(2 * GGTT_BATCH + 10))
    out = effects_to_messages([fx.PgpuGgttWrite(entries)])
    assert [len(f["entries"]) for _, _, f in out] == [GGTT_BATCH, GGTT_BATCH, 10]
    raw = encode(m.GgttWrite(req=1, entries=out[0][2]["entries"]))
    assert len(raw) < MAX_MESSAGE and isinstance(decode(raw), m.GgttWrite)


# -- the core's log outbox (events.py): the core logs nothing itself, its shell does -----------------------

def test_the_core_keeps_its_log_events_for_the_shell() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    events = gvt.log.drain()
    assert [e for e in events if e.event == "vgpu_created"][0].fields["vgpu"] == v.id
    assert all(e.level in LEVELS for e in events)
    assert gvt.log.drain() == []  # drained once


def test_event_log_is_bounded_and_keeps_a_traceback_as_text() -> None:
    log = EventLog(limit=2)
    for i in range(3):
        log.warning("w", i=i)
    assert log.dropped == 1 and [e.fields["i"] for e in log.events] == [1, 2]  # the oldest went
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("failed", vm=1, exc_info=True)
    last = log.drain()[-1]
    assert last.level == "error" and last.fields["vm"] == 1
    assert "exc_info" not in last.fields and "ValueError: boom" in last.fields["exception"]


def test_the_shell_logs_what_the_core_had_to_say() -> None:
    """GvtService._log_core on a stand-in service: each event goes to the logger at its level, in order."""
    calls: list[tuple[str, str, dict[str, object]]] = []

    class Logger:
        def __getattr__(self, level: str) -> Callable[..., None]:
            return lambda event, **fields: calls.append((level, event, fields))

    svc = SimpleNamespace(core=SimpleNamespace(log=EventLog()), log=Logger())
    svc.core.log.info("a", x=1)
    svc.core.log.warning("b")
    GvtService._log_core(svc)  # type: ignore[arg-type]
    assert calls == [("info", "a", {"x": 1}), ("warning", "b", {})]
    assert not svc.core.log.events
