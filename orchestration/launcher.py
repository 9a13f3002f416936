"""The native launcher: the compose topology as local processes (``gvtsim up`` / ``gvtsim down``).

``gvtsim up`` reads docker-compose.yml (:mod:`.compose`), starts each host stack's services in compose's
order (a service starts once its ``depends_on`` conditions hold: ``service_healthy`` runs the service's own
healthcheck), each in its own process group with stdout/stderr in the run directory, and records every
process (pid + kernel start time, so a recycled pid is never signalled) in ``RUN_DIR/state.json``.
``gvtsim status``, ``gvtsim chaos`` and ``gvtsim load`` find the processes there; ``gvtsim down`` signals
every process group (SIGTERM, then SIGKILL after a grace period), waits until none is left and removes the
stacks' tmpfs directories (compose's ``down -v``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .compose import Healthcheck, NativeLayout, ProcSpec, Topology, load_topology, native_plan, port_stride
from ..services.common.gpu_profiles import get_profile
from ..services.common import curve
from .health import probe_service
from .procs import DEAD, children, group_members, proc_stat, signal_pid_group, start_group

DEFAULT_COMPOSE = "docker-compose.yml"
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL (services exit within 2 s of SIGTERM)


def default_run_dir() -> str:
    """``$GVTSIM_RUN_DIR``, else ``.gvtsim/run`` under the current directory."""
    return os.environ.get("GVTSIM_RUN_DIR", os.path.join(os.getcwd(), ".gvtsim", "run"))


class LaunchError(RuntimeError):
    """A process did not start, get ready or become healthy in time (the message says which and why)."""


# ------------------------------------------------------------------------------------------------ state
@dataclass
class ProcState:
    """One launched process as recorded in state.json."""

    name: str
    stack: int
    service: str
    replica: int
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    healthcheck: dict[str, Any] | None
    endpoint: str | None
    owner: str = "up"  # "up", or "load" for the guest processes a load run adds
    pid: int = 0
    starttime: int = 0  # start time (ms since the epoch, from psutil): tells a live process from a recycled pid
    out: str = ""
    err: str = ""
    out_offset: int = 0  # where this incarnation's stdout begins in `out`
    started_at: float = 0.0  # wall clock
    restarts: int = 0
    metrics: str = ""  # this incarnation's Prometheus endpoint (from its ready line), "" when it has none

    @classmethod
    def from_spec(cls, spec: ProcSpec, run_dir: str, owner: str = "up") -> "ProcState":
        safe = spec.name.replace("/", "_")
        env = dict(spec.env)
        return cls(name=spec.name, stack=spec.stack, service=spec.service, replica=spec.replica, argv=list(spec.argv),
                   env=env, health=list(spec.health) if spec.health else None,
                   healthcheck=asdict(spec.healthcheck) if spec.healthcheck else None, endpoint=spec.endpoint,
                   owner=owner, out=os.path.join(run_dir, "logs", f"{safe}.out"),
                   err=os.path.join(run_dir, "logs", f"{safe}.err"))


@dataclass
class RunState:
    """The run directory's state.json: the topology's layout and its processes."""

    run_dir: str
    compose_file: str = ""
    project: str = "gvtsim"
    layout: dict[str, Any] = field(default_factory=dict)
    stacks: list[int] = field(default_factory=list)
    procs: dict[str, ProcState] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)  # stack -> GPU profile (absent: real)

    def profile(self, stack: int) -> str:
        """The GPU profile stack ``stack`` runs (services/common/gpu_profiles.py)."""
        return self.profiles.get(str(stack), "real")

    def stack_env(self, stacks: list[int]) -> dict[int, dict[str, str]]:
        """The environment each stack's GPU profile adds to its services."""
        return {k: get_profile(self.profile(k)).stack_env() for k in stacks}

    @property
    def path(self) -> str:
        return os.path.join(self.run_dir, "state.json")

    @property
    def native_layout(self) -> NativeLayout:
        return NativeLayout(**self.layout)

    @classmethod
    def load(cls, run_dir: str) -> "RunState | None":
        """The recorded run, or None when nothing is up there."""
        try:
            with open(os.path.join(run_dir, "state.json")) as f:
                raw = json.load(f)
        except FileNotFoundError:
            return None
        procs = {n: ProcState(**p) for n, p in raw.pop("procs", {}).items()}
        state = cls(**{**raw, "run_dir": run_dir}, procs=procs)
        state.use_keys()
        return state

    def curve_env(self) -> dict[str, str]:
        """The CURVE part of this run's process environment (its keys directory, or insecure)."""
        env = next((p.env for p in self.procs.values()), {})
        return {k: env[k] for k in (curve.ENV_KEYS, curve.ENV_INSECURE) if k in env}

    def use_keys(self) -> None:
        """Talk to this run as its processes do: with its CURVE keys, or insecure if it runs so."""
        env = self.curve_env()
        if env.get(curve.ENV_INSECURE):
            curve.configure(insecure=True)
        elif env.get(curve.ENV_KEYS):
            curve.configure(env[curve.ENV_KEYS], insecure=False)

    def save(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**asdict(self), "procs": {n: asdict(p) for n, p in self.procs.items()}}, f, indent=1)
        os.replace(tmp, self.path)

    def endpoint(self, stack: int, service: str) -> str | None:
        """The bind endpoint of ``service`` in ``stack`` (vhm, gvt, pgpu)."""
        p = self.procs.get(f"s{stack}/{service}")
        return p.endpoint if p else None


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
    """Serialise read-modify-write of state.json between concurrent gvtsim commands (up, chaos, load)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_proc(run_dir: str, proc: ProcState, remove: bool = False) -> None:
    """Record one process's new incarnation (or its removal) in state.json, under the lock."""
    with locked(run_dir):
        state = RunState.load(run_dir)
        if state is None:
            return
        if remove:
            state.procs.pop(proc.name, None)
        else:
            state.procs[proc.name] = proc
        state.save()


# -------------------------------------------------------------------------------------------- processes
def alive(proc: ProcState) -> bool:
    """The recorded incarnation still runs (not a zombie, not a recycled pid)."""
    child = children.get(proc.pid)
    if child is not None and child.poll() is not None:
        return False
    st = proc_stat(proc.pid) if proc.pid else None
    return st is not None and st[1] == proc.starttime and st[0] not in DEAD


def signal_group(proc: ProcState, sig: int) -> bool:
    """Signal the process group of the recorded incarnation (only if it is still that process)."""
    if not proc.pid or not (alive(proc) or group_members(proc.pid)):
        return False
    signal_pid_group(proc.pid, sig)
    return True


def spawn(proc: ProcState) -> ProcState:
    """Start a new incarnation of ``proc`` in its own process group; stdout/stderr append to its files."""
    os.makedirs(os.path.dirname(proc.out), exist_ok=True)
    for key, value in proc.env.items():  # the stack's tmpfs directory (compose's volume)
        if key == "GVTSIM_MEM_PATH":
            os.makedirs(os.path.dirname(value), exist_ok=True)
    with open(proc.out, "ab") as out, open(proc.err, "ab") as err:
        offset = out.tell()
        child = start_group(proc.argv, {**os.environ, **proc.env}, stdout=out, stderr=err)
    st = proc_stat(child.pid)
    proc.pid, proc.starttime, proc.out_offset, proc.started_at = child.pid, st[1] if st else 0, offset, time.time()
    return proc


def read_events(path: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` from ``offset``: (events, new offset). Non-JSON lines are skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            if isinstance(ev, dict):
                events.append(ev)
    return events, offset + end


async def healthy(proc: ProcState) -> bool:
    """Run the process's healthcheck once (``gvtsim health EP`` is run in-process: a STATUS probe)."""
    if not proc.health:
        return alive(proc)
    hc = Healthcheck(**{**proc.healthcheck, "test": tuple(proc.healthcheck["test"])}) if proc.healthcheck else None
    timeout = min(hc.timeout if hc else 3.0, 3.0)
    argv = proc.health
    if len(argv) >= 5 and argv[1:4] == ["-m", "gvtsim.orchestration", "health"]:
        try:
            return (await probe_service(argv[4], proc.service, timeout)).ready
        except Exception:
            return False
    try:
        child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with asyncio.timeout(timeout):
            return await child.wait() == 0
    except (TimeoutError, OSError):
        return False


async def wait_ready(proc: ProcState, timeout: float = 20.0) -> float:
    """Wait for this incarnation's JSON ready line, then for its healthcheck to pass. Returns seconds taken.

    Raises:
        LaunchError: the process exited, or was not ready and healthy within ``timeout``.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    offset, ready = proc.out_offset, False
    while time.monotonic() < deadline:
        if not alive(proc):
            why = tail(proc.err)
            hint = "; its port is taken: stop what holds it, or `gvtsim up --port-offset auto` picks free ports" \
                if "Address already in use" in why else ""
            raise LaunchError(f"{proc.name} exited during start-up: {why}{hint} (log: {proc.err})")
        if not ready:
            events, offset = read_events(proc.out, offset)
            for ev in events:
                if ev.get("event") == "ready":
                    ready = True
                    if ev.get("metrics") and ev["metrics"] != proc.metrics:
                        proc.metrics = str(ev["metrics"])
                        update_proc(os.path.dirname(os.path.dirname(proc.out)), proc)
        if ready and await healthy(proc):
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise LaunchError(f"{proc.name} not {'healthy' if ready else 'ready'} within {timeout}s; see {proc.err}")


def tail(path: str, n: int = 3) -> str:
    """What went wrong, from the end of a service's log, in one line: the last error event's message (a
    traceback's last line, not the JSON-escaped traceback), else the last ``n`` lines."""
    try:
        with open(path) as f:
            lines = f.readlines()[-50:]
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("level") in ("error", "critical"):
            exc = str(ev.get("exception") or "").strip().splitlines()
            detail = exc[-1] if exc else str(ev.get("error") or ev.get("reason") or "")
            return f"{ev.get('event', 'error')}: {detail}".strip(": ")
    return " | ".join(line.strip() for line in lines[-n:])


# ---------------------------------------------------------------------------------------------- up/down
def ports_free(ports: list[int]) -> bool:
    """Every port can be bound on 127.0.0.1 now."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as zmq binds: TIME_WAIT does not block
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_port_offset(topo: Topology, stacks: int, wanted: str) -> int:
    """``wanted`` as a number, or "auto": 0 (compose's own ports for stack 0) when free, else a free block."""
    stride = port_stride(topo)
    need = lambda off: [p + off + k * stride for p in topo.ports() for k in range(stacks)]  # noqa: E731
    if wanted != "auto":
        return int(wanted)
    for off in (0, *range(20000 - min(topo.ports() or [0]), 40000, 97 * stride)):
        if ports_free(need(off)):
            return off
    raise LaunchError("no free block of ports for the stacks; pass --port-offset")


async def start_procs(state: RunState, specs: list[ProcSpec], owner: str = "up", timeout: float = 30.0) -> None:
    """Start ``specs`` (several stacks at once, each stack in compose order) and record them."""
    by_stack: dict[int, list[ProcSpec]] = {}
    for spec in specs:
        by_stack.setdefault(spec.stack, []).append(spec)

    async def one_stack(stack_specs: list[ProcSpec]) -> None:
        started: dict[str, list[ProcState]] = {}
        for spec in stack_specs:  # native_plan yields compose's start order
            for dep, cond in spec.depends_on.items():
                for dep_proc in started.get(dep, []):
                    if cond == "service_healthy":
                        await wait_ready(dep_proc, timeout)
            proc = spawn(ProcState.from_spec(spec, state.run_dir, owner))
            update_proc(state.run_dir, proc)
            state.procs[proc.name] = proc
            started.setdefault(spec.service, []).append(proc)
        await asyncio.gather(*(wait_ready(p, timeout) for ps in started.values() for p in ps))

    await asyncio.gather(*(one_stack(s) for s in by_stack.values()))


def up(compose_file: str, run_dir: str, stacks: int, port_offset: str = "auto", guests: bool = True,
       replicas: dict[str, int] | None = None, timeout: float = 30.0, gpu_profile: str = "real",
       insecure: bool = False) -> RunState:
    """Bring ``stacks`` host stacks up as local processes and record them in ``run_dir``; every stack runs
    GPU profile ``gpu_profile`` (docs/GPU_PROFILES.md).

    Raises:
        LaunchError: already up, no ports, or a service failed to start (what started is torn down).
        ComposeError: the compose file cannot be run.
    """
    topo = load_topology(compose_file)
    with locked(run_dir):
        old = RunState.load(run_dir)
        if old is not None and any(alive(p) for p in old.procs.values()):
            dead = sorted(n for n, p in old.procs.items() if not alive(p))
            raise LaunchError(f"already up in {run_dir}"
                              + (f" ({', '.join(dead)} not running: `gvtsim restart NAME` brings one back)"
                                 if dead else "") + "; `gvtsim down` stops it all")
        offset = pick_port_offset(topo, stacks, port_offset)
        shm = f"/dev/shm/gvtsim-{hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:10]}"
        state = RunState(run_dir=run_dir, compose_file=os.path.abspath(compose_file), project=topo.project,
                         layout={"port_offset": offset, "stride": port_stride(topo), "shm_root": shm},
                         stacks=list(range(stacks)), profiles={str(k): gpu_profile for k in range(stacks)})
        state.save()
    specs = with_keys(run_dir, native_plan(topo, state.stacks, state.native_layout, guests=guests, replicas=replicas,
                                           stack_env=state.stack_env(state.stacks)), insecure)
    try:
        asyncio.run(start_procs(state, specs, "up", timeout))
    except BaseException:
        down(run_dir)
        raise
    return RunState.load(run_dir) or state


def with_keys(run_dir: str, specs: list[ProcSpec], insecure: bool = False) -> list[ProcSpec]:
    """CURVE for a native run: the topology's keys in ``$GVTSIM_KEYS`` if set, else ``RUN_DIR/keys`` (made once,
    kept across runs, as the compose topology's keygen service does), and every process pointed at them;
    ``insecure`` turns CURVE off for every process instead (each logs a loud warning)."""
    if insecure or curve.insecure_from_env():
        extra = {curve.ENV_INSECURE: "1"}
    else:
        keys_dir = os.path.abspath(os.environ.get(curve.ENV_KEYS) or os.path.join(run_dir, "keys"))
        curve.generate(keys_dir)
        curve.configure(keys_dir, insecure=False)  # our own health probes
        extra = {curve.ENV_KEYS: keys_dir}
    return [replace(s, env={**s.env, **extra}) for s in specs]


#: host stacks a scale-out starts at the same time (each waits for the previous ones to be healthy)
ADD_STACKS_AT_ONCE = 4


async def add_stacks(run_dir: str, count: int, timeout: float = 30.0, gpu_profile: str = "real") -> list[int]:
    """Scale a native run out by ``count`` host stacks without guests (vhm, pgpu, gvt) of GPU profile
    ``gpu_profile``. Returns their numbers."""
    with locked(run_dir):
        state = RunState.load(run_dir)
        if state is None:
            raise LaunchError(f"nothing is up in {run_dir}")
        new = list(range(max(state.stacks, default=-1) + 1, max(state.stacks, default=-1) + 1 + count))
        topo = load_topology(state.compose_file)
        ports = [state.native_layout.port(p, k) for p in topo.ports() for k in new]
        if not ports_free(ports):
            raise LaunchError(f"ports {ports} of the new stacks are taken")
        state.stacks += new
        state.profiles.update({str(k): gpu_profile for k in new})
        state.save()
    insecure = bool(next((p.env for p in state.procs.values()), {}).get(curve.ENV_INSECURE))
    for i in range(0, len(new), ADD_STACKS_AT_ONCE):  # a few at a time: 36 stacks started together on 2 cores
        batch = new[i:i + ADD_STACKS_AT_ONCE]          # missed their 30 s health deadlines
        await start_procs(state, with_keys(run_dir, native_plan(topo, batch, state.native_layout, guests=False,
                                                                stack_env=state.stack_env(batch)), insecure),
                          "up", timeout)
    return new


def down(run_dir: str, grace: float = STOP_GRACE) -> dict[str, Any]:
    """Stop every recorded process group (SIGTERM, SIGKILL after ``grace``), remove the tmpfs and the state."""
    with locked(run_dir):
        state = RunState.load(run_dir)
        if state is None:
            return {"stopped": [], "killed": [], "left": []}
        procs = list(state.procs.values())
        stopped = [p.name for p in procs if signal_group(p, signal.SIGTERM)]
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(group_members(p.pid) for p in procs if p.pid):
            for child in children.values():
                child.poll()
            time.sleep(0.05)
        killed = [p.name for p in procs if p.pid and group_members(p.pid) and signal_group(p, signal.SIGKILL)]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(group_members(p.pid) for p in procs if p.pid):
            time.sleep(0.05)
        left = [p.name for p in procs if p.pid and group_members(p.pid)]
        if state.layout.get("shm_root", "").startswith("/dev/shm/gvtsim-"):
            shutil.rmtree(state.layout["shm_root"], ignore_errors=True)
        if not left:
            os.unlink(state.path)
    return {"stopped": stopped, "killed": killed, "left": left}
