"""The gvtsim message catalogue: every message that crosses a socket, as a declarative schema.

Each message is a msgspec ``Struct`` encoded as a MessagePack *map*; the key ``"type"`` names the message
(its tag). Field types and ``Meta`` bounds are the schema: the codec validates every incoming frame
against them in one generic place (protocol/codec.py); there is no hand-written check per message.
Unknown keys are refused (``forbid_unknown_fields``). docs/PROTOCOL.md is the prose form of this file
and a test keeps the two in step.

Addressing conventions:
* request/response pairs carry ``req``, a u64 chosen by the requester and echoed by the answer
  (OK, DATA, ERROR or a specific reply), so calls can be pipelined;
* ioreqs are keyed by ``(vm, vcpu, seq)`` instead, echoed by IOREQ_DONE / ERROR;
* sessions start with HELLO {role, id, epoch, wire}; ``epoch`` is the sender's incarnation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from .constants import MAX_BATCH, MAX_BLOB, MAX_IOREQ_BATCH, MAX_VCPUS, MAX_VM_ID
from .errors import ErrorCode, Refusal

# ---------------------------------------------------------------------------------------------- field types
U8 = Annotated[int, Meta(ge=0, le=0xFF)]
U16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, Meta(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, Meta(ge=0)]  # msgpack ints are at most 64-bit; msgspec bounds must fit int64
VmId = Annotated[int, Meta(ge=0, le=MAX_VM_ID)]
VcpuId = Annotated[int, Meta(ge=0, lt=MAX_VCPUS)]
ReqId = U64
Name = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(max_length=1024)]
Blob = Annotated[bytes, Meta(max_length=MAX_BLOB)]
Frames = Annotated[int, Meta(ge=1, le=1 << 20)]  # a count of 4 KiB frames (<= 4 GiB)
IoreqKind = Annotated[int, Meta(ge=0, le=3)]  # IoreqType: PIO 0, MMIO 1, PCI 2, WP 3
Direction = Annotated[int, Meta(ge=0, le=1)]  # IoreqDir: READ 0, WRITE 1
AccessSize = Literal[1, 2, 4, 8]
Role = Literal["guest", "vhm", "gvt", "pgpu", "ctl", "probe"]
Engine = Literal["rcs", "bcs", "vcs", "vecs"]


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True, kw_only=True,
              omit_defaults=True):
    """Base of every message. Subclasses set ``tag`` to their wire name.

    Each subclass repeats ``frozen=True``: msgspec inherits it at runtime, but type checkers follow PEP 681
    (``dataclass_transform``), under which a subclass that does not say ``frozen=True`` is a non-frozen class
    inheriting from a frozen one (the fix msgspec's maintainers recommend, msgspec issue #657)."""


class Extent(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A run of guest frames backed by a run of machine frames: ``[gfn, mfn, count]``."""

    gfn: U64
    mfn: U64
    count: Frames


class Run(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A run of machine frames: ``[mfn, count]``."""

    mfn: U64
    count: Frames


# ================================================================================ session (every connection)
class Hello(Message, tag="HELLO", frozen=True):
    """First message on every connection (client -> server). ``epoch`` changes each time the sender restarts."""

    role: Role
    id: Name
    epoch: U64
    wire: U16


class HelloAck(Message, tag="HELLO_ACK", frozen=True):
    """The server's answer to HELLO: its own role, id and epoch (a changed epoch means the server restarted),
    and the session's intervals: send HEARTBEAT whenever you have sent nothing for ``heartbeat_ms``; a side
    silent for ``timeout_ms`` is declared lost (a backstop: a dead peer is normally found by the transport)."""

    role: Role
    id: Name
    epoch: U64
    wire: U16
    heartbeat_ms: U32 = 0
    timeout_ms: U32 = 0
    #: the epoch of the first incarnation whose state this one carries on: a server restarted from its saved
    #: state (vhm, docs/STATE.md) keeps it, so a changed ``epoch`` with the same ``lineage`` is the same
    #: server restarted with its state, not a different one; 0 (or absent): its own epoch
    lineage: U64 = 0


class Heartbeat(Message, tag="HEARTBEAT", frozen=True):
    """Liveness, both ways, sent when a direction has been idle for one heartbeat interval."""

    epoch: U64


class Bye(Message, tag="BYE", frozen=True):
    """The sender is closing the session on purpose (clean shutdown); the peer may forget it at once."""

    reason: Text = ""


class Error(Message, tag="ERROR", frozen=True):
    """A request failed or a message was refused. Echoes whichever keys identified the request."""

    code: ErrorCode
    reason: Text
    req: ReqId | None = None
    vm: VmId | None = None
    vcpu: VcpuId | None = None
    seq: U64 | None = None


def refusal_error(refusal: Refusal, req: int | None = None) -> Error:
    """The ERROR answering a core's :class:`Refusal`: its code and reason (cut to the wire's 1024 characters),
    the ioreq keys it carries, and ``req`` for a request/response call."""
    return Error(code=refusal.code, reason=refusal.reason[:1024], req=req, vm=refusal.vm, vcpu=refusal.vcpu,
                 seq=refusal.seq)


class Ok(Message, tag="OK", frozen=True):
    """Generic success answer to a request; ``value`` carries a scalar result where the call has one."""

    req: ReqId
    value: U64 = 0


class Data(Message, tag="DATA", frozen=True):
    """Answer carrying bytes (READ_GPA, PGPU_MEM_READ)."""

    req: ReqId
    data: Blob


class StatusRequest(Message, tag="STATUS", frozen=True):
    """Ask any service for its health and figures (the health probe and ``gvtsim status`` use it)."""

    req: ReqId


class StatusReply(Message, tag="STATUS_REPLY", frozen=True):
    """Health and figures of a service."""

    req: ReqId
    role: Role
    id: Name
    epoch: U64
    ready: bool
    counters: dict[str, int] = {}
    info: dict[str, Any] = {}


# ============================================================================================ guest <-> vhm
class VmCreate(Message, tag="VM_CREATE", frozen=True):
    """guest -> vhm: create a VM. ``vgpu_type`` is a type name (``GVTg_V5_8``), an AcrnGT spec
    ``"low_gm_MB,high_gm_MB,fence"``, or empty for no vGPU."""

    req: ReqId
    name: Name
    vcpus: Annotated[int, Meta(ge=1, le=MAX_VCPUS)]
    ram_mb: Annotated[int, Meta(ge=1, le=4096)]
    vgpu_type: Annotated[str, Meta(max_length=64)] = ""


class VmCreated(Message, tag="VM_CREATED", frozen=True):
    """vhm -> guest: the VM exists. ``ram`` is the gfn->mfn map (deliberately not identity);
    ``ept_root`` is the machine frame of the VM's simulated EPT root (services/common/ept.py)."""

    req: ReqId
    vm: VmId
    ram: list[Extent]
    ept_root: U64
    vgpu_id: U16 = 0


class VmDestroy(Message, tag="VM_DESTROY", frozen=True):
    """guest -> vhm: destroy a VM this connection created. Answer: OK."""

    req: ReqId
    vm: VmId


class VmReset(Message, tag="VM_RESET", frozen=True):
    """guest -> vhm: reset a VM (in-flight ioreqs are cleared, its vGPU gets a device-model-level reset)."""

    req: ReqId
    vm: VmId


class Ioreq(Message, tag="IOREQ", frozen=True):
    """An I/O request of one vCPU. guest -> vhm with kind PIO/MMIO/WP; vhm -> client (inside
    IOREQ_DISPATCH) with kind rewritten to PCI and ``bus/dev/func/reg`` set for 0xCFC-0xCFF accesses."""

    vm: VmId
    vcpu: VcpuId
    seq: U64
    kind: IoreqKind
    dir: Direction
    addr: U64
    size: AccessSize
    value: U64 = 0
    bus: U8 = 0
    dev: Annotated[int, Meta(ge=0, le=31)] = 0
    func: Annotated[int, Meta(ge=0, le=7)] = 0
    reg: Annotated[int, Meta(ge=0, le=0xFFF)] = 0


class IoreqDone(Message, tag="IOREQ_DONE", frozen=True):
    """vhm -> guest: the vCPU's request completed; ``value`` is the read result (0 for writes)."""

    vm: VmId
    vcpu: VcpuId
    seq: U64
    value: U64 = 0


class IoreqBatch(Message, tag="IOREQ_BATCH", frozen=True):
    """guest -> vhm: the requests of several vCPUs at once, as ACRN's Service OS takes them: one upcall and
    every vCPU slot with a pending request is scanned (``acrn_ioreq_intr`` -> ``ioreq_dispatcher`` in the
    VHM driver). Each entry is handled exactly as an IOREQ of its own (ownership, order, a request sent
    again, a refusal is an ERROR with that entry's keys). A vCPU has one slot: a batch naming one vCPU twice
    is refused whole, with one ERROR ``bad_request``. Once a connection has sent one, vhm answers every
    request of that connection with IOREQ_DONE_BATCH."""

    reqs: Annotated[list[Ioreq], Meta(min_length=1, max_length=MAX_IOREQ_BATCH)]


class Msi(Message, tag="MSI", frozen=True):
    """vhm -> guest: an MSI for the VM (addr[19:12] = destination APIC id, data[7:0] = vector).
    ``seq`` counts MSIs per VM so the guest can see a gap."""

    vm: VmId
    addr: U32
    data: U32
    seq: U64


class VgpuLost(Message, tag="VGPU_LOST", frozen=True):
    """vhm -> guest: the VM's vGPU is gone (its device model restarted, stayed away longer than vhm's grace, or
    no longer holds it). The guest handles it as a GPU reset: it destroys the VM and creates it again with a
    new vGPU. Every ioreq of the VM in flight at that moment has failed with ERROR gpu_reset."""

    vm: VmId
    reason: Text


class EptChanged(Message, tag="EPT_CHANGED", frozen=True):
    """vhm -> guest: the VM's EPT mappings changed (map_gfn_to_mfn); the guest drops cached leaf lookups.
    Write-protect changes need no message: the guest reads the EPT entry before every write."""

    vm: VmId


# ==================================================================================== client (gvt) <-> vhm
class IoreqDispatch(Message, tag="IOREQ_DISPATCH", frozen=True):
    """vhm -> client: a batch of requests now PROCESSING for that client (pipelined across VMs and vCPUs)."""

    reqs: Annotated[list[Ioreq], Meta(min_length=1, max_length=MAX_BATCH)]


class IoreqResult(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One completion inside IOREQ_COMPLETE: ``[vm, vcpu, seq, value]``."""

    vm: VmId
    vcpu: VcpuId
    seq: U64
    value: U64


class IoreqDoneBatch(Message, tag="IOREQ_DONE_BATCH", frozen=True):
    """vhm -> guest: completions, each as IOREQ_DONE would carry it (``[vm, vcpu, seq, value]``). Sent instead
    of IOREQ_DONE to a connection that has sent IOREQ_BATCH: the completions one vhm batch produced for it
    travel together, in the order they completed."""

    dones: Annotated[list[IoreqResult], Meta(min_length=1, max_length=MAX_BATCH)]


class IoreqComplete(Message, tag="IOREQ_COMPLETE", frozen=True):
    """client -> vhm: a batch of completions (``acrn_ioreq_complete_request``)."""

    reqs: Annotated[list[IoreqResult], Meta(min_length=1, max_length=MAX_BATCH)]


class IoRange(Message, tag="IO_RANGE", frozen=True):
    """client -> vhm: add or delete a trapped range of ``kind`` PIO/MMIO/WP, inclusive ``[start, end]``
    (``acrn_ioreq_add_iorange`` / ``del_iorange``; set_trap_area is an MMIO range). Answer: OK."""

    req: ReqId
    vm: VmId
    kind: IoreqKind
    start: U64
    end: U64
    add: bool


class InterceptBdf(Message, tag="INTERCEPT_BDF", frozen=True):
    """client -> vhm: claim (or release) PCI config requests for bus:dev.func. Answer: OK."""

    req: ReqId
    vm: VmId
    bus: U8
    dev: Annotated[int, Meta(ge=0, le=31)]
    func: Annotated[int, Meta(ge=0, le=7)]
    add: bool


class GfnToMfn(Message, tag="GFN_TO_MFN", frozen=True):
    """client -> vhm: translate a guest frame. Answer: OK{value = mfn} or ERROR bad_address."""

    req: ReqId
    vm: VmId
    gfn: U64


class DmaMapGuestPage(Message, tag="DMA_MAP_GUEST_PAGE", frozen=True):
    """client -> vhm: pin a guest page for device DMA. Answer: OK{value = mfn} (the DMA address >> 12)."""

    req: ReqId
    vm: VmId
    gfn: U64


class DmaUnmapGuestPage(Message, tag="DMA_UNMAP_GUEST_PAGE", frozen=True):
    """client -> vhm: drop one pin taken by DMA_MAP_GUEST_PAGE on machine frame ``mfn``. Answer: OK."""

    req: ReqId
    vm: VmId
    mfn: U64


class MapGfnToMfn(Message, tag="MAP_GFN_TO_MFN", frozen=True):
    """client -> vhm: map (``map``=true) or unmap ``nr`` guest frames at ``gfn`` onto machine frames at
    ``mfn`` in the VM's EPT (the aperture pass-through). Answer: OK."""

    req: ReqId
    vm: VmId
    gfn: U64
    mfn: U64
    nr: Frames
    map: bool


class PageTrack(Message, tag="PAGE_TRACK", frozen=True):
    """client -> vhm: enable (write-protect; writes become WP ioreqs to this client) or disable tracking
    of guest frame ``gfn``. Visible to the guest before its next write. Answer: OK."""

    req: ReqId
    vm: VmId
    gfn: U64
    enable: bool


class ReadGpa(Message, tag="READ_GPA", frozen=True):
    """client -> vhm: read guest-physical memory (must lie inside the VM's RAM). Answer: DATA."""

    req: ReqId
    vm: VmId
    gpa: U64
    length: Annotated[int, Meta(ge=1, le=MAX_BLOB)]


class WriteGpa(Message, tag="WRITE_GPA", frozen=True):
    """client -> vhm: write guest-physical memory (must lie inside the VM's RAM). Answer: OK."""

    req: ReqId
    vm: VmId
    gpa: U64
    data: Annotated[bytes, Meta(min_length=1, max_length=MAX_BLOB)]


class InjectMsi(Message, tag="INJECT_MSI", frozen=True):
    """client -> vhm: deliver an MSI to the VM's guest over the guest's own connection. Answer: OK."""

    req: ReqId
    vm: VmId
    addr: U32
    data: U32


class AllocFrames(Message, tag="ALLOC_FRAMES", frozen=True):
    """client -> vhm: allocate machine frames for the device model (shadow tables, scratch, contexts).
    Answer: FRAMES. Frames are released by FREE_FRAMES or when the client's session ends."""

    req: ReqId
    count: Frames
    contiguous: bool = False


class FramesReply(Message, tag="FRAMES", frozen=True):
    """vhm -> client: the runs of machine frames allocated."""

    req: ReqId
    runs: list[Run]


class FreeFrames(Message, tag="FREE_FRAMES", frozen=True):
    """client -> vhm: release machine frames this client allocated. Answer: OK."""

    req: ReqId
    runs: Annotated[list[Run], Meta(min_length=1, max_length=MAX_BATCH)]


class AttachVgpu(Message, tag="ATTACH_VGPU", frozen=True):
    """client -> vhm: bind (``attach``) or unbind vGPU ``vgpu_id`` to the VM (MPT attach/detach_vgpu). Answer: OK."""

    req: ReqId
    vm: VmId
    vgpu_id: U16
    attach: bool


class VgpuEntry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One vGPU inside VGPU_SYNC: ``[vm, vgpu_id]``."""

    vm: VmId
    vgpu_id: U16


class VgpuSync(Message, tag="VGPU_SYNC", frozen=True):
    """client -> vhm, after every HELLO_ACK (reconciliation): the vGPUs this device model holds for vhm's VMs.
    vhm compares them with its VM table and answers VGPU_SYNC_REPLY; it re-sends the ioreqs that were waiting
    for this client only after it (a device model that never sends VGPU_SYNC gets them on its own next call)."""

    req: ReqId
    vgpus: Annotated[list[VgpuEntry], Meta(max_length=MAX_BATCH)]


class VgpuSyncReply(Message, tag="VGPU_SYNC_REPLY", frozen=True):
    """vhm -> client: the outcome of VGPU_SYNC. ``resumed``: vhm kept this client's state from before the
    reconnect (same id and epoch, back within the grace period: ranges, BDFs, page tracks, frames). ``keep``:
    VMs whose vGPU stays attached to this client (the client re-registers their ranges and BDF, which is
    idempotent). ``destroy``: vGPUs the client must destroy (their VM is gone, dying, or owned elsewhere).
    VMs that vhm believed to have a vGPU here and that are not in the list were told VGPU_LOST."""

    req: ReqId
    resumed: bool
    keep: Annotated[list[VmId], Meta(max_length=MAX_BATCH)] = []
    destroy: Annotated[list[VmId], Meta(max_length=MAX_BATCH)] = []


class Dom0Ready(Message, tag="DOM0_READY", frozen=True):
    """client -> vhm: the device model is ready to serve (MPT dom0_ready, uevent GVT_DOM0_READY=1). Answer: OK."""

    req: ReqId


# ======================================================================= vhm / ctl -> gvt (management API)
class VgpuCreate(Message, tag="VGPU_CREATE", frozen=True):
    """vhm or ctl -> gvt: create the VM's vGPU (acrn-dm writing ``create_gvt_instance``). ``spec`` is a
    type name or ``"low_gm_MB,high_gm_MB,fence"``. Answer: VGPU_CREATED or ERROR no_space/bad_request."""

    req: ReqId
    vm: VmId
    spec: Annotated[str, Meta(min_length=1, max_length=64)]
    ept_root: U64 = 0  # the VM's EPT root frame (0: unknown, e.g. a ctl-created vGPU for a VM vhm does not host)
    ram_mb: Annotated[int, Meta(ge=0, le=4096)] = 0  # the VM's RAM size (guest frames >= this are invalid gfns)


class VgpuCreated(Message, tag="VGPU_CREATED", frozen=True):
    """gvt -> requester: the vGPU exists (ids 1..7, as GVT's idr range [1, 8))."""

    req: ReqId
    vm: VmId
    vgpu_id: U16


class VgpuDestroy(Message, tag="VGPU_DESTROY", frozen=True):
    """vhm or ctl -> gvt: destroy the VM's vGPU (``create_gvt_instance`` with ``-vmid``). Answer: OK."""

    req: ReqId
    vm: VmId


class VgpuReset(Message, tag="VGPU_RESET", frozen=True):
    """vhm or ctl -> gvt: device-model-level reset (DMLR) of the VM's vGPU. Answer: OK."""

    req: ReqId
    vm: VmId


class VgpuTypeInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One vGPU type as the management API lists it."""

    name: Name
    low_gm_mb: U32
    high_gm_mb: U32
    fence: U16
    weight: U16
    avail: U16
    description: Text = ""


class VgpuInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One vGPU as the management API lists it (the sysfs ``vmN/vgpu_id`` view)."""

    vgpu_id: U16
    vm: VmId
    type: Name
    low_gm_mb: U32
    high_gm_mb: U32
    fence: U16
    weight: U16
    active: bool
    failsafe: bool = False


class MgmtTypes(Message, tag="MGMT_TYPES", frozen=True):
    """ctl -> gvt: list vGPU types with available instances. Answer: MGMT_TYPES_REPLY."""

    req: ReqId


class MgmtTypesReply(Message, tag="MGMT_TYPES_REPLY", frozen=True):
    req: ReqId
    types: list[VgpuTypeInfo]


class MgmtList(Message, tag="MGMT_LIST", frozen=True):
    """ctl -> gvt: list vGPUs (VM id -> vGPU id). Answer: MGMT_LIST_REPLY."""

    req: ReqId


class MgmtListReply(Message, tag="MGMT_LIST_REPLY", frozen=True):
    req: ReqId
    vgpus: list[VgpuInfo]


# ============================================================================================ gvt <-> pgpu
class GgttWrite(Message, tag="GGTT_WRITE", frozen=True):
    """gvt -> pgpu: write physical GGTT entries ``[index, pte]`` (gen8 PTE: bit0 present, bits 45:12 the
    machine address). Answer: OK. The GGTT TLB is flushed after the batch (GFX_FLSH_CNTL)."""

    req: ReqId
    entries: Annotated[list[tuple[U32, U64]], Meta(min_length=1, max_length=MAX_BATCH * 64)]


class GgttFill(Message, tag="GGTT_FILL", frozen=True):
    """gvt -> pgpu: write ``count`` physical GGTT entries from ``index`` with the same ``pte`` (the scratch
    fill of a vGPU's slices at create, destroy, reset and after a pgpu restart: one message instead of one
    entry per 4 KiB page). Answer: OK{value = count}. The GGTT TLB is flushed afterwards."""

    req: ReqId
    index: U32
    count: Annotated[int, Meta(ge=1, le=1 << 24)]
    pte: U64


class GgttRead(Message, tag="GGTT_READ", frozen=True):
    """gvt -> pgpu: read ``count`` physical GGTT entries from ``index``. Answer: GGTT_ENTRIES."""

    req: ReqId
    index: U32
    count: Annotated[int, Meta(ge=1, le=MAX_BATCH * 64)]


class GgttEntries(Message, tag="GGTT_ENTRIES", frozen=True):
    req: ReqId
    ptes: list[U64]


class PgpuMmioRead(Message, tag="PGPU_MMIO_READ", frozen=True):
    """gvt -> pgpu: read a physical MMIO register. Answer: OK{value}."""

    req: ReqId
    offset: Annotated[int, Meta(ge=0, lt=0x200000)]
    size: Literal[4, 8]


class PgpuMmioWrite(Message, tag="PGPU_MMIO_WRITE", frozen=True):
    """gvt -> pgpu: write a physical MMIO register. Answer: OK."""

    req: ReqId
    offset: Annotated[int, Meta(ge=0, lt=0x200000)]
    size: Literal[4, 8]
    value: U64


class ElspSubmit(Message, tag="ELSP_SUBMIT", frozen=True):
    """gvt -> pgpu: submit one or two context descriptors (element 0 first) to an engine's execlist port,
    as the four ELSP dword writes would. ``tag`` is echoed in the GPU_EVENTs of this submission.
    Answer: OK (accepted) or ERROR (port busy / bad descriptor)."""

    req: ReqId
    engine: Engine
    descs: Annotated[list[U64], Meta(min_length=1, max_length=2)]
    tag: U64 = 0


GpuEventKind = Literal["ctx_complete", "user_interrupt", "page_fault", "hang", "error"]


class GpuEvent(Message, tag="GPU_EVENT", frozen=True):
    """pgpu -> gvt: an engine event. ``status`` 0 = success; for page_fault ``detail`` holds the faulting
    graphics address; ``busy_ns`` is the simulated GPU time the context ran."""

    engine: Engine
    kind: GpuEventKind
    ctx_id: U32
    tag: U64 = 0
    status: U32 = 0
    detail: U64 = 0
    busy_ns: U64 = 0
    seq: U64 = 0
    reason: Text = ""


class EngineReset(Message, tag="ENGINE_RESET", frozen=True):
    """gvt -> pgpu: reset an engine (drops its running and pending contexts). Answer: OK."""

    req: ReqId
    engine: Engine


class WorkloadQuery(Message, tag="WORKLOAD_QUERY", frozen=True):
    """gvt -> pgpu, after gvt restarted from its saved state (docs/STATE.md): what became of the submissions
    with these tags, made by an earlier incarnation of the same gvt id. Answer: WORKLOAD_STATUS."""

    req: ReqId
    tags: Annotated[list[U64], Meta(min_length=1, max_length=MAX_BATCH)]


class EndedEvent(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One event of an ended submission inside WORKLOAD_STATUS: the fields of its GPU_EVENT, in order
    ``[engine, kind, ctx_id, tag, status, detail, busy_ns, seq, reason]``."""

    engine: Engine
    kind: GpuEventKind
    ctx_id: U32
    tag: U64
    status: U32
    detail: U64
    busy_ns: U64
    seq: U64
    reason: Text


class WorkloadStatus(Message, tag="WORKLOAD_STATUS", frozen=True):
    """pgpu -> gvt: the answer to WORKLOAD_QUERY. ``active``: tags still queued or running on an engine (their
    GPU_EVENTs will come to the asking session). ``ended``: the events of the tags that ended, in the order
    they were due (user interrupts, then the terminal event), whether or not they were delivered. A tag in
    neither list never reached this GPU (or ended longer ago than pgpu remembers, its last 16,384)."""

    req: ReqId
    active: Annotated[list[U64], Meta(max_length=MAX_BATCH)] = []
    ended: Annotated[list[EndedEvent], Meta(max_length=4 * MAX_BATCH)] = []


# ======================================================================= ctl -> gvt (display: plane query)
PlaneName = Literal["primary", "cursor"]
PipeIndex = Annotated[int, Meta(ge=0, le=2)]


class PlaneQuery(Message, tag="PLANE_QUERY", frozen=True):
    """ctl -> gvt: the current primary or cursor plane of the VM's vGPU on ``pipe`` (0 = A), decoded from
    its registers (the VFIO_DEVICE_QUERY_GFX_PLANE analogue). Answer: PLANE_INFO."""

    req: ReqId
    vm: VmId
    plane: PlaneName = "primary"
    pipe: PipeIndex = 0


class PlaneInfo(Message, tag="PLANE_INFO", frozen=True):
    """The decoded plane. ``format`` is a DRM fourcc name (XRGB8888, XBGR8888, XRGB2101010, XBGR2101010,
    RGB565, ARGB8888 for the cursor); ``stride`` is bytes per pixel row; ``tiling`` linear or x;
    ``ggtt_addr`` the surface's graphics-memory address; ``size`` the bytes it spans; ``generation`` moves on
    every flip (PIPE_FLIPCOUNT for the primary plane). A disabled plane has ``enabled`` false and no
    other field set."""

    req: ReqId
    vm: VmId
    plane: PlaneName
    pipe: PipeIndex
    enabled: bool
    format: Annotated[str, Meta(max_length=16)] = ""
    bpp: Annotated[int, Meta(ge=0, le=8)] = 0
    width: U16 = 0
    height: U16 = 0
    stride: U32 = 0
    tiling: Literal["linear", "x"] = "linear"
    ggtt_addr: U64 = 0
    x: Annotated[int, Meta(ge=-0x8000, le=0xFFFF)] = 0
    y: Annotated[int, Meta(ge=-0x8000, le=0xFFFF)] = 0
    size: U64 = 0
    generation: U32 = 0


class FbRead(Message, tag="FB_READ", frozen=True):
    """ctl -> gvt: ``length`` bytes at ``ggtt_addr + offset`` of the VM's graphics memory, read through the
    vGPU's GGTT from machine memory (what a dma-buf export of the surface gives the host). A range outside
    the vGPU's graphics memory is refused (bad_address). Answer: DATA."""

    req: ReqId
    vm: VmId
    ggtt_addr: U64
    length: Annotated[int, Meta(ge=1, le=MAX_BLOB)]
    offset: Annotated[int, Meta(ge=0, le=64 << 20)] = 0


#: Every message type, in catalogue order (the codec's tagged union and the docs test use this).
ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello, HelloAck, Heartbeat, Bye, Error, Ok, Data, StatusRequest, StatusReply,
    VmCreate, VmCreated, VmDestroy, VmReset, Ioreq, IoreqDone, IoreqBatch, IoreqDoneBatch, Msi, VgpuLost,
    EptChanged,
    IoreqDispatch, IoreqComplete, IoRange, InterceptBdf, GfnToMfn, DmaMapGuestPage, DmaUnmapGuestPage,
    MapGfnToMfn, PageTrack, ReadGpa, WriteGpa, InjectMsi, AllocFrames, FramesReply, FreeFrames,
    AttachVgpu, VgpuSync, VgpuSyncReply, Dom0Ready,
    VgpuCreate, VgpuCreated, VgpuDestroy, VgpuReset, MgmtTypes, MgmtTypesReply, MgmtList, MgmtListReply,
    GgttWrite, GgttFill, GgttRead, GgttEntries, PgpuMmioRead, PgpuMmioWrite, ElspSubmit, GpuEvent, EngineReset,
    WorkloadQuery, WorkloadStatus, PlaneQuery, PlaneInfo, FbRead,
)

#: Messages that answer a request (matched to the pending call by ``req``); every other message that carries
#: ``req`` is itself a request, whose ``req`` lives in the *sender's* id space.
REPLY_TYPES: tuple[type[Message], ...] = (
    Error, Ok, Data, StatusReply, VmCreated, FramesReply, VgpuCreated, MgmtTypesReply, MgmtListReply, GgttEntries,
    VgpuSyncReply, PlaneInfo, WorkloadStatus,
)

# a Union built from the catalogue at runtime (msgspec decodes it as one tagged union); a type checker cannot
# evaluate a Union of a runtime tuple, hence the ignore
AnyMessage = Union[ALL_MESSAGES]  # type: ignore[valid-type]


def tag_of(msg: Message | type[Message]) -> str:
    """The wire name of a message or message class (its msgspec tag, a str for every message here)."""
    tag = msg.__struct_config__.tag
    assert isinstance(tag, str), f"{msg!r} has no str tag"
    return tag


#: wire name -> class
BY_TAG: dict[str, type[Message]] = {tag_of(m): m for m in ALL_MESSAGES}
