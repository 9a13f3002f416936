"""One host stack (vhm, pgpu, gvt and guest processes) as local processes on loopback.

The demo and the real-process tests build the topology with this; each stack has its own machine-memory
file in a private directory (on /dev/shm when it exists) and ephemeral ports, so several can run at once.

    with HostStack(gvt_args=["--enable-oos"]) as stack:
        guest = stack.guest("--vms", "2", "--workloads", "10")
        done = guest.wait_event("done", timeout=60)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from ..services.common import curve
from .health import probe_sync
from .procs import ServiceProc


class HostStack:
    """vhm, pgpu and gvt started in order; :meth:`guest` adds guest processes; :meth:`stop` ends them all."""

    def __init__(self, mem_size_mb: int = 512, heartbeat: float = 0.5, gvt_args: list[str] | None = None,
                 prefix: str = "gvtsim-stack-", gpu_profile: str = "real") -> None:
        self.mem_size_mb = mem_size_mb
        self.gpu_profile = gpu_profile  # services/common/gpu_profiles.py (pgpu reports it, gvt follows)
        self.heartbeat = heartbeat
        self.gvt_args = gvt_args or []
        self.run_dir = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.mem = os.path.join(self.run_dir, "machine.mem")
        self.common = ["--heartbeat-ivl", str(heartbeat), "--mem-path", self.mem]
        self.procs: list[ServiceProc] = []
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

    def _start(self, argv: list[str], name: str) -> ServiceProc:
        p = ServiceProc(argv, name=name, env=self.env)
        self.procs.append(p)
        p.start()
        return p

    def start(self, ready_timeout: float = 20.0) -> "HostStack":
        """Start vhm, pgpu, gvt; return once gvt reports both of its peers connected. Raises RuntimeError."""
        self.vhm = self._start(["vhm", "--bind", "tcp://127.0.0.1:*", "--mem-size-mb", str(self.mem_size_mb),
                                *self.common], "vhm")
        profile = ["--gpu-profile", self.gpu_profile]
        self.pgpu = self._start(["pgpu", "--bind", "tcp://127.0.0.1:*", *profile, *self.common], "pgpu")
        self.gvt = self._start(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", self.vhm.endpoint, "--pgpu",
                                self.pgpu.endpoint, *profile, *self.gvt_args, *self.common], "gvt")
        deadline = time.monotonic() + ready_timeout
        while not probe_sync(self.gvt.endpoint, timeout=0.5, server="gvt"):  # ready = both peers connected and set up
            if time.monotonic() > deadline:
                raise RuntimeError(f"gvt not ready: {self.gvt.tail()}")
        return self

    def guest(self, *args: str, name: str = "") -> ServiceProc:
        """Start a guest process on this stack with extra ``args`` (e.g. ``--vms``, ``--workloads``)."""
        self.guests += 1
        return self._start(["guest", "--vhm", self.vhm.endpoint, *args, *self.common], name or f"guest{self.guests}")

    def restart(self, name: str, sig: int = 9) -> ServiceProc:
        """Kill ``name`` (vhm, pgpu or gvt) with ``sig`` and start it again with the same arguments (a new
        epoch; same endpoint for vhm and pgpu, whose ports gvt and the guests keep dialling). Returns it."""
        old: ServiceProc = getattr(self, name)
        old.kill(sig)
        if old.proc is not None:
            old.proc.wait(10)
        argv = list(old.argv)
        if name in ("vhm", "pgpu"):  # rebind the port it had, not a new ephemeral one
            argv[argv.index("--bind") + 1] = old.endpoint
        new = self._start(argv, name)
        setattr(self, name, new)
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
