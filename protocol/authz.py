"""The authorisation table: for every message type, who may send it to whom, and whose ids it may name.

One row per message type of the catalogue (a test fails if a type has no row). A row says, for each
receiving process, the peer roles that may send it there, and the ownership rule the message's ids are
checked against:

* ``vm_creator``   - ``vm`` must name a VM created by this very connection (vhm binds a VM to the guest
  connection that sent VM_CREATE; ACRN's ``hcall_create_vm`` caller is the only one that may manage it);
* ``device_model`` - ``vm`` must name a VM that has no device model yet or whose device model is this
  connection (the ioreq client that serves its vGPU; ``acrn_ioreq_client`` is per VM in the Service OS);
* ``vgpu_creator`` - if the VM already has a vGPU, it must have been created by the sender's role: vhm manages
  the vGPUs of the VMs it hosts, ``ctl`` the ones it created (a vGPU belongs to its VM);
* ``per_entry``    - a batch whose entries are checked one by one by the receiving core (IOREQ_COMPLETE:
  each completion must answer a request dispatched to this client; FREE_FRAMES: frames this client got);
* ``reply``        - an answer: it must match a call the receiver made on that session, else it is dropped
  and counted (an answer is never answered);
* ``none``         - the message names nothing that belongs to anyone (sizes, types, the physical GPU, whose
  only client is the device model).

The session layer of every server (services/common/server.py) calls :func:`check` once per message and
refuses a wrong role with ``ERROR unexpected`` and a foreign id with ``ERROR forged_id``, each counted.
Pure data and pure functions: no sockets, no service state (ownership is asked through a callback).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from . import messages as m
from .errors import ErrorCode

#: Servers (bound ROUTER sockets) whose session layer enforces the table.
SERVICES: tuple[str, ...] = ("vhm", "gvt", "pgpu")
#: Every receiver in the table: the servers, and the clients that receive over their own connections.
RECEIVERS: tuple[str, ...] = ("vhm", "gvt", "pgpu", "guest", "ctl", "probe")
ALL_ROLES: frozenset[m.Role] = frozenset(("guest", "vhm", "gvt", "pgpu", "ctl", "probe"))


class Owner(str, enum.Enum):
    """The ownership rule a message's ids are checked against (see the module docstring)."""

    NONE = "none"
    SESSION = "session"
    VM_CREATOR = "vm_creator"
    DEVICE_MODEL = "device_model"
    VGPU_CREATOR = "vgpu_creator"
    PER_ENTRY = "per_entry"
    REPLY = "reply"


@dataclass(frozen=True)
class Rule:
    """One row: receiver -> roles that may send the message there, and the ownership rule."""

    senders: dict[str, frozenset[str]]
    owner: Owner

    def allowed(self, receiver: str, role: str) -> bool:
        """Whether ``role`` may send this message to ``receiver``."""
        return role in self.senders.get(receiver, frozenset())


def _r(owner: Owner, **senders: str) -> Rule:
    """``_r(Owner.X, vhm="guest gvt")``: receiver vhm accepts it from guest and gvt."""
    return Rule({recv: frozenset(roles.split()) for recv, roles in senders.items()}, owner)


# Who opens sessions where: vhm serves guests and the device model (ctl and probes: STATUS only); gvt's
# management socket serves ctl (and probes); pgpu serves the device model (ctl and probes: STATUS only).
_HELLO_AT = dict(vhm="guest gvt ctl probe", gvt="ctl probe", pgpu="gvt ctl probe")
_ANY_AT = dict(**_HELLO_AT, guest="vhm", ctl="gvt vhm pgpu", probe="vhm gvt pgpu")
_ANY_AT["gvt"] = "ctl probe vhm pgpu"  # gvt also hears vhm and pgpu over its own two connections

TABLE: dict[type[m.Message], Rule] = {
    # ------------------------------------------------------------------------ session (every connection)
    m.Hello: _r(Owner.SESSION, **_HELLO_AT),
    m.HelloAck: _r(Owner.SESSION, guest="vhm", gvt="vhm pgpu", ctl="gvt vhm pgpu", probe="vhm gvt pgpu"),
    m.Heartbeat: _r(Owner.SESSION, **_ANY_AT),
    m.Bye: _r(Owner.SESSION, **_ANY_AT),
    m.StatusRequest: _r(Owner.NONE, **_HELLO_AT),
    # answers: vhm hears them from the device model (its VGPU_* calls), clients from their server
    m.Error: _r(Owner.REPLY, vhm="gvt", guest="vhm", gvt="vhm pgpu", ctl="gvt vhm pgpu", probe="vhm gvt pgpu"),
    m.Ok: _r(Owner.REPLY, vhm="gvt", guest="vhm", gvt="vhm pgpu", ctl="gvt"),
    m.Data: _r(Owner.REPLY, gvt="vhm", ctl="gvt"),  # read_gpa answers; FB_READ answers
    m.PlaneInfo: _r(Owner.REPLY, ctl="gvt"),
    m.StatusReply: _r(Owner.REPLY, gvt="pgpu", ctl="gvt vhm pgpu", probe="vhm gvt pgpu"),
    # ------------------------------------------------------------------------------------ guest <-> vhm
    m.VmCreate: _r(Owner.NONE, vhm="guest"),
    m.VmCreated: _r(Owner.REPLY, guest="vhm"),
    m.VmDestroy: _r(Owner.VM_CREATOR, vhm="guest"),
    m.VmReset: _r(Owner.VM_CREATOR, vhm="guest"),
    m.Ioreq: _r(Owner.VM_CREATOR, vhm="guest"),
    m.IoreqDone: _r(Owner.NONE, guest="vhm"),
    m.IoreqBatch: _r(Owner.PER_ENTRY, vhm="guest"),  # each entry is checked as an IOREQ (vm_creator)
    m.IoreqDoneBatch: _r(Owner.NONE, guest="vhm"),
    m.Msi: _r(Owner.NONE, guest="vhm"),
    m.EptChanged: _r(Owner.NONE, guest="vhm"),
    m.VgpuLost: _r(Owner.NONE, guest="vhm"),
    # ------------------------------------------------------------------------ device model (gvt) <-> vhm
    m.IoreqDispatch: _r(Owner.NONE, gvt="vhm"),
    m.IoreqComplete: _r(Owner.PER_ENTRY, vhm="gvt"),
    m.IoRange: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.InterceptBdf: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.GfnToMfn: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.DmaMapGuestPage: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.DmaUnmapGuestPage: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.MapGfnToMfn: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.PageTrack: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.ReadGpa: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.WriteGpa: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.InjectMsi: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.AllocFrames: _r(Owner.NONE, vhm="gvt"),
    m.FramesReply: _r(Owner.REPLY, gvt="vhm"),
    m.FreeFrames: _r(Owner.PER_ENTRY, vhm="gvt"),
    m.AttachVgpu: _r(Owner.DEVICE_MODEL, vhm="gvt"),
    m.Dom0Ready: _r(Owner.NONE, vhm="gvt"),
    # reconciliation after a reconnect: vhm checks each listed vGPU against its VM table (keep or destroy)
    m.VgpuSync: _r(Owner.PER_ENTRY, vhm="gvt"),
    m.VgpuSyncReply: _r(Owner.REPLY, gvt="vhm"),
    # ------------------------------------------------------------------ vhm / ctl -> gvt (management API)
    m.VgpuCreate: _r(Owner.VGPU_CREATOR, gvt="vhm ctl"),
    m.VgpuCreated: _r(Owner.REPLY, vhm="gvt", ctl="gvt"),
    m.VgpuDestroy: _r(Owner.VGPU_CREATOR, gvt="vhm ctl"),
    m.VgpuReset: _r(Owner.VGPU_CREATOR, gvt="vhm ctl"),
    # the plane query and framebuffer read (gvtsim screen / web) only read a vGPU's screen: management only
    m.PlaneQuery: _r(Owner.NONE, gvt="ctl"),
    m.FbRead: _r(Owner.NONE, gvt="ctl"),
    m.MgmtTypes: _r(Owner.NONE, gvt="ctl"),
    m.MgmtTypesReply: _r(Owner.REPLY, ctl="gvt"),
    m.MgmtList: _r(Owner.NONE, gvt="ctl"),
    m.MgmtListReply: _r(Owner.REPLY, ctl="gvt"),
    # ------------------------------------------------------------------------------------ gvt <-> pgpu
    m.GgttWrite: _r(Owner.NONE, pgpu="gvt"),
    m.GgttFill: _r(Owner.NONE, pgpu="gvt"),
    m.GgttRead: _r(Owner.NONE, pgpu="gvt"),
    m.GgttEntries: _r(Owner.REPLY, gvt="pgpu"),
    m.PgpuMmioRead: _r(Owner.NONE, pgpu="gvt"),
    m.PgpuMmioWrite: _r(Owner.NONE, pgpu="gvt"),
    m.ElspSubmit: _r(Owner.NONE, pgpu="gvt"),
    m.GpuEvent: _r(Owner.NONE, gvt="pgpu"),
    m.EngineReset: _r(Owner.NONE, pgpu="gvt"),
    m.WorkloadQuery: _r(Owner.NONE, pgpu="gvt"),
    m.WorkloadStatus: _r(Owner.REPLY, gvt="pgpu"),
}

#: How a receiver answers "does this session own VM ``vm`` under rule ``owner``?": True (it does), False (someone
#: else does: forged id), None (no such VM or vGPU: not an ownership matter, the service answers no_such_vm).
OwnsFn = Callable[[Owner, int], "bool | None"]


@dataclass(frozen=True)
class Denial:
    """Why the session layer refuses a message (a table check, before any core sees it): the ERROR code and
    reason to send, and the counter to bump. A core's own refusals are :class:`~gvtsim.protocol.errors.Refusal`."""

    code: ErrorCode
    reason: str
    counter: str
    answer: bool = True  # False for answers (ERROR, OK...): a refused answer is counted, never answered


def may_hello(service: str, role: str) -> bool:
    """Whether ``service`` opens a session for a peer that says HELLO as ``role``."""
    return TABLE[m.Hello].allowed(service, role)


def check(service: str, role: str, msg: m.Message, owns: OwnsFn | None = None) -> Denial | None:
    """Check one message from a peer with session role ``role`` arriving at ``service``.

    Returns None if it may pass, else the :class:`Denial` (``unexpected`` for a role not in the row,
    ``forged_id`` for a VM or vGPU that belongs to another connection). ``owns`` answers ownership
    questions from the receiver's own state; without it only roles are checked.
    """
    cls = type(msg)
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    r = TABLE.get(cls)
    if r is None or not r.allowed(service, role):
        return Denial(ErrorCode.UNEXPECTED, f"{tag} is not accepted by {service} from role {role}",
                       f"authz_refused_role_{tag}", answer=not isinstance(msg, m.REPLY_TYPES))
    if owns is not None and r.owner in (Owner.VM_CREATOR, Owner.DEVICE_MODEL, Owner.VGPU_CREATOR):
        vm = getattr(msg, "vm", None)
        if vm is not None and owns(r.owner, vm) is False:
            what = "vGPU of VM" if r.owner is Owner.VGPU_CREATOR else "VM"
            return Denial(ErrorCode.FORGED_ID, f"{tag}: {what} {vm} does not belong to this connection "
                           f"({r.owner.value} rule)", f"authz_refused_owner_{tag}")
    return None


def markdown() -> str:
    """The table as a Markdown section for docs/PROTOCOL.md."""
    head = ["| message | " + " | ".join(f"to {r}" for r in RECEIVERS) + " | ownership rule |",
            "|---|" + "---|" * len(RECEIVERS) + "---|"]
    rows = []
    for cls in m.ALL_MESSAGES:
        r = TABLE[cls]
        cells = [", ".join(sorted(r.senders.get(recv, ()))) or "-" for recv in RECEIVERS]
        rows.append(f"| `{cls.__struct_config__.tag}` | " + " | ".join(cells) + f" | {r.owner.value} |")  # type: ignore[attr-defined]
    return "\n".join(head + rows)
