"""Host stacks on Docker Swarm: ``gvtsim swarm config | deploy | rm | wait | probe``, discovery, status, chaos.

A host stack (vhm, pgpu, gvt and its guests around one machine memory) is the unit of scale-out
(docs/SWARM.md). On a swarm every host stack is one ``docker stack``, deployed from a stack file that
:func:`stack_document` derives from docker-compose.yml, which stays the one source of truth for the
services (commands, environment, health checks, volumes, replicas). The derivation adds what a swarm needs:

* placement: every service of a stack carries ``node.labels.gvtsim.node == VALUE``, so the whole stack runs
  on the one node labelled with that value; its machine memory is the compose file's tmpfs volume, which
  the node's ``local`` driver creates on that node (node-local, shared by the stack's containers only);
* start order: swarm ignores ``depends_on``, so each service's command is wrapped in ``gvtsim swarm wait``,
  which waits until every dependency answers its STATUS probe ready (the dependency's own healthcheck
  endpoint, its host replaced by the service name) and then execs the real command;
* restart policy ``condition: any`` (a killed container is replaced by the engine on the same node);
* ``endpoint_mode: dnsrr``: a service name resolves to its task's address (no virtual IP, so no IPVS is
  needed on the nodes; each service of a host stack has exactly one task);
* labels ``gvtsim.stack`` / ``gvtsim.service`` on every service, by which :func:`discover` finds the
  stacks through the Docker API (docker SDK for Python), with the node of each task;
* secrets: a top-level ``secrets:`` of the compose file and each service's ``secrets:`` pass through
  unchanged; ``docker stack deploy`` creates them as swarm secrets (the place for CURVE keys).

Remote nodes are reached only through the swarm manager's API, except for ``chaos --swarm``: killing a
container needs the engine of its node, whose address comes from the node label ``gvtsim.engine`` (or
``--engine NODE=URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from .compose import ComposeError, _interp_tree, parse_duration
from ..services.common.helptext import UserHelpFormatter

NODE_LABEL = "gvtsim.node"  # node label: which host stacks a node holds (the stack file's placement)
ENGINE_LABEL = "gvtsim.engine"  # node label: the node's engine address, for chaos (unix://, tcp://, ssh://)
STACK_LABEL = "gvtsim.stack"  # service label: the host stack (docker stack name) a service belongs to
SERVICE_LABEL = "gvtsim.service"  # service label: the compose service name (vhm, gvt, pgpu, guest)
ROLE_LABEL = "gvtsim.role"  # service label on services gvtsim creates itself: "load", "probe"
WAIT_SEPARATOR = "--"
SWARM_PROBE_TIMEOUT_S = 30.0  # least healthcheck timeout on a swarm, where an unhealthy task is replaced
# Least healthcheck interval on a swarm. Every probe starts a `gvtsim health` process in the container
# (about 0.3 s of CPU): at the compose file's 2 s, two stacks' probes alone take more than half a core. On a
# swarm the check only replaces a task that stopped answering (start order comes from `gvtsim swarm wait`,
# and a container that exits is replaced at once), so it need not run often.
SWARM_PROBE_INTERVAL_S = 10.0
_ENDPOINT = re.compile(r"tcp://(?P<host>[A-Za-z0-9_.-]+|\*):(?P<port>[0-9]+)")
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "*"})
DEFAULT_COMPOSE = "docker-compose.yml"


class SwarmError(RuntimeError):
    """No swarm, no stack, a node without its label: something the user must fix (one clear line)."""


# ------------------------------------------------------------------------------------------ stack file
def _health_endpoint(svc: Mapping[str, Any], name: str) -> str | None:
    """The endpoint a service's healthcheck probes, as its peers reach it (``tcp://NAME:PORT``)."""
    test = (svc.get("healthcheck") or {}).get("test") or []
    for arg in test if isinstance(test, list) else [test]:
        mt = _ENDPOINT.search(str(arg))
        if mt:
            host = name if mt["host"] in _LOCAL_HOSTS else mt["host"]
            return f"tcp://{host}:{mt['port']}"
    return None


def wait_prefix(doc: Mapping[str, Any], service: str) -> list[str]:
    """``gvtsim swarm wait --ready EP ... --`` for ``service``'s ``depends_on`` (empty without any)."""
    deps = doc["services"][service].get("depends_on") or {}
    names = list(deps) if isinstance(deps, (list, dict)) else []
    ready = []
    for dep in names:
        dep_svc = doc["services"].get(dep) or {}
        ep = _health_endpoint(dep_svc, dep)
        if ep is None and (dep_svc.get("healthcheck") or {}).get("test"):
            # a healthcheck that is a local check (keygen's `gvtsim keys --check`), not an endpoint: nothing
            # to wait for from here; a service that starts before its keys exist stops with a clear message
            # and the swarm's restart policy starts it again
            continue
        if ep is None:
            raise ComposeError(f"service {service}: depends on {dep}, which has no healthcheck endpoint to wait for")
        ready += ["--ready", ep]
    return ["gvtsim", "swarm", "wait", *ready, WAIT_SEPARATOR] if ready else []


def stack_document(compose: Mapping[str, Any], env: Mapping[str, str], stack: str, node: str,
                   guest_replicas: int | None = None, image: str | None = None) -> dict[str, Any]:
    """The stack file of host stack ``stack`` placed on the node labelled ``gvtsim.node=node``.

    ``compose`` is docker-compose.yml as loaded by YAML (anchors and merge keys resolved); ``env``
    interpolates its ``${VAR:-default}``. ``guest_replicas`` overrides the guest service's replicas,
    ``image`` every service's image (e.g. the same image pushed to a registry the nodes pull from).

    Raises:
        ComposeError: no services, a service without a command or image, a dependency without healthcheck.
    """
    if not isinstance(compose, Mapping) or not isinstance(compose.get("services"), Mapping):
        raise ComposeError("no 'services' mapping")
    doc = _interp_tree(dict(compose), env)
    services: dict[str, Any] = {}
    active = {p for p in str(env.get("COMPOSE_PROFILES", "")).split(",") if p}
    for name, raw in doc["services"].items():
        if raw.get("profiles") and not active & set(map(str, raw["profiles"])):
            continue  # as compose does: a service with profiles runs only when one of them is active
        if not raw.get("image") or not raw.get("command"):
            raise ComposeError(f"service {name}: a swarm service needs an image and a command")
        svc = {k: v for k, v in raw.items() if k not in ("build", "depends_on", "container_name", "scale", "profiles")}
        if image:
            svc["image"] = image
        command = raw["command"].split() if isinstance(raw["command"], str) else list(map(str, raw["command"]))
        svc["command"] = wait_prefix(doc, name) + command
        deploy = dict(raw.get("deploy") or {})
        replicas = int(raw.get("scale", deploy.get("replicas", 1)))
        if name == "guest" and guest_replicas is not None:
            replicas = guest_replicas
        placement = dict(deploy.get("placement") or {})
        placement["constraints"] = [*placement.get("constraints", []), f"node.labels.{NODE_LABEL} == {node}"]
        deploy.update({
            "replicas": replicas,
            "placement": placement,
            # a killed or crashed container is replaced by the engine, on the same node (the constraint)
            "restart_policy": deploy.get("restart_policy") or {"condition": "any", "delay": "1s"},
            # no virtual IP: the name resolves to the task itself (nodes need no IPVS for it)
            "endpoint_mode": "dnsrr",
            "labels": {**(deploy.get("labels") or {}), STACK_LABEL: stack, SERVICE_LABEL: name},
        })
        svc["deploy"] = deploy
        if isinstance(svc.get("healthcheck"), dict) and not svc["healthcheck"].get("disable"):
            # compose only reports an unhealthy container; swarm kills and replaces it. A probe that is slow
            # because the node is busy must not get a serving service replaced: give each probe more time.
            hc = dict(svc["healthcheck"])
            if parse_duration(hc.get("timeout"), 30.0) < SWARM_PROBE_TIMEOUT_S:
                hc["timeout"] = f"{SWARM_PROBE_TIMEOUT_S:g}s"
            if parse_duration(hc.get("interval"), 30.0) < SWARM_PROBE_INTERVAL_S:
                hc["interval"] = f"{SWARM_PROBE_INTERVAL_S:g}s"
            svc["healthcheck"] = hc
        if "ports" in svc:
            ports = swarm_ports(svc.pop("ports"))
            if ports:
                svc["ports"] = ports
        svc.setdefault("networks", ["hoststack"])
        services[name] = svc
    out: dict[str, Any] = {"version": "3.8", "services": services,
                           "networks": {"hoststack": {"driver": "overlay", "attachable": True,
                                                      "labels": {STACK_LABEL: stack}}}}
    if doc.get("volumes"):
        out["volumes"] = doc["volumes"]  # the tmpfs machine memory: created by each node's local driver
    if doc.get("secrets"):
        out["secrets"] = doc["secrets"]  # CURVE keys as swarm secrets: created by `docker stack deploy`
    return out


def swarm_ports(ports: Any) -> list[dict[str, Any]]:
    """The compose file's ``ports`` as swarm can publish them next to ``endpoint_mode: dnsrr``.

    Swarm refuses ingress-mode ports on a dnsrr service ("port published with ingress mode can't be used
    with dnsrr mode"), so every port is published in ``mode: host`` on the node that runs the task. Swarm
    has no host address for a published port (it always binds every address of the node): a port the
    compose file publishes only on loopback (``127.0.0.1::9100``, the metrics) is left out rather than
    opened to the node's network; it stays reachable inside the stack's attachable overlay network.
    """
    out: list[dict[str, Any]] = []
    for entry in ports or []:
        if isinstance(entry, Mapping):
            host_ip, published = str(entry.get("host_ip", "")), entry.get("published")
            target, protocol = int(entry["target"]), str(entry.get("protocol", "tcp"))
        else:
            spec, _, protocol = str(entry).partition("/")
            parts = spec.rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else ""
            published = parts[-2] if len(parts) >= 2 and parts[-2] else None
            target, protocol = int(parts[-1]), protocol or "tcp"
        if host_ip and host_ip not in ("0.0.0.0", "::"):
            continue  # bound to one address (loopback) in compose: swarm cannot say that
        port: dict[str, Any] = {"target": target, "protocol": protocol, "mode": "host"}
        if published not in (None, ""):
            port["published"] = int(str(published))
        out.append(port)
    return out


def load_compose(path: str) -> dict[str, Any]:
    """docker-compose.yml as a YAML document. Raises ComposeError."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ComposeError(f"{path}: {err}") from None
    if not isinstance(doc, dict):
        raise ComposeError(f"{path}: not a compose file")
    return doc


def assign(stacks: int, nodes: list[str]) -> list[str]:
    """The node label value of each of ``stacks`` host stacks: round robin over ``nodes`` (sorted)."""
    if not nodes:
        raise SwarmError(f"no node carries the label {NODE_LABEL}: "
                         f"run `docker node update --label-add {NODE_LABEL}=NAME NODE` on a manager")
    order = sorted(nodes)
    return [order[k % len(order)] for k in range(stacks)]


# --------------------------------------------------------------------------------------- docker API
def client(url: str | None = None) -> Any:
    """A docker SDK client for ``url`` (default: DOCKER_HOST, else the local socket)."""
    import docker

    try:
        c = docker.DockerClient(base_url=url) if url else docker.from_env()
        c.ping()
        return c
    except Exception as err:  # DockerException, requests' ConnectionError...
        where = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise SwarmError(f"no Docker engine answers at {where} ({type(err).__name__}); set DOCKER_HOST to "
                         f"a swarm manager") from None


@dataclass
class SwarmService:
    """One service of a host stack, and the task that runs it."""

    name: str  # docker service name (STACK_SERVICE)
    service: str  # compose service name
    id: str
    replicas: int
    running: int = 0
    node_ids: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)  # running tasks' container ids
    tasks: list[dict[str, Any]] = field(default_factory=list)  # every task swarm remembers (for restarts)


@dataclass
class SwarmStack:
    """A host stack on the swarm: its services, its node, its overlay network."""

    name: str
    node: str = ""  # node hostname of its tasks
    node_id: str = ""
    node_label: str = ""
    services: dict[str, SwarmService] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Every service has as many running tasks as it wants (running means healthy: swarm starts a task
        whose image has a healthcheck only once the check passes)."""
        return bool(self.services) and all(s.running >= s.replicas for s in self.services.values())


def _node_names(c: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for n in c.api.nodes():
        out[n["ID"]] = {"hostname": n["Description"]["Hostname"], "labels": n["Spec"].get("Labels") or {},
                        "state": n["Status"]["State"], "addr": n["Status"].get("Addr", "")}
    return out


def discover(c: Any, only: set[str] | None = None) -> list[SwarmStack]:
    """The host stacks on the swarm (services labelled ``gvtsim.stack``), their tasks and nodes.

    Raises:
        SwarmError: the engine is not a swarm manager.
    """
    import docker

    try:
        services = c.api.services(filters={"label": STACK_LABEL})
        nodes = _node_names(c)
    except docker.errors.APIError as err:
        raise SwarmError(f"the engine is not a swarm manager: {err.explanation}") from None
    stacks: dict[str, SwarmStack] = {}
    for s in services:
        labels = s["Spec"].get("Labels") or {}
        if labels.get(ROLE_LABEL):
            continue  # load guests and probes gvtsim created, not part of the stack file
        name = labels[STACK_LABEL]
        if only and name not in only:
            continue
        stack = stacks.setdefault(name, SwarmStack(name=name))
        replicas = int(((s["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))
        svc = SwarmService(name=s["Spec"]["Name"], service=labels.get(SERVICE_LABEL, ""), id=s["ID"],
                           replicas=replicas)
        for t in c.api.tasks(filters={"service": s["ID"]}):
            st = t.get("Status") or {}
            svc.tasks.append({"id": t["ID"], "state": st.get("State"), "desired": t.get("DesiredState"),
                              "node_id": t.get("NodeID", ""), "error": st.get("Err", ""),
                              "container": (st.get("ContainerStatus") or {}).get("ContainerID", ""),
                              "exit_code": (st.get("ContainerStatus") or {}).get("ExitCode"),
                              "created": t.get("CreatedAt", "")})
            if st.get("State") == "running" and t.get("DesiredState") == "running":
                svc.running += 1
                svc.node_ids.append(t.get("NodeID", ""))
                svc.containers.append((st.get("ContainerStatus") or {}).get("ContainerID", ""))
        stack.services[svc.service] = svc
        constraint = next((x for x in ((s["Spec"]["TaskTemplate"].get("Placement") or {}).get("Constraints") or [])
                           if x.startswith(f"node.labels.{NODE_LABEL}")), "")
        stack.node_label = constraint.split("==")[-1].strip() if constraint else stack.node_label
    for stack in stacks.values():
        ids = [n for s in stack.services.values() for n in s.node_ids]
        if ids:
            stack.node_id = max(set(ids), key=ids.count)
            stack.node = nodes.get(stack.node_id, {}).get("hostname", stack.node_id[:12])
        elif stack.node_label:  # nothing running: the node its constraint names
            match = [i for i, n in nodes.items() if n["labels"].get(NODE_LABEL) == stack.node_label]
            if match:
                stack.node_id, stack.node = match[0], nodes[match[0]]["hostname"]
    return [stacks[k] for k in sorted(stacks)]


def clone_task(c: Any, stack: SwarmStack, service: str, args: list[str], *, name: str, role: str,
               restart: str = "none", env: Mapping[str, str] | None = None) -> str:
    """Create a one-replica service like ``service`` of ``stack`` (same image, environment, mounts,
    network and node) running ``args``; returns its service id. The machine memory volume comes along,
    so a load guest maps the same node-local memory as the stack's own services."""
    spec = c.api.inspect_service(stack.services[service].id)["Spec"]
    tmpl = json.loads(json.dumps(spec["TaskTemplate"]))
    cs = tmpl["ContainerSpec"]
    cs["Args"] = args
    cs.pop("Command", None)
    cs.pop("Healthcheck", None)
    if env:
        keep = [e for e in cs.get("Env") or [] if e.split("=", 1)[0] not in env]
        cs["Env"] = keep + [f"{k}={v}" for k, v in env.items()]
    cs["Labels"] = {**(cs.get("Labels") or {}), ROLE_LABEL: role}
    tmpl["RestartPolicy"] = {"Condition": restart, "MaxAttempts": 0}
    tmpl.pop("ForceUpdate", None)
    labels = {**(spec.get("Labels") or {}), STACK_LABEL: stack.name, SERVICE_LABEL: service, ROLE_LABEL: role}
    labels.pop("com.docker.stack.image", None)
    r = c.api.create_service(tmpl, name=name, labels=labels, mode={"Replicated": {"Replicas": 1}},
                             endpoint_spec={"Mode": "dnsrr"})
    return str(r["ID"])


def service_lines(c: Any, service_id: str) -> Iterator[str]:
    """The stdout lines of a service's tasks, following (the manager streams them from the node)."""
    buf = b""
    for chunk in c.api.service_logs(service_id, stdout=True, stderr=False, follow=True, timestamps=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace")
    if buf:
        yield buf.decode(errors="replace")


def task_of(c: Any, service_id: str) -> dict[str, Any] | None:
    """The newest task of a service (None before the scheduler made one)."""
    tasks = c.api.tasks(filters={"service": service_id})
    return max(tasks, key=lambda t: t.get("CreatedAt", "")) if tasks else None


def oneshot(c: Any, stack: SwarmStack, args: list[str], timeout: float = 60.0) -> str:
    """Run ``args`` once in a task on ``stack``'s node and network; returns its stdout.

    Raises:
        SwarmError: the task did not complete within ``timeout``.
    """
    sid = clone_task(c, stack, "vhm", args, name=f"{stack.name}_probe-{uuid.uuid4().hex[:6]}", role="probe")
    try:
        deadline = time.monotonic() + timeout
        while True:
            t = task_of(c, sid)
            state = (t or {}).get("Status", {}).get("State")
            if state in ("complete", "failed", "rejected"):
                break
            if time.monotonic() > deadline:
                raise SwarmError(f"a probe task on {stack.name} did not finish in {timeout:.0f}s (state {state})")
            time.sleep(0.3)
        out = b"".join(c.api.service_logs(sid, stdout=True, stderr=False, follow=False, timestamps=False))
        return out.decode(errors="replace")
    finally:
        try:
            c.api.remove_service(sid)
        except Exception:
            pass


def probe_stack(c: Any, stack: SwarmStack, timeout: float = 60.0) -> dict[str, Any]:
    """STATUS of the stack's vhm and gvt (``gvtsim swarm probe``, run on its node): {vhm, gvt}."""
    out = oneshot(c, stack, ["gvtsim", "swarm", "probe", "tcp://vhm:5555", "tcp://gvt:5556"], timeout)
    for line in reversed(out.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "probes" in doc:
            return doc["probes"]
    raise SwarmError(f"the probe of {stack.name} printed no result: {out.strip()[-200:]}")


# ------------------------------------------------------------------------------------------------ status
def swarm_status(c: Any, probe: bool = True) -> dict[str, Any] | None:
    """Status of every host stack on the swarm (None: none deployed): services, tasks, nodes, restarts,
    and with ``probe`` the VMs and vGPUs of each stack (STATUS of its vhm and gvt, asked on its node)."""
    from .status import stack_summary

    stacks = discover(c)
    if not stacks:
        return None

    def probed(st: SwarmStack) -> dict[str, Any]:
        if not (probe and st.healthy):
            return {}
        try:
            replies = probe_stack(c, st)
            return stack_summary(replies.get("vhm"), replies.get("gvt"))
        except SwarmError as err:
            return {"probe_error": str(err)}

    with ThreadPoolExecutor(max_workers=len(stacks)) as pool:  # one probe task per stack, on its node
        figures = list(pool.map(probed, stacks))
    order = {"vhm": 0, "pgpu": 1, "gvt": 2, "guest": 3}
    services, out_stacks = [], {}
    for st, fig in zip(stacks, figures):
        for s in sorted(st.services.values(), key=lambda s: (order.get(s.service, 9), s.service)):
            failed = [t for t in s.tasks if t["desired"] == "shutdown" and t["state"] in ("failed", "shutdown")]
            services.append({"name": s.name, "stack": st.name, "service": s.service, "node": st.node,
                             "running": s.running >= s.replicas, "replicas": f"{s.running}/{s.replicas}",
                             "health": "healthy" if s.running >= s.replicas else "starting",
                             "container": s.containers[0][:12] if s.containers else "",
                             "restarts": len(failed)})
        out_stacks[st.name] = {"node": st.node, "node_label": st.node_label, "healthy": st.healthy, **fig}
    healthy = all(s["healthy"] for s in out_stacks.values())
    return {"mode": "swarm", "healthy": healthy, "services": services, "stacks": out_stacks,
            "nodes": sorted({s["node"] for s in out_stacks.values()}),
            "totals": {"vms": sum(s.get("vms", 0) for s in out_stacks.values()),
                       "vgpus": sum(s.get("vgpus", 0) for s in out_stacks.values())}}


def render_status(st: dict[str, Any]) -> str:
    """A human-readable table of :func:`swarm_status`."""
    lines = [f"{'SERVICE':<24} {'NODE':<14} {'TASKS':<6} {'CONTAINER':<13} {'RESTARTS':<8} HEALTH"]
    for s in st["services"]:
        lines.append(f"{s['name']:<24} {s['node']:<14} {s['replicas']:<6} {s['container']:<13} "
                     f"{s['restarts']:<8} {s['health']}")
    for name, stack in st["stacks"].items():
        figures = (f"{stack['vms']} VMs, {stack['vgpus']} vGPUs, {stack['vgpu_slots_free']} GVTg_V5_8 slots free"
                   if "vms" in stack else stack.get("probe_error", "not probed"))
        lines.append(f"stack {name} on {stack['node'] or '(no node)'}: {figures}")
    lines.append(f"{'healthy' if st['healthy'] else 'NOT healthy'}: {len(st['stacks'])} host stacks on "
                 f"{len(st['nodes'])} nodes, {st['totals']['vms']} VMs, {st['totals']['vgpus']} vGPUs")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- chaos
def engine_of(c: Any, node_id: str, engines: Mapping[str, str]) -> Any:
    """A client for the engine of node ``node_id``: ``engines`` (hostname or label -> URL), else the node's
    ``gvtsim.engine`` label, else this client when it is that node.

    Raises:
        SwarmError: no way to reach the node's engine.
    """
    node = c.api.inspect_node(node_id)
    host, labels = node["Description"]["Hostname"], node["Spec"].get("Labels") or {}
    url = engines.get(host) or engines.get(labels.get(NODE_LABEL, "")) or labels.get(ENGINE_LABEL)
    if url:
        return client(url)
    if c.info().get("Swarm", {}).get("NodeID") == node_id:
        return c
    raise SwarmError(f"cannot reach the engine of node {host}: label it "
                     f"`docker node update --label-add {ENGINE_LABEL}=URL {host}` or pass --engine {host}=URL")


def swarm_kill(c: Any, service: str, stack: str | None = None, engines: Mapping[str, str] | None = None,
               seed: int = 0, timeout: float = 60.0, t0: float | None = None) -> Any:
    """SIGKILL the container of ``service`` in one host stack (``stack`` or a random one) on its node and
    let the engine recover it: the restart policy starts a new task on the same node. The record times
    the new task running and healthy (``ready_s``) and every service of the stack so (``serving_s``)."""
    from .chaos import KillRecord

    rec = KillRecord(service=service)
    stacks = [s for s in discover(c, {stack} if stack else None) if service in s.services]
    live = [(st, st.services[service]) for st in stacks if st.services[service].containers]
    if not live:
        rec.error = f"no running {service} task in {'stack ' + stack if stack else 'any host stack'}"
        return rec
    st, svc = random.Random(seed).choice(live)
    old = svc.containers[0]
    node_id = svc.node_ids[0]
    rec.target, rec.old_pid = svc.name, old[:12]
    rec.at = round(time.monotonic() - t0, 3) if t0 is not None else 0.0
    try:
        engine_of(c, node_id, engines or {}).containers.get(old).kill("SIGKILL")
    except SwarmError as err:
        rec.error = str(err)
        return rec
    except Exception as err:  # docker.errors.*: the container went away meanwhile, the engine refused
        rec.error = f"kill {old[:12]} on its node: {err}"
        return rec
    t_kill = time.monotonic()
    rec.restart_after = 0.0  # the engine restarts it, at once (restart_policy delay aside)
    deadline = t_kill + timeout
    while time.monotonic() < deadline:
        now = discover(c, {st.name})
        cur = now[0].services.get(service) if now else None
        if cur and cur.containers and old not in cur.containers:
            if rec.ready_s is None:
                rec.ready_s = round(time.monotonic() - t_kill, 3)
                rec.new_pid = cur.containers[0][:12]
            if now[0].healthy:
                rec.serving_s = round(time.monotonic() - t_kill, 3)
                rec.recovered = True
                return rec
        time.sleep(0.25)
    rec.error = f"{svc.name} not running and healthy again {timeout:.0f}s after the kill"
    return rec


# --------------------------------------------------------------------------------------- in-container
def wait_ready(endpoints: list[str], timeout: float, interval: float = 0.5) -> list[str]:
    """Probe every endpoint until each answers ready; returns those still not ready after ``timeout``."""
    from .health import probe_sync

    left = list(endpoints)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = [ep for ep in left if not probe_sync(ep, timeout=2.0)]
        if left:
            time.sleep(interval)
    return left


def _probe_main(endpoints: list[str]) -> int:
    from .health import probe_sync, status_dict

    out = {}
    for ep in endpoints:
        reply = probe_sync(ep, timeout=5.0, want_reply=True)
        host = _ENDPOINT.match(ep)
        out[host["host"] if host else ep] = status_dict(reply) if reply is not None else None
    print(json.dumps({"probes": out}), flush=True)
    return 0 if all(out.values()) else 1


# -------------------------------------------------------------------------------------------------- CLI
def _deploy(args: argparse.Namespace) -> int:
    doc = load_compose(args.file)
    c = client()
    nodes = sorted({n["labels"][NODE_LABEL] for n in _node_names(c).values() if NODE_LABEL in n["labels"]})
    wanted = args.nodes.split(",") if args.nodes else nodes
    missing = set(wanted) - set(nodes)
    if missing:
        raise SwarmError(f"no node labelled {NODE_LABEL}={sorted(missing)[0]}: "
                         f"run `docker node update --label-add {NODE_LABEL}=VALUE NODE`")
    placement = assign(args.stacks, wanted)
    with tempfile.TemporaryDirectory(prefix="gvtsim-swarm-") as tmp:
        for k, node in enumerate(placement):
            name = f"{args.prefix}{k}"
            path = os.path.join(tmp, f"{name}.yml")
            with open(path, "w") as f:
                yaml.safe_dump(stack_document(doc, os.environ, name, node, args.guest_replicas, args.image), f,
                               sort_keys=False)
            r = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "--prune", "-c", path, name],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise SwarmError(f"docker stack deploy {name}: {r.stderr.strip()[-400:]}")
            print(f"deployed host stack {name} on the node labelled {NODE_LABEL}={node}", flush=True)
    if args.wait:
        names = {f"{args.prefix}{k}" for k in range(args.stacks)}
        deadline = time.monotonic() + args.wait
        while True:
            stacks = discover(c, names)
            if len(stacks) == len(names) and all(s.healthy for s in stacks):
                break
            if time.monotonic() > deadline:
                bad = {s.name: {n: f"{v.running}/{v.replicas}" for n, v in s.services.items()} for s in stacks}
                raise SwarmError(f"host stacks not healthy after {args.wait:.0f}s: {bad}")
            time.sleep(0.5)
        for s in stacks:
            print(f"host stack {s.name} healthy on node {s.node}", flush=True)
    return 0


def _rm(args: argparse.Namespace) -> int:
    c = client()
    stacks = [s.name for s in discover(c) if s.name.startswith(args.prefix)]
    extra = [s for s in c.api.services(filters={"label": ROLE_LABEL})
             if (s["Spec"].get("Labels") or {}).get(STACK_LABEL, "").startswith(args.prefix)]
    for s in extra:
        c.api.remove_service(s["ID"])
    for name in stacks:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True, text=True, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [n for n in c.api.networks() if (n.get("Labels") or {}).get(STACK_LABEL, "").startswith(args.prefix)]
        if not discover(c) and not left:
            break
        time.sleep(0.5)
    print(f"removed {len(stacks)} host stack(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim swarm``."""
    p = argparse.ArgumentParser(prog="gvtsim swarm", description=__doc__,
                                formatter_class=UserHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    cf = sub.add_parser("config", help="print the stack file of one host stack (derived from docker-compose.yml)")
    cf.add_argument("-f", "--file", default=DEFAULT_COMPOSE)
    cf.add_argument("--stack", default="gvtsim-s0", help="docker stack name [gvtsim-s0]")
    cf.add_argument("--node", required=True, help=f"the {NODE_LABEL} label value of the node to place it on")
    cf.add_argument("--guest-replicas", type=int, default=None)
    cf.add_argument("--image", default=None, help="every service's image [the compose file's]")
    dp = sub.add_parser("deploy", help="docker stack deploy N host stacks over the labelled nodes")
    dp.add_argument("-f", "--file", default=DEFAULT_COMPOSE)
    dp.add_argument("--stacks", type=int, default=None, help="host stacks [one per labelled node]")
    dp.add_argument("--prefix", default="gvtsim-s", help="stack names are PREFIX0, PREFIX1... [gvtsim-s]")
    dp.add_argument("--nodes", default="", help=f"{NODE_LABEL} values to use, comma-separated [all labelled]")
    dp.add_argument("--guest-replicas", type=int, default=None, help="the stacks' own guest replicas")
    dp.add_argument("--image", default=None, help="every service's image, e.g. REGISTRY/gvtsim:TAG [gvtsim:latest]")
    dp.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait until every stack is healthy")
    rm = sub.add_parser("rm", help="remove the host stacks (and the load/probe services gvtsim made)")
    rm.add_argument("--prefix", default="gvtsim-s")
    wt = sub.add_parser("wait", help="(in a container) wait until endpoints answer ready, then exec COMMAND")
    wt.add_argument("--ready", action="append", default=[], metavar="ENDPOINT")
    wt.add_argument("--timeout", type=float, default=float(os.environ.get("GVTSIM_WAIT_TIMEOUT", "300")))
    wt.add_argument("command", nargs=argparse.REMAINDER)
    pr = sub.add_parser("probe", help="(in a container) STATUS of endpoints as one JSON line")
    pr.add_argument("endpoints", nargs="+")
    args = p.parse_args(argv)
    try:
        if args.cmd == "config":
            doc = stack_document(load_compose(args.file), os.environ, args.stack, args.node, args.guest_replicas,
                                 args.image)
            print(yaml.safe_dump(doc, sort_keys=False), end="")
            return 0
        if args.cmd == "deploy":
            if args.stacks is None:
                args.stacks = len({n["labels"][NODE_LABEL] for n in _node_names(client()).values()
                                   if NODE_LABEL in n["labels"]}) or 1
            return _deploy(args)
        if args.cmd == "rm":
            return _rm(args)
        if args.cmd == "probe":
            return _probe_main(args.endpoints)
        command = args.command[1:] if args.command[:1] == [WAIT_SEPARATOR] else args.command
        if not command:
            p.error("wait: no command after --")
        left = wait_ready(args.ready, args.timeout)
        if left:
            print(json.dumps({"event": "wait_failed", "not_ready": left, "timeout_s": args.timeout}), flush=True)
            return 1
        if command[0] == "gvtsim":  # this interpreter's gvtsim, as pid 1 of the container keeps
            command = [sys.executable, "-m", "gvtsim.orchestration", *command[1:]]
        os.execvp(command[0], command)
    except (SwarmError, ComposeError) as err:
        print(f"gvtsim swarm: {err}", file=sys.stderr)
        return 1
    return 0


def kill_main(args: argparse.Namespace) -> int:
    """``gvtsim chaos --swarm kill SERVICE [--stack NAME] [--engine NODE=URL]``."""
    from .chaos import _line

    engines = dict(e.split("=", 1) for e in args.engine)
    try:
        rec = swarm_kill(client(), args.service, args.stack, engines, args.seed)
    except SwarmError as err:
        print(f"gvtsim chaos: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(rec)) if args.json else _line(rec))
    return 0 if rec.recovered else 1


def status_main(as_json: bool, probe: bool = True) -> int:
    """``gvtsim status --swarm [--json]``: exit 0 healthy, 1 not, 3 no host stack deployed."""
    try:
        st = swarm_status(client(), probe)
    except SwarmError as err:
        print(f"gvtsim status: {err}", file=sys.stderr)
        return 3
    if st is None:
        print("no host stack is deployed on the swarm" if not as_json else json.dumps({"up": False}))
        return 3
    print(json.dumps(st) if as_json else render_status(st))
    return 0 if st["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
