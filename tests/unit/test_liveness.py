"""The session layer (protocol/session.py) driven with a fake clock: no sockets, no loop.

A client and a server are wired back to back through lists; time is a number the test moves.
"""

from __future__ import annotations

from collections import Counter

import pytest

from gvtsim.protocol import WIRE_VERSION, decode, encode
from gvtsim.protocol import messages as m
from gvtsim.protocol import session as ps
from gvtsim.services.common.liveness import HeartbeatConfig

IVL = ps.Intervals(heartbeat=1.0, timeout=12.0)
PEER = b"\x00peer"


class Pair:
    """A ClientSession and a ServerSessions joined by an in-memory pipe, with a fake clock."""

    def __init__(self, intervals: ps.Intervals = IVL) -> None:
        self.now = 100.0
        self.client = ps.ClientSession("guest", "g1", 7, ps.Intervals(5.0, 50.0))
        self.server = ps.ServerSessions("vhm", "v1", 42, intervals)
        self.client_got: list[ps.Event] = []
        self.server_got: list[ps.Event] = []
        self.up()

    def to_server(self, events: list[ps.Event]) -> None:
        for ev in events:
            if isinstance(ev, ps.Send):
                self.client.sent(self.now)
                self.from_server(self.server.receive(PEER, encode(ev.msg), self.now))
            elif isinstance(ev, ps.Connect):  # the shell makes a fresh socket, then HELLO
                self.to_server(self.client.connect(self.now))
            else:
                self.client_got.append(ev)

    def from_server(self, events: list[ps.Event]) -> None:
        for ev in events:
            if isinstance(ev, ps.Send):
                assert ev.ident == PEER
                s = self.server.sessions.get(PEER)
                if s is not None:
                    self.server.sent(s, self.now)
                self.to_server(self.client.receive(encode(ev.msg), self.now))
            else:
                self.server_got.append(ev)

    def up(self) -> None:
        assert self.client.next_deadline() == 0.0  # connect at once
        self.to_server(self.client.timers(self.now))

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running every deadline that falls due on the way, in order."""
        while True:
            due = [d for d in (self.client.next_deadline(), self.server.next_deadline()) if d is not None and d <= to]
            if not due:
                break
            self.now = max(self.now, min(due))
            self.to_server(self.client.timers(self.now))
            self.from_server(self.server.timers(self.now))
        self.now = to


def test_hello_ack_announces_intervals_and_the_client_adopts_them():
    p = Pair()
    ups = [e for e in p.client_got if isinstance(e, ps.Up)]
    assert len(ups) == 1 and not ups[0].restarted and ups[0].server_epoch == 42
    assert p.client.intervals == IVL  # the server's, not the client's own 5 s / 50 s
    assert [type(e) for e in p.server_got] == [ps.Opened]
    assert p.server.hello_ack().heartbeat_ms == 1000 and p.server.hello_ack().timeout_ms == 12000


def test_idle_session_heartbeats_both_ways_and_survives_a_long_quiet_time():
    p = Pair()
    p.advance(p.now + 600.0)  # ten minutes with nothing but heartbeats
    assert p.client.up and PEER in p.server.sessions
    assert p.client.counters["heartbeats_out"] >= 500 and p.server.counters["heartbeats_out"] >= 500
    assert not [e for e in p.server_got if isinstance(e, ps.Lost)]
    assert not [e for e in p.client_got if isinstance(e, ps.Down)]


def test_heartbeat_only_when_our_direction_is_idle():
    p = Pair()
    for k in range(1, 30):  # the client sends a request every 0.5 s: it never needs a heartbeat
        p.now += 0.5
        p.to_server([ps.Send(m.StatusRequest(req=k))])
        assert not [e for e in p.client.timers(p.now) if isinstance(e, ps.Send)]
    assert p.client.counters["heartbeats_out"] == 0


def test_busy_peer_is_not_lost_before_the_backstop_and_a_silent_one_is_lost_at_it():
    p = Pair()
    t0 = p.now
    # the server stops sending (its process is busy or hung) while the client keeps heartbeating
    p.server.intervals = ps.Intervals(heartbeat=1e9, timeout=1e9)
    p.server._sweep_at = None
    p.advance(t0 + IVL.timeout - 0.01)
    assert p.client.up, "a peer busy for less than the backstop timeout must not be declared lost"
    p.advance(t0 + IVL.timeout + 0.01)
    downs = [e for e in p.client_got if isinstance(e, ps.Down)]
    assert len(downs) == 1 and "silent" in downs[0].reason and not p.client.up


def test_server_drops_a_silent_session_at_the_backstop_and_fails_its_calls():
    p = Pair()
    t0 = p.now
    s = p.server.sessions[PEER]
    p.server.call(s, req=5, now=t0, timeout=100.0)
    # the client goes silent: its timers are never run again
    while p.server.next_deadline() is not None and p.server.next_deadline() <= t0 + IVL.timeout + 1:
        p.now = p.server.next_deadline()
        for ev in p.server.timers(p.now):
            if not isinstance(ev, ps.Send):
                p.server_got.append(ev)
    lost = [e for e in p.server_got if isinstance(e, ps.Lost)]
    failed = [e for e in p.server_got if isinstance(e, ps.CallFailed)]
    assert len(lost) == 1 and lost[0].session is s and "silent" in lost[0].reason
    assert [(f.req, f.why) for f in failed] == [(5, "lost")]
    assert t0 + IVL.timeout <= lost[0].session.last_heard + IVL.timeout + 1.0


def test_transport_disconnect_ends_the_session_at_once_and_fails_pending_calls_once():
    p = Pair()
    p.client.call(1, p.now)
    p.client.call(2, p.now)
    events = p.client.transport_down("disconnected", p.now)
    assert isinstance(events[0], ps.Down) and events[0].reason == "disconnected"
    assert sorted(e.req for e in events if isinstance(e, ps.CallFailed)) == [1, 2]
    # nothing fails twice: no timeout later for the calls that already failed
    p.advance(p.now + 100.0)
    assert not [e for e in p.client_got if isinstance(e, ps.CallFailed)]
    # it reconnects after a short backoff with a fresh HELLO (the same epoch: it did not restart)
    assert p.client.up and p.client.counters["hellos"] == 2


def test_calls_are_answered_by_req_out_of_order_and_time_out_exactly_once():
    p = Pair()
    c = p.client
    c.call(10, p.now, timeout=3.0)
    c.call(11, p.now, timeout=3.0)
    assert [type(e) for e in c.receive_msg(m.Ok(req=11, value=1), p.now)] == [ps.Answer]
    assert [type(e) for e in c.receive_msg(m.Ok(req=99), p.now)] == [ps.Deliver]  # not ours: the service's
    timed_out = [e for e in c.timers(p.now + 3.0) if isinstance(e, ps.CallFailed)]
    assert [(e.req, e.why) for e in timed_out] == [(10, "timeout")]
    assert [type(e) for e in c.receive_msg(m.Ok(req=10), p.now + 3.5)] == [ps.Deliver]  # late: not an answer
    assert not [e for e in c.timers(p.now + 10.0) if isinstance(e, ps.CallFailed)]


def test_next_deadline_is_the_earliest_of_heartbeat_backstop_and_calls():
    p = Pair()
    c = p.client
    assert c.next_deadline() == pytest.approx(p.now + IVL.heartbeat)
    c.call(1, p.now, timeout=0.25)
    assert c.next_deadline() == pytest.approx(p.now + 0.25)
    c.cancel(1)
    assert c.next_deadline() == pytest.approx(p.now + IVL.heartbeat)


def test_server_restart_is_seen_as_a_new_epoch_and_not_hello_answers_the_refused_call():
    p = Pair()
    c = p.client
    c.call(3, p.now)
    events = c.receive_msg(m.Error(code="not_hello", reason="forgot", req=3), p.now)
    assert isinstance(events[0], ps.Answer) and events[0].req == 3
    assert any(isinstance(e, ps.Down) for e in events)
    p.server = ps.ServerSessions("vhm", "v1", 43, IVL)  # the restarted server
    p.advance(p.now + 1.0)
    ups = [e for e in p.client_got if isinstance(e, ps.Up)]
    assert ups[-1].restarted and ups[-1].server_epoch == 43


def test_a_server_restarted_with_its_state_keeps_its_lineage_and_is_not_a_restart_for_the_client():
    p = Pair()
    c = p.client
    for epoch, lineage, restarted in ((43, 42, False), (44, 42, False), (45, 0, True), (46, 45, False)):
        c.receive_msg(m.Error(code="not_hello", reason="forgot"), p.now)
        p.server = ps.ServerSessions("vhm", "v1", epoch, IVL)  # restarted: state kept (lineage) or not
        p.server.lineage = lineage
        p.advance(p.now + 1.0)
        up = [e for e in p.client_got if isinstance(e, ps.Up)][-1]
        assert (up.server_epoch, up.restarted) == (epoch, restarted), (epoch, lineage)
        assert c.server_lineage == (lineage or epoch)


def test_hello_retries_until_the_transport_is_connected_then_times_out_and_reconnects():
    c = ps.ClientSession("gvt", "x", 1, IVL)
    now = 0.0
    [connect] = c.timers(now)
    assert isinstance(connect, ps.Connect)
    [send] = c.connect(now)
    assert isinstance(send.msg, m.Hello) and send.msg.wire == WIRE_VERSION
    c.send_failed(send.msg, now)  # IMMEDIATE: no connection yet
    assert c.next_deadline() == pytest.approx(ps.HELLO_RETRY)
    assert isinstance(c.timers(ps.HELLO_RETRY)[0].msg, m.Hello)
    events = c.timers(ps.HELLO_TIMEOUT)
    assert c.state == c.BACKOFF and not any(isinstance(e, ps.Down) for e in events)  # it never was up
    assert isinstance(c.timers(c.next_deadline())[0], ps.Connect)


def test_wire_version_refusal_waits_before_trying_again():
    c = ps.ClientSession("gvt", "x", 1, IVL)
    c.timers(0.0)
    c.connect(0.0)
    events = c.receive_msg(m.Error(code="wire_version", reason="no"), 0.1)
    assert isinstance(events[0], ps.Refused)
    assert c.next_deadline() >= 0.1 + IVL.timeout


def test_server_session_rules_for_strangers_and_bad_frames():
    s = ps.ServerSessions("vhm", "v1", 1, IVL, Counter())
    [invalid, err] = s.receive(b"a", b"\xc1garbage", 0.0)
    assert isinstance(invalid, ps.Invalid) and decode(encode(err.msg)).code == "decode"
    [err] = s.receive(b"a", encode(m.Ok(req=1)), 0.0)
    assert err.msg.code == "not_hello" and err.msg.req == 1
    [status] = s.receive(b"a", encode(m.StatusRequest(req=4)), 0.0)
    assert isinstance(status, ps.StatusWanted) and status.session is None
    [err] = s.receive(b"a", encode(m.Hello(role="guest", id="g", epoch=1, wire=WIRE_VERSION + 1)), 0.0)
    assert err.msg.code == "wire_version"
    events = s.receive(b"a", encode(m.Hello(role="guest", id="g", epoch=1, wire=WIRE_VERSION)), 0.0)
    assert [type(e) for e in events] == [ps.Send, ps.Opened] and isinstance(events[0].msg, m.HelloAck)
    # a second HELLO on the same routing id replaces the session: the old one is reported lost first
    events = s.receive(b"a", encode(m.Hello(role="guest", id="g", epoch=2, wire=WIRE_VERSION)), 1.0)
    assert [type(e) for e in events] == [ps.Lost, ps.Send, ps.Opened]
    assert s.counters["decode_errors"] == 1 and s.counters["not_hello"] == 1


def test_heartbeat_config_maps_to_a_generous_backstop():
    hb = HeartbeatConfig()
    assert hb.intervals.heartbeat == 1.0 and hb.intervals.timeout >= 10.0
    assert HeartbeatConfig(0.2, 3).intervals == ps.Intervals(0.2, pytest.approx(0.6))
