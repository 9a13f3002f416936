"""STATUS under a time budget (services/common/status_budget.py), on a fake clock."""

from gvtsim.services.common.status_budget import StatusBudget


def test_first_request_is_answered_at_once_and_the_next_waits_for_the_budget() -> None:
    b = StatusBudget(share=0.05)
    assert b.want(b"a", 1, now=10.0) == "now"
    b.built(started=10.0, cost=0.002)  # 2 ms: the next build may start 40 ms later
    assert b.want(b"b", 7, now=10.001) == "wait"
    assert b.next_deadline() == 10.0 + 0.002 / 0.05
    assert b.due(10.02) == []  # not yet
    assert b.due(10.04) == [(b"b", 7)]
    assert b.next_deadline() is None


def test_one_build_answers_every_waiting_request_in_arrival_order() -> None:
    b = StatusBudget(share=0.1)
    b.want(b"x", 1, 0.0)
    b.built(0.0, 0.01)
    for i, ident in enumerate([b"a", b"b", b"a", b"c"]):
        assert b.want(ident, i, 0.01) == "wait"
    assert b.due(0.1) == [(b"a", 0), (b"b", 1), (b"a", 2), (b"c", 3)]
    # after the build, a request that comes once the budget allows it is answered at once again
    b.built(0.1, 0.01)
    assert b.want(b"a", 9, 0.2) == "now"


def test_a_request_never_waits_longer_than_the_gap_cap() -> None:
    b = StatusBudget(share=0.05, max_gap_s=1.0)
    b.want(b"a", 1, 0.0)
    b.built(0.0, 0.5)  # a slow build on a loaded machine: 0.5 / 0.05 = 10 s, capped at 1 s
    assert b.want(b"a", 2, 0.6) == "wait"
    assert b.next_deadline() == 1.0


def test_a_flooding_peer_is_refused_past_its_share_and_others_still_wait() -> None:
    b = StatusBudget(per_peer=4, max_waiting=6)
    b.want(b"calm", 1, 0.0)
    b.built(0.0, 0.01)
    verdicts = [b.want(b"flood", i, 0.001) for i in range(10)]
    assert verdicts == ["wait"] * 4 + ["busy"] * 6
    assert b.want(b"calm", 2, 0.001) == "wait"  # the flooder's refusals took nothing from the calm peer
    assert b.want(b"other", 1, 0.001) == "wait"
    assert b.want(b"third", 1, 0.001) == "busy"  # max_waiting in all
    assert [w[0] for w in b.due(1.0)] == [b"flood"] * 4 + [b"calm", b"other"]
    b.built(1.0, 0.01)
    assert b.want(b"flood", 99, 1.001) == "wait"  # its share is back once its requests were answered


def test_a_lost_peer_stops_waiting() -> None:
    b = StatusBudget()
    b.want(b"a", 1, 0.0)
    b.built(0.0, 0.01)
    b.want(b"gone", 1, 0.001)
    b.want(b"b", 2, 0.001)
    b.forget(b"gone")
    assert b.due(5.0) == [(b"b", 2)]
