"""docker-compose.yml as the topology's one source of truth, and its translation to local processes.

Pure (no processes, no sockets): :func:`load_topology` reads the compose file into :class:`Topology`
(services, commands, environment, health checks, ``depends_on`` conditions, replicas, volumes), with
compose's ``${VAR:-default}`` interpolation and its profiles (a service with ``profiles`` runs only when
COMPOSE_PROFILES names one of them); :func:`native_plan` turns it into :class:`ProcSpec` s, one per
process of N host stacks (docs/ARCHITECTURE.md, machine memory: "scaling out means more host stacks"). The
translation is what a container network and a volume would do for us:

* an endpoint ``tcp://HOST:PORT`` whose HOST is a service name or a wildcard becomes
  ``tcp://127.0.0.1:PORT+offset+stack*stride`` (each stack gets its own block of ports);
* a path under a volume's mount point (``/mem/machine.mem``) moves under the stack's own directory on a
  tmpfs (``/dev/shm/...``), as the compose file's tmpfs volume does;
* ``gvtsim`` at the head of a command runs as ``python -m gvtsim.orchestration`` of this interpreter.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

#: compose interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR.
_INTERP = re.compile(r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                     r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_DURATION = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>us|ms|s|m|h)")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENDPOINT = re.compile(r"tcp://(?P<host>[A-Za-z0-9_.-]+|\*):(?P<port>[0-9]+)")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "127.0.0.1", "localhost"})


class ComposeError(ValueError):
    """The compose file is missing, malformed, or uses something the native launcher cannot run."""


@dataclass(frozen=True)
class Healthcheck:
    """A compose healthcheck; ``test`` is the argv (``CMD`` form) or ``["sh", "-c", ...]`` (``CMD-SHELL``)."""

    test: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class ServiceSpec:
    """One compose service, as far as running it matters."""

    name: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    healthcheck: Healthcheck | None
    depends_on: Mapping[str, str]  # service -> condition (service_started | service_healthy | ...)
    replicas: int
    volumes: Mapping[str, str]  # volume name -> mount point in the container
    native: str = "run"  # ``x-gvtsim-native``: "run" it natively, or "launcher" (the launcher does its job itself)


@dataclass(frozen=True)
class Topology:
    """The services of a compose file, in dependency order."""

    project: str
    services: Mapping[str, ServiceSpec]
    volumes: tuple[str, ...]

    def start_levels(self) -> list[list[str]]:
        """Services grouped so that each group depends only on earlier groups (compose's start order)."""
        done: set[str] = set()
        levels: list[list[str]] = []
        left = dict(self.services)
        while left:
            level = sorted(n for n, s in left.items() if set(s.depends_on) <= done)
            if not level:
                raise ComposeError(f"depends_on cycle among {sorted(left)}")
            levels.append(level)
            done.update(level)
            for n in level:
                del left[n]
        return levels

    def ports(self) -> list[int]:
        """Every TCP port an endpoint of the file names (commands, environment, health checks)."""
        found: set[int] = set()
        for s in self.services.values():
            texts = [*s.command, *s.environment.values(), *(s.healthcheck.test if s.healthcheck else ())]
            for text in texts:
                found.update(int(mt["port"]) for mt in _ENDPOINT.finditer(text))
        return sorted(found)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable substitution (``${VAR:-default}`` and friends) over one string.

    Raises:
        ComposeError: ``${VAR:?message}`` with VAR unset or empty, or ``${VAR?message}`` with VAR unset.
    """
    def sub(mt: re.Match[str]) -> str:
        if mt["esc"]:
            return "$"
        name = mt["braced"] or mt["bare"]
        op, arg, value = mt["op"], mt["arg"] or "", env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op and op.endswith("?"):
            raise ComposeError(f"variable {name} is required: {arg}")
        return interpolate(arg, env) if op else ""

    return _INTERP.sub(sub, text)


def _interp_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interp_tree(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _interp_tree(v, env) for k, v in node.items()}
    return node


def parse_duration(value: str | int | float | None, default: float) -> float:
    """A compose duration (``2s``, ``1m30s``, ``500ms``) in seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise ComposeError(f"bad duration {value!r} (want e.g. 2s, 500ms, 1m30s)")
    return sum(float(p["n"]) * _UNIT_S[p["unit"]] for p in parts)


def _healthcheck(raw: Any, where: str) -> Healthcheck | None:
    if raw is None or raw.get("disable"):
        return None
    test = raw.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise ComposeError(f"{where}: healthcheck.test must be [CMD, ...] or [CMD-SHELL, ...]")
    if test[0] == "NONE":
        return None
    argv = tuple(str(a) for a in test[1:]) if test[0] == "CMD" else ("sh", "-c", " ".join(map(str, test[1:])))
    return Healthcheck(test=argv, interval=parse_duration(raw.get("interval"), 30.0),
                       timeout=parse_duration(raw.get("timeout"), 30.0), retries=int(raw.get("retries", 3)),
                       start_period=parse_duration(raw.get("start_period"), 0.0))


def _environment(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # ["KEY=value", ...]
        out = {}
        for item in raw:
            key, sep, value = str(item).partition("=")
            if sep:
                out[key] = value
        return out
    if isinstance(raw, dict):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    raise ComposeError(f"{where}: environment must be a mapping or a list")


def _depends_on(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        return {str(n): "service_started" for n in raw}
    return {str(n): str((v or {}).get("condition", "service_started")) for n, v in raw.items()}


def _volumes(raw: Any, named: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw or []:
        if isinstance(item, str):
            source, _, target = item.partition(":")
            target = target.split(":")[0]
        else:
            source, target = item.get("source", ""), item.get("target", "")
        if source in named and target:
            out[source] = target
    return out


def parse_topology(doc: Any, env: Mapping[str, str], project: str = "gvtsim") -> Topology:
    """A compose document (already YAML-loaded) as a :class:`Topology`.

    Raises:
        ComposeError: a service without a command, an unknown dependency, a bad value.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ComposeError("no 'services' mapping")
    doc = _interp_tree(doc, env)
    named = set((doc.get("volumes") or {}).keys())
    services: dict[str, ServiceSpec] = {}
    active_profiles = {p for p in str(env.get("COMPOSE_PROFILES", "")).split(",") if p}
    for name, raw in doc["services"].items():
        if not isinstance(raw, dict):
            raise ComposeError(f"service {name}: not a mapping")
        if raw.get("profiles") and not active_profiles & set(map(str, raw["profiles"])):
            continue  # compose runs a service with profiles only when one of them is active (COMPOSE_PROFILES)
        command = raw.get("command")
        if isinstance(command, str):
            command = command.split()
        if not command:
            raise ComposeError(f"service {name}: needs an explicit command (the native launcher has no image CMD)")
        deploy = raw.get("deploy") or {}
        replicas = int(raw.get("scale", deploy.get("replicas", 1)))
        if replicas < 0:
            raise ComposeError(f"service {name}: replicas must be >= 0")
        services[name] = ServiceSpec(name=name, command=tuple(map(str, command)),
                                     environment=_environment(raw.get("environment"), name),
                                     healthcheck=_healthcheck(raw.get("healthcheck"), name),
                                     depends_on=_depends_on(raw.get("depends_on")), replicas=replicas,
                                     volumes=_volumes(raw.get("volumes"), named),
                                     native=str(raw.get("x-gvtsim-native", "run")))
    for s in services.values():
        unknown = set(s.depends_on) - set(services)
        if unknown:
            raise ComposeError(f"service {s.name}: depends_on unknown service(s) {sorted(unknown)}")
    topo = Topology(project=str(doc.get("name") or project), services=services, volumes=tuple(sorted(named)))
    topo.start_levels()  # refuse cycles now
    return topo


def load_topology(path: str, env: Mapping[str, str] | None = None) -> Topology:
    """Read and parse a compose file.

    Raises:
        ComposeError: unreadable file, bad YAML or a bad topology.
    """
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ComposeError(f"{path}: {err}") from None
    return parse_topology(doc, os.environ if env is None else env)


# ---------------------------------------------------------------------------------------------- native plan
@dataclass(frozen=True)
class ProcSpec:
    """One local process of a native run: what to exec and how to tell it is healthy."""

    name: str  # "s0/vhm", "s1/guest.2"
    stack: int
    service: str
    replica: int
    argv: tuple[str, ...]
    env: Mapping[str, str]  # added to the launcher's environment
    health: tuple[str, ...] | None  # the translated healthcheck argv (None: ready line only)
    healthcheck: Healthcheck | None
    endpoint: str | None  # the endpoint it binds (from --bind), for status and probes
    depends_on: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NativeLayout:
    """Where stack ``k``'s ports and volume directories are."""

    port_offset: int
    stride: int
    shm_root: str

    def port(self, port: int, stack: int) -> int:
        return port + self.port_offset + stack * self.stride

    def volume_dir(self, volume: str, stack: int) -> str:
        return f"{self.shm_root}/s{stack}/{volume}"


def port_stride(topo: Topology) -> int:
    """Ports one stack uses, rounded up to a multiple of 10 (stack k's block starts at k * stride)."""
    ports = topo.ports()
    span = (ports[-1] - ports[0] + 1) if ports else 1
    return max(10, -(-span // 10) * 10)


def translate(text: str, topo: Topology, layout: NativeLayout, stack: int, mounts: Mapping[str, str]) -> str:
    """Rewrite one argv element or environment value from the container world to stack ``stack``'s."""
    def endpoint(mt: re.Match[str]) -> str:
        host = mt["host"]
        if host not in topo.services and host not in _WILDCARD_HOSTS:
            return mt.group(0)  # somewhere else: leave it
        return f"tcp://127.0.0.1:{layout.port(int(mt['port']), stack)}"

    out = _ENDPOINT.sub(endpoint, text)
    for volume, target in mounts.items():
        if out == target or out.startswith(target.rstrip("/") + "/"):
            out = layout.volume_dir(volume, stack) + out[len(target.rstrip("/")):]
    return out


def _exec_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    if argv and argv[0] == "gvtsim":
        return (sys.executable, "-m", "gvtsim.orchestration", *argv[1:])
    return argv


def native_plan(topo: Topology, stacks: list[int], layout: NativeLayout, *, guests: bool = True,
                replicas: Mapping[str, int] | None = None, guest_services: frozenset[str] = frozenset({"guest"}),
                stack_env: Mapping[int, Mapping[str, str]] | None = None) -> list[ProcSpec]:
    """The processes of host stacks ``stacks``, in start order.

    ``replicas`` overrides a service's replica count; ``guests=False`` leaves out ``guest_services``
    (the stacks ``gvtsim load`` adds to reach its VM count run only vhm, gvt and pgpu); ``stack_env``
    adds environment to every service of a stack (its GPU profile's, see services/common/gpu_profiles.py).
    """
    out: list[ProcSpec] = []
    for stack in stacks:
        for level in topo.start_levels():
            for name in level:
                svc = topo.services[name]
                if svc.native == "launcher":  # e.g. keygen: the launcher makes the keys itself (with_keys)
                    continue
                count = (replicas or {}).get(name, svc.replicas)
                if name in guest_services and not guests:
                    count = 0
                for r in range(1, count + 1):
                    pname = f"s{stack}/{name}" + (f".{r}" if count > 1 else "")
                    tr = functools.partial(translate, topo=topo, layout=layout, stack=stack, mounts=svc.volumes)
                    argv = tuple(tr(a) for a in svc.command)
                    env = {k: tr(v) for k, v in svc.environment.items()}
                    env.update((stack_env or {}).get(stack, {}))
                    if env.get("GVTSIM_METRICS"):  # compose gives each container the same port (published on
                        env["GVTSIM_METRICS"] = "127.0.0.1:0"  # a free host port): natively each process takes a
                        # free one and names it in its ready line
                    ident = pname.replace("/", "-")
                    env.setdefault("GVTSIM_ID", ident)
                    if name in guest_services:  # VM names unique across the run's guest processes
                        env.setdefault("GVTSIM_NAME_PREFIX", f"{ident}-vm")
                    bind = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--bind"), None)
                    hc = svc.healthcheck
                    out.append(ProcSpec(name=pname, stack=stack, service=name, replica=r, argv=_exec_argv(argv),
                                        env=env, health=_exec_argv(tuple(tr(a) for a in hc.test)) if hc else None,
                                        healthcheck=hc, endpoint=bind,
                                        depends_on={d: c for d, c in svc.depends_on.items()
                                                    if topo.services[d].native != "launcher"}))
    return out
