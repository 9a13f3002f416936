"""``gvtsim fuzz ENDPOINT --messages N``: structure-aware fuzzing of a live vhm, gvt or pgpu.

    gvtsim fuzz tcp://127.0.0.1:5555 --messages 1000000 [--sessions 8] [--seed 1] [--json]

Messages come from the catalogue's own schemas (protocol/messages.py): a pool of valid instances of every
message type drawn by hypothesis strategies (orchestration/fuzzgen.py), then mutated on the way out:
boundary and out-of-range values, wrong types, missing and unknown fields, wrong tags, truncation, byte
flips, garbage, wrong shapes, extra frames; VM ids swapped for live ones (this session's, another
session's); frames replayed (this session's or another's); small windows sent in shuffled order; several
sessions interleaved, each HELLOing as a role the service serves or not, with its own key or another role's,
re-HELLOing, saying BYE and carrying on.

Every session sends a STATUS barrier every ``--barrier`` messages and waits for its answer (``--hang-timeout``):
no answer is a hang. At the end the service's STATUS counters must account for every frame sent
(``msgs_in`` + ``bad_framing`` grew by exactly the frames sent when the fuzzer is the socket's only peer; the
figure is printed either way), and the service must still answer. Exit 0 when there was no crash, no hang
and the service still serves; 1 otherwise; 3 when the endpoint cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..protocol import WIRE_VERSION, authz, decode, encode
from ..protocol import messages as m
from ..protocol import DecodeError
from ..services.common import curve
from .fuzzgen import Mutator, random_instance, strategy
from ..services.common.helptext import UserHelpFormatter

SERVERS = ("vhm", "gvt", "pgpu")
#: how often each mutation is applied (the rest of the weight goes to valid messages)
MUTATIONS: dict[str, float] = {
    "valid": 30, "boundary": 8, "out_of_range": 8, "wrong_type": 8, "missing_field": 5, "unknown_field": 4,
    "wrong_tag": 3, "truncate": 6, "byte_flip": 8, "garbage": 3, "not_a_map": 2, "deep_nesting": 1,
    "huge_map": 1, "extra_frames": 1, "replay": 4, "replay_other": 3,
}


def message_pool(size: int, seed: int, service: str) -> list[m.Message]:
    """``size`` valid messages drawn by hypothesis from every type's schema; the types ``service`` serves
    are drawn three times as often (the others exercise the authorisation table)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    served = [c for c in m.ALL_MESSAGES if any(authz.TABLE[c].senders.get(service, ()))]
    weighted = served * 3 + list(m.ALL_MESSAGES)
    pool: list[m.Message] = []

    from hypothesis import seed as hseed

    @hseed(seed)
    @settings(max_examples=size, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(weighted).flatmap(strategy))
    def collect(msg: m.Message) -> None:
        pool.append(msg)

    collect()
    random.Random(seed).shuffle(pool)
    return pool


@dataclass
class Session:
    """One fuzzing connection."""

    index: int
    sock: zmq.Socket
    role: m.Role | None = None  # None until the session is first opened
    key: str = ""
    helloed: bool = False
    vms: list[int] = field(default_factory=list)
    history: deque[bytes] = field(default_factory=lambda: deque(maxlen=64))
    since_barrier: int = 0


@dataclass
class Report:
    """What the fuzzer did and saw; ``ok`` is the verdict."""

    endpoint: str
    service: str
    sent: int = 0
    frames: int = 0
    seconds: float = 0.0
    mutations: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    barriers: int = 0
    hangs: int = 0
    sessions_opened: int = 0
    hello_refused: int = 0
    server_before: dict[str, int] = field(default_factory=dict)
    server_after: dict[str, int] = field(default_factory=dict)
    own_probe_frames: int = 0
    still_serving: bool = False
    epoch_changed: bool = False
    hang_detail: str = ""

    def accounting(self) -> dict[str, int]:
        """Frames the server counted in, against frames sent (exact when the fuzzer is the only peer)."""
        d = {k: self.server_after.get(k, 0) - self.server_before.get(k, 0) for k in ("msgs_in", "bad_framing")}
        # the closing STATUS is counted in the figures it returns; the opening one was counted before
        counted = d["msgs_in"] + d["bad_framing"] - (self.own_probe_frames - 1)
        return {"frames_sent": self.frames, "frames_counted_by_server": counted, "other_peers": counted - self.frames,
                **{f"server_{k}": v for k, v in d.items()}}

    @property
    def ok(self) -> bool:
        acc = self.accounting()
        return self.still_serving and not self.epoch_changed and self.hangs == 0 and acc["other_peers"] >= 0

    def to_dict(self) -> dict[str, Any]:
        keys = ("decode_errors", "not_hello", "authz_refused", "curve_role_refused", "internal_errors",
                "hellos", "heartbeats_in", "stray_heartbeats", "sessions_lost")
        return {
            "endpoint": self.endpoint, "service": self.service, "ok": self.ok, "messages": self.sent,
            "frames": self.frames, "seconds": round(self.seconds, 2),
            "rate_per_s": round(self.sent / self.seconds) if self.seconds else 0,
            "hangs": self.hangs, "hang_detail": self.hang_detail, "barriers": self.barriers,
            "sessions_opened": self.sessions_opened,
            "hello_refused": self.hello_refused, "still_serving": self.still_serving,
            "service_restarted": self.epoch_changed, "accounting": self.accounting(),
            "server_counters": {k: self.server_after.get(k, 0) - self.server_before.get(k, 0) for k in keys},
            "mutations": dict(self.mutations), "replies": dict(self.replies.most_common()),
            "types": dict(self.types.most_common()),
        }


class Fuzzer:
    """Drives ``sessions`` connections against one endpoint (synchronous pyzmq: as fast as one core goes)."""

    def __init__(self, endpoint: str, service: str, *, sessions: int = 8, seed: int = 1, pool: int = 300,
                 barrier: int = 2000, hang_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.service = service
        self.rng = random.Random(seed)
        self.mut = Mutator(self.rng)
        self.ctx = zmq.Context()
        self.pool = message_pool(pool, seed, service)
        served = [c for c in m.ALL_MESSAGES if any(authz.TABLE[c].senders.get(service, ()))]
        self.fresh_types = served * 3 + list(m.ALL_MESSAGES)
        self.barrier = barrier
        self.hang_timeout = hang_timeout
        self.sessions = [Session(i, self._socket(key=None)) for i in range(sessions)]
        self.report = Report(endpoint, service)
        self.kinds, self.weights = zip(*MUTATIONS.items())
        self.roles = sorted(authz.ALL_ROLES)
        self.live_vms: list[int] = []
        self.req = 1 << 40

    def _socket(self, key: str | None) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if key is not None:
            curve.secure_client(sock, "probe", self.service, key=key)
        return sock

    # ------------------------------------------------------------------------------------------ sessions
    def _open(self, s: Session) -> None:
        """A (re)connected session: a role (usually one the service serves) and a key (usually its own)."""
        served = [r for r in self.roles if authz.may_hello(self.service, r)]
        role = self.rng.choice(served) if self.rng.random() < 0.85 else self.rng.choice(self.roles)
        key = role if self.rng.random() < 0.9 else self.rng.choice(curve.KEY_NAMES)
        if s.role is not None:  # a connected socket
            self._barrier(s)  # everything sent on the old socket has arrived before LINGER 0 closes it
        s.sock.close(0)
        s.sock = self._socket(key if curve.enabled() else None)
        s.sock.connect(self.endpoint)
        s.role, s.key, s.helloed, s.vms = role, key, False, []
        self.report.sessions_opened += 1
        self._send(s, encode(m.Hello(role=role, id=f"fuzz-{os.getpid()}-{s.index}", epoch=s.index, wire=WIRE_VERSION)),
                   count=False)
        s.helloed = True

    def _send(self, s: Session, frame: bytes | list[bytes], count: bool = True) -> None:
        frames = frame if isinstance(frame, list) else [frame]
        deadline = time.monotonic() + self.hang_timeout
        while True:
            try:
                s.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                break
            except zmq.Again:  # not connected yet (CURVE handshake under way)
                if time.monotonic() > deadline:
                    self.report.hangs += 1
                    raise TimeoutError(f"{self.endpoint}: could not send for {self.hang_timeout}s") from None
                s.sock.poll(10, zmq.POLLOUT)
        self.report.frames += 1
        if count:
            self.report.sent += 1
        if not isinstance(frame, list):
            s.history.append(frame)

    def _drain(self, s: Session, until_req: int | None = None) -> bool:
        """Read what the session has; with ``until_req``, block until that STATUS answer (False on a hang)."""
        deadline = time.monotonic() + self.hang_timeout
        while True:
            if until_req is None:
                if not s.sock.poll(0):
                    return True
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not s.sock.poll(int(left * 1000)):
                    return False
            raw = s.sock.recv()
            try:
                msg = decode(raw)
            except DecodeError:
                self.report.replies["undecodable"] += 1
                continue
            name = m.tag_of(msg)
            if isinstance(msg, m.Error):
                name = f"ERROR {msg.code}"
                if msg.code == "unexpected" and ("opens no session" in msg.reason or "may not say HELLO" in msg.reason):
                    self.report.hello_refused += 1
            self.report.replies[name] += 1
            if isinstance(msg, m.VmCreated):
                s.vms.append(msg.vm)
                self.live_vms.append(msg.vm)
                del self.live_vms[:-64]
            if until_req is not None and isinstance(msg, m.StatusReply) and msg.req == until_req:
                return True

    def _barrier(self, s: Session) -> None:
        self.req += 1
        self._send(s, encode(m.StatusRequest(req=self.req)), count=False)
        self.report.barriers += 1
        if not self._drain(s, self.req):
            self.report.hangs += 1
            raise TimeoutError(f"{self.endpoint} did not answer STATUS within {self.hang_timeout}s")
        s.since_barrier = 0

    # ------------------------------------------------------------------------------------------ messages
    def _frame(self, s: Session) -> tuple[str, bytes | list[bytes]]:
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "replay" and s.history:
            return kind, rng.choice(s.history)
        if kind == "replay_other":
            other = rng.choice(self.sessions)
            if other.history:
                return kind, rng.choice(other.history)
        if rng.random() < 0.5:  # half from the hypothesis pool, half fresh from the schemas
            i = rng.randrange(len(self.pool))
            msg = self.pool[i]
        else:
            msg = random_instance(rng.choice(self.fresh_types), rng)
        self.report.types[m.tag_of(msg)] += 1
        if "vm" in msg.__struct_fields__ and rng.random() < 0.6:
            choices = s.vms + self.live_vms
            if choices:  # a live VM: this session's own, or another's (a forged id)
                msg = _replace(msg, vm=rng.choice(choices))
        if kind == "extra_frames":
            return kind, [encode(msg), b"\x80"]
        if kind in ("replay", "replay_other"):
            kind = "valid"
        if kind == "valid":
            return kind, encode(msg)
        return kind, self.mut.mutate(msg, kind)

    def run(self, messages: int, progress: bool = False) -> Report:
        """Send ``messages`` fuzzed messages, then check the service still serves and count."""
        rep = self.report
        probe = self._socket("probe" if curve.enabled() else None)
        probe.connect(self.endpoint)
        before = self._status(probe)
        if before is None:
            raise ConnectionError(f"{self.endpoint} does not answer STATUS")
        rep.server_before, epoch = dict(before.counters), before.epoch
        for s in self.sessions:
            self._open(s)
        t0 = time.monotonic()
        last = t0
        window: list[tuple[Session, str, bytes | list[bytes]]] = []
        try:
            while rep.sent < messages:
                s = self.rng.choice(self.sessions)
                r = self.rng.random()
                if r < 0.0005:
                    self._open(s)  # a new connection, a new role
                elif r < 0.001:
                    self._send(s, encode(m.Bye(reason="fuzz")))
                    rep.mutations["bye"] += 1
                    s.helloed = False
                    continue
                elif r < 0.0015 and s.role is not None:  # (every session is open by now)
                    self._send(s, encode(m.Hello(role=s.role, id=f"fuzz-re-{s.index}", epoch=s.index,
                                                 wire=WIRE_VERSION)))  # re-HELLO on the same socket
                    rep.mutations["re_hello"] += 1
                    continue
                kind, frame = self._frame(s)
                rep.mutations[kind] += 1
                if self.rng.random() < 0.02:  # reordering: hold a few back and send them shuffled
                    window.append((s, kind, frame))
                    if len(window) >= 4:
                        self.rng.shuffle(window)
                        for ws, _, wf in window:
                            self._send(ws, wf)
                            ws.since_barrier += 1
                        rep.mutations["reordered"] += len(window)
                        window.clear()
                    continue
                self._send(s, frame)
                s.since_barrier += 1
                if s.since_barrier >= self.barrier:
                    self._barrier(s)
                elif rep.sent % 64 == 0:
                    self._drain(s)
                if progress and time.monotonic() - last > 10:
                    last = time.monotonic()
                    print(json.dumps({"event": "progress", "sent": rep.sent, "seconds": round(last - t0, 1),
                                      "hangs": rep.hangs}), file=sys.stderr, flush=True)
            for ws, _, wf in window:
                self._send(ws, wf)
            for s in self.sessions:
                self._barrier(s)
        except TimeoutError as err:  # a hang: counted (rep.hangs) and reported, the run stops here
            rep.hang_detail = str(err)
        rep.seconds = time.monotonic() - t0
        for s in self.sessions:
            s.sock.close(0)
        after = self._status(probe)
        rep.still_serving = after is not None
        if after is not None:
            rep.server_after = dict(after.counters)
            rep.epoch_changed = after.epoch != epoch
        probe.close(0)
        self.ctx.term()
        return rep

    def _status(self, probe: zmq.Socket) -> m.StatusReply | None:
        self.req += 1
        req = self.req
        probe.send(encode(m.StatusRequest(req=req)))
        self.report.own_probe_frames += 1
        deadline = time.monotonic() + self.hang_timeout
        while (left := deadline - time.monotonic()) > 0 and probe.poll(int(left * 1000)):
            msg = decode(probe.recv())
            if isinstance(msg, m.StatusReply) and msg.req == req:
                return msg
        return None


def _replace(msg: m.Message, **changes: Any) -> m.Message:
    import msgspec

    return msgspec.structs.replace(msg, **changes)


def identify(endpoint: str, timeout: float = 3.0) -> str:
    """The role of the service at ``endpoint`` (asks STATUS)."""
    import asyncio

    from .health import probe

    reply = asyncio.run(probe(endpoint, timeout))
    return reply.role


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim fuzz", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("endpoint", help="a vhm, gvt (management) or pgpu endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--messages", type=int, default=10_000, help="messages to send [10000]")
    p.add_argument("--sessions", type=int, default=8, help="interleaved connections [8]")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pool", type=int, default=300, help="valid messages hypothesis draws from the schemas [300]")
    p.add_argument("--barrier", type=int, default=2000, help="a STATUS round trip every N messages per session")
    p.add_argument("--hang-timeout", type=float, default=10.0, help="seconds without an answer that count as a hang")
    p.add_argument("--service", choices=SERVERS, help="the service at ENDPOINT (default: ask its STATUS)")
    p.add_argument("--progress", action="store_true", help="a progress line on stderr every 10 s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        service = args.service or identify(args.endpoint)
    except Exception as err:
        print(f"gvtsim fuzz: {args.endpoint} does not answer ({type(err).__name__}: {err}); is the service up, "
              f"and are GVTSIM_KEYS / --insecure the same as the service's?", file=sys.stderr)
        return 3
    if service not in SERVERS:
        print(f"gvtsim fuzz: {args.endpoint} is a {service}, not vhm, gvt or pgpu", file=sys.stderr)
        return 2
    try:
        rep = Fuzzer(args.endpoint, service, sessions=args.sessions, seed=args.seed, pool=args.pool,
                     barrier=args.barrier, hang_timeout=args.hang_timeout).run(args.messages, args.progress)
    except (ConnectionError, curve.CurveError) as err:
        print(f"gvtsim fuzz: {err}", file=sys.stderr)
        return 3
    out = rep.to_dict()
    if args.json:
        print(json.dumps(out))
    else:
        acc = out["accounting"]
        print(f"{service} {args.endpoint}: {out['messages']} messages ({out['frames']} frames) in {out['seconds']} s "
              f"({out['rate_per_s']}/s), {out['sessions_opened']} sessions, {out['hangs']} hangs, "
              f"{'still serving' if rep.still_serving else 'NOT ANSWERING'}"
              f"{', RESTARTED' if rep.epoch_changed else ''}")
        print(f"accounting: sent {acc['frames_sent']} frames, the service counted {acc['frames_counted_by_server']} "
              f"({acc['other_peers']} from other peers)")
        print("server: " + ", ".join(f"{k} +{v}" for k, v in out["server_counters"].items() if v))
        print("replies: " + ", ".join(f"{k} {v}" for k, v in list(out["replies"].items())[:12]))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
