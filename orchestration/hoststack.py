"""One host stack (vhm, pgpu, gvt and guest processes) as local processes on loopback.

The demo, the benchmarks and the real-process tests build the topology with this. The processes are those of
the compose plan the native launcher runs (:func:`.compose.native_plan` over docker-compose.yml): the same
commands, environment and start order (a service starts once the services it ``depends_on`` as
``service_healthy`` answer ready). Two things differ, so that several stacks can run at once on one
machine: each stack keeps its machine memory and keys in a private directory (on /dev/shm when it exists),
and each service binds an ephemeral loopback port, which the services started after it are given instead
of the compose port. Its processes keep their own default ids (role, host and pid) rather than the
launcher's ``GVTSIM_ID`` names, so a restarted service comes back under a new id, as a new process does.

    with HostStack(gvt_args=["--enable-oos"]) as stack:
        guest = stack.guest("--vms", "2", "--workloads", "10")
        done = guest.wait_event("done", timeout=60)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..services.common import curve
from ..services.common.gpu_profiles import get_profile
from .compose import ComposeError, NativeLayout, ProcSpec, Topology, load_topology, native_plan, port_stride
from .health import probe_sync
from .procs import ServiceProc

#: The compose file's guest service carries the workload of a compose run (how many VMs, which workloads and
#: vGPU types, recovery, display, VM names); a HostStack guest runs exactly what its caller passes instead.
GUEST_WORKLOAD_ENV = ("GVTSIM_VMS", "GVTSIM_WORKLOADS", "GVTSIM_VGPU_TYPES", "GVTSIM_RECOVER", "GVTSIM_DISPLAY_ON",
                      "GVTSIM_NAME_PREFIX")
_ANY_PORT = "tcp://127.0.0.1:*"


def default_compose_file() -> str:
    """``$GVTSIM_COMPOSE_FILE``, else the docker-compose.yml of the source tree this package runs from.

    Raises:
        ComposeError: neither exists (an installed package without its source tree).
    """
    path = os.environ.get("GVTSIM_COMPOSE_FILE") or str(Path(__file__).resolve().parents[1] / "docker-compose.yml")
    if not os.path.isfile(path):
        raise ComposeError(f"no compose file at {path}: set GVTSIM_COMPOSE_FILE to the topology's docker-compose.yml")
    return path


def _module_args(argv: tuple[str, ...]) -> list[str]:
    """The gvtsim arguments of a planned command (the plan runs ``python -m gvtsim.orchestration ARGS``)."""
    head = (sys.executable, "-m", "gvtsim.orchestration")
    if argv[:3] != head:
        raise ComposeError(f"the compose service runs {argv[0]!r}, not gvtsim: HostStack runs gvtsim services only")
    return list(argv[3:])


class HostStack:
    """The compose plan's vhm, pgpu and gvt started in order; :meth:`guest` adds guest processes;
    :meth:`stop` ends them all."""

    def __init__(self, mem_size_mb: int = 512, heartbeat: float = 0.5, gvt_args: list[str] | None = None,
                 prefix: str = "gvtsim-stack-", gpu_profile: str = "real", compose_file: str | None = None) -> None:
        self.mem_size_mb = mem_size_mb
        self.gpu_profile = gpu_profile  # services/common/gpu_profiles.py (pgpu reports it, gvt follows)
        self.heartbeat = heartbeat
        self.gvt_args = gvt_args or []
        self.compose_file = compose_file or default_compose_file()
        # compose profiles (e.g. web) are the compose run's choice: a HostStack runs the core services only
        self.topology: Topology = load_topology(self.compose_file,
                                                {k: v for k, v in os.environ.items() if k != "COMPOSE_PROFILES"})
        self.run_dir = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.layout = NativeLayout(port_offset=0, stride=port_stride(self.topology), shm_root=self.run_dir)
        stack_env = {**get_profile(gpu_profile).stack_env(), "GVTSIM_MEM_SIZE_MB": str(mem_size_mb),
                     "GVTSIM_HEARTBEAT_IVL": str(heartbeat)}
        plan = [dataclasses.replace(s, env={k: v for k, v in s.env.items() if k != "GVTSIM_ID"})
                for s in native_plan(self.topology, [0], self.layout, replicas={"guest": 1}, stack_env={0: stack_env})]
        self.plan = [s for s in plan if s.service != "guest"]
        self.guest_plan: ProcSpec | None = next((s for s in plan if s.service == "guest"), None)
        mem_paths = {s.env.get("GVTSIM_MEM_PATH", "") for s in plan} - {""}
        if len(mem_paths) != 1:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise ComposeError(f"the compose services do not share one machine memory file ({sorted(mem_paths)})")
        self.mem = mem_paths.pop()
        os.makedirs(os.path.dirname(self.mem), exist_ok=True)
        self.procs: list[ServiceProc] = []
        self.services: dict[str, ServiceProc] = {}
        self.endpoints: dict[str, str] = {}  # the compose plan's endpoint -> the one its service bound
        self.guests = 0
        self.env = self._curve_env()

    def _curve_env(self) -> dict[str, str]:
        """CURVE on, as everywhere: the topology's keys from GVTSIM_KEYS, else made in this stack's directory."""
        if curve.insecure_from_env():
            return {curve.ENV_INSECURE: "1"}
        keys_dir = os.environ.get(curve.ENV_KEYS) or os.path.join(self.run_dir, "keys")
        curve.generate(keys_dir)
        curve.configure(keys_dir, insecure=False)
        return {curve.ENV_KEYS: keys_dir}

    def _wired(self, text: str) -> str:
        """A planned argument or environment value with every planned endpoint replaced by the bound one."""
        for planned, bound in self.endpoints.items():
            text = text.replace(planned, bound)
        return text

    def _launch(self, spec: ProcSpec, extra_args: list[str], name: str, env: dict[str, str] | None = None
                ) -> ServiceProc:
        argv = [self._wired(a) for a in _module_args(spec.argv)]
        if spec.endpoint:
            argv[argv.index("--bind") + 1] = _ANY_PORT
        penv = {k: self._wired(v) for k, v in (env if env is not None else dict(spec.env)).items()}
        return self._start([*argv, *extra_args], name, penv)

    def _start(self, argv: list[str], name: str, env: dict[str, str]) -> ServiceProc:
        p = ServiceProc(argv, name=name, env={**env, **self.env})
        self.procs.append(p)
        p.start()
        return p

    @property
    def vhm(self) -> ServiceProc:
        return self.services["vhm"]

    @property
    def pgpu(self) -> ServiceProc:
        return self.services["pgpu"]

    @property
    def gvt(self) -> ServiceProc:
        return self.services["gvt"]

    def _wait_healthy(self, service: str, deadline: float) -> None:
        """Until ``service`` answers STATUS ready (its compose healthcheck is that probe). Raises RuntimeError."""
        proc = self.services[service]
        while not probe_sync(proc.endpoint, timeout=0.5, server=service):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service} not ready: {proc.tail()}")

    def start(self, ready_timeout: float = 20.0) -> "HostStack":
        """Start the plan's services in compose order; return once every one with a healthcheck answers ready
        (gvt does once both of its peers are connected and set up). Raises RuntimeError."""
        deadline = time.monotonic() + ready_timeout
        for spec in self.plan:
            for dep, cond in spec.depends_on.items():
                if cond == "service_healthy" and dep in self.services:
                    self._wait_healthy(dep, deadline)
            extra = self.gvt_args if spec.service == "gvt" else []
            proc = self._launch(spec, extra, spec.service)
            if spec.endpoint:
                self.endpoints[spec.endpoint] = proc.endpoint
            self.services[spec.service] = proc
        for spec in self.plan:
            if spec.healthcheck is not None and spec.endpoint:
                self._wait_healthy(spec.service, deadline)
        return self

    def guest(self, *args: str, name: str = "") -> ServiceProc:
        """Start a guest process on this stack (the compose plan's guest service) with ``args`` (e.g.
        ``--vms``, ``--workloads``) as its workload."""
        spec, env = self.next_guest()
        return self._launch(spec, list(args), name or f"guest{self.guests}", env)

    def next_guest(self) -> tuple[ProcSpec, dict[str, str]]:
        """The plan's guest service and the environment of the next guest process: the compose wiring
        without the compose run's workload."""
        if self.guest_plan is None:
            raise ComposeError(f"{self.compose_file} has no guest service")
        self.guests += 1
        return self.guest_plan, {k: v for k, v in self.guest_plan.env.items() if k not in GUEST_WORKLOAD_ENV}

    def web(self, listen: str, *args: str) -> ServiceProc:
        """Start the compose file's ``web`` service (its ``web`` profile: the live wall of screens) on this stack,
        serving on ``listen`` (tcp://HOST:PORT) instead of its compose port, with extra ``args``."""
        topo = load_topology(self.compose_file, {**os.environ, "COMPOSE_PROFILES": "web"})
        spec = next((s for s in native_plan(topo, [0], self.layout) if s.service == "web"), None)
        if spec is None:
            raise ComposeError(f"{self.compose_file} has no web service")
        argv = list(spec.argv)
        argv[argv.index("--listen") + 1] = listen
        return self._launch(dataclasses.replace(spec, argv=tuple(argv)), list(args), "web")

    def restart(self, name: str, sig: int = 9, forget_state: bool = False) -> ServiceProc:
        """Kill ``name`` (vhm, pgpu or gvt) with ``sig`` and start it again with the same arguments (a new
        epoch). A service others dial (vhm, pgpu) binds the port it had again, since they keep dialling it.
        With ``forget_state`` the state it kept in machine memory (docs/STATE.md) is deleted in between, so
        it comes back as a different one. Returns it."""
        old = self.services[name]
        old.kill(sig)
        if old.proc is not None:
            old.proc.wait(10)
        if forget_state:
            for entry in os.listdir(os.path.dirname(self.mem) or "."):
                if entry.startswith(os.path.basename(self.mem) + ".") and entry.endswith(".state") and (
                        name != "gvt" or ".gvt" in entry) and (name != "vhm" or entry.endswith(".vhm.state")):
                    shutil.rmtree(os.path.join(os.path.dirname(self.mem), entry), ignore_errors=True)
        argv = list(old.argv)
        spec = next(s for s in self.plan if s.service == name)
        dialled = spec.endpoint is not None and any(
            spec.endpoint in a for s in [*self.plan, *([self.guest_plan] if self.guest_plan else [])]
            if s is not spec for a in (*s.argv, *s.env.values()))
        if dialled:  # rebind the port it had, not a new ephemeral one
            argv[argv.index("--bind") + 1] = old.endpoint
        new = self._start(argv, name, dict(old.env))
        self.services[name] = new
        return new

    def logs(self) -> dict[str, str]:
        """Every process's log (stderr) so far, by process name (restarted ones included)."""
        out = {}
        for i, p in enumerate(self.procs):
            try:
                with open(p.stderr_path) as f:
                    out[f"{p.name}#{i}"] = f.read()
            except OSError:
                pass
        return out

    def gvt_status(self):  # -> m.StatusReply | None
        """gvt's STATUS reply (counters and info), or None if it does not answer."""
        return probe_sync(self.gvt.endpoint, timeout=2.0, want_reply=True, server="gvt")

    def stop(self, graceful: bool = False) -> None:
        """End every process (SIGTERM with ``graceful``, else SIGKILL) and remove the memory file."""
        for p in reversed(self.procs):
            p.terminate(timeout=3) if graceful else p.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "HostStack":
        try:
            return self.start()
        except BaseException:  # __exit__ is not called when __enter__ raises: end what did start
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
