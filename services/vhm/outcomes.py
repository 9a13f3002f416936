"""Plain data the vhm core returns; the shell (service.py) turns each into messages.

Nothing here knows about sockets: an outcome names the peer (an opaque hashable the shell gave the core)
or the client id it concerns, and the fields of the message to send.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...protocol import ErrorCode
from ...protocol.errors import Refusal
from ...protocol import messages as m
from ..common.memory import FrameRun

Peer = Hashable


class VhmError(Exception):
    """Raised inside the core, turned into a returned :class:`~gvtsim.protocol.errors.Refusal` at the entry point
    (never escapes)."""

    def __init__(self, code: ErrorCode, reason: str, **keys: int) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.keys = keys


@dataclass(frozen=True)
class Completed:
    """A vCPU's ioreq is COMPLETE: send IOREQ_DONE to ``peer``, then call ``core.resume`` (COMPLETE -> FREE)."""

    peer: Peer
    vm: int
    vcpu: int
    seq: int
    value: int

    def message(self) -> m.IoreqDone:
        return m.IoreqDone(vm=self.vm, vcpu=self.vcpu, seq=self.seq, value=self.value)


@dataclass(frozen=True)
class Dispatched:
    """The ioreq is PROCESSING at ioreq client ``client``: send it inside an IOREQ_DISPATCH batch."""

    client: int
    ioreq: m.Ioreq


@dataclass(frozen=True)
class IoreqFailed:
    """An in-flight ioreq ended without emulation (client lost, VM destroyed or reset, timeout):
    send ERROR {code, vm, vcpu, seq} to ``peer``. The slot is already FREE."""

    peer: Peer
    vm: int
    vcpu: int
    seq: int
    code: ErrorCode
    reason: str

    def error(self) -> m.Error:
        return m.Error(code=self.code, reason=self.reason[:1024], vm=self.vm, vcpu=self.vcpu, seq=self.seq)


@dataclass(frozen=True)
class Notice:
    """A message for a guest that is not an answer (MSI, EPT_CHANGED)."""

    peer: Peer
    message: m.Message


@dataclass(frozen=True)
class Reply:
    """Success of an MPT call: OK {value}, plus notices for guests."""

    value: int = 0
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True)
class DataReply:
    """Success of READ_GPA: DATA {data}."""

    data: bytes


@dataclass(frozen=True)
class FramesOut:
    """Success of ALLOC_FRAMES: FRAMES {runs}."""

    runs: list[FrameRun]


MptResult = Reply | DataReply | FramesOut | Refusal


@dataclass(frozen=True)
class VgpuRequest:
    """vhm must ask device model ``client`` to create the VM's vGPU (VGPU_CREATE)."""

    client: int
    spec: str
    ept_root: int
    ram_mb: int


@dataclass(frozen=True)
class VmPlan:
    """A VM was created (RUNNING, or CREATING while ``vgpu`` is asked for)."""

    vm: int
    serial: int
    ram: list[tuple[int, int, int]]
    ept_root: int
    vgpu: VgpuRequest | None = None

    def created(self, req: int, vgpu_id: int = 0) -> m.VmCreated:
        """The VM_CREATED answer."""
        return m.VmCreated(req=req, vm=self.vm, ram=[m.Extent(gfn=g, mfn=f, count=c) for g, f, c in self.ram],
                           ept_root=self.ept_root, vgpu_id=vgpu_id)


@dataclass(frozen=True)
class Teardown:
    """A VM was destroyed (DYING) or reset: fail ``failed``; for a destroy, ask ``vgpu_client`` (if any)
    to destroy the vGPU (VGPU_DESTROY), then ``core.reap_vm`` frees the frames; for a reset, ask it to
    reset the vGPU (VGPU_RESET)."""

    vm: int
    serial: int
    failed: list[IoreqFailed] = field(default_factory=list)
    vgpu_client: int | None = None


@dataclass(frozen=True)
class ClientLoss:
    """An ioreq client vanished: fail ``failed`` to their guests, send ``notices``; ``frames_freed`` were
    the client's own frames."""

    failed: list[IoreqFailed]
    notices: list[Notice]
    frames_freed: int
    client: int = 0


T = TypeVar("T")


def entry_point(fn: Callable[..., T]) -> Callable[..., T | Refusal]:
    """Make a core method an entry point: a :class:`VhmError` becomes :class:`Refusal` and is counted
    (``error_<code>``); any other exception becomes ``Refusal(internal)`` and is counted, so nothing
    escapes into the shell's receive loop."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T | Refusal:
        try:
            return fn(self, *args, **kwargs)
        except VhmError as err:
            self.counters[f"error_{err.code.value}"] += 1
            return Refusal(err.code, err.reason, **err.keys)
        except Exception as err:  # a bug: counted and answered, never fatal
            self.counters["internal_errors"] += 1
            return Refusal(ErrorCode.INTERNAL, f"{fn.__name__}: {type(err).__name__}: {err}")

    return wrapper
