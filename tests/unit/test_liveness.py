"""Heartbeat bookkeeping, driven with explicit time (no sockets, no loop)."""

from gvtsim.services.common.liveness import HeartbeatConfig, Liveness


def test_heartbeat_only_when_idle_and_expiry_within_liveness_intervals():
    cfg = HeartbeatConfig(interval=1.0, liveness=3)
    live = Liveness(cfg, now=0.0)
    assert not live.need_heartbeat(0.5)
    assert live.need_heartbeat(1.0)
    live.sent(1.0)
    assert not live.need_heartbeat(1.5)
    live.heard(2.0)
    assert not live.expired(2.0 + 2.5)
    # a shell polling every tick must declare the peer dead no later than `liveness` intervals after the last
    # thing heard: at some poll in (last + timeout - tick, last + timeout]
    polls = [2.0 + k * cfg.tick for k in range(100)]
    first = next(t for t in polls if live.expired(t))
    assert 2.0 + cfg.timeout - cfg.tick - 1e-9 <= first <= 2.0 + cfg.timeout + 1e-9


def test_any_message_counts_as_life():
    cfg = HeartbeatConfig(interval=0.1, liveness=3)
    live = Liveness(cfg, now=0.0)
    for t in (0.1, 0.2, 0.3, 0.4):
        live.heard(t)
        assert not live.expired(t + 0.2)
    assert live.expired(0.4 + 0.3)
