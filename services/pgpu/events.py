"""What the engines report to the device model: event kinds and context status codes.

Every context element accepted by ELSP_SUBMIT ends with exactly one *terminal* event: ``ctx_complete``
(status 0), ``page_fault``, ``error`` or ``hang``; ``user_interrupt`` events (MI_USER_INTERRUPT, the notify
bit of PIPE_CONTROL / MI_FLUSH_DW) come before it. The one exception is ENGINE_RESET / GDRST, which drops the
engine's running and pending contexts on the caller's request, with no event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class CtxStatus(enum.IntEnum):
    """``GPU_EVENT.status`` of a terminal event (docs/PGPU.md lists them)."""

    OK = 0  # ctx_complete: ran to ring tail
    PAGE_FAULT = 1  # page_fault: a gma did not translate (detail = the gma)
    HANG = 2  # hang: the watchdog stopped the context (detail = commands executed)
    UNKNOWN_COMMAND = 3  # error: no such (client, opcode) on this engine (detail = the dword)
    BAD_COMMAND = 4  # error: a known command with bad fields (length, depth, ROP, tiling, nesting)
    BAD_REGISTER = 5  # error: MI_LOAD_REGISTER_IMM to an offset outside the 2 MiB MMIO space
    BAD_CONTEXT = 6  # error: ring buffer disabled in RING_CTL or head/tail beyond the ring
    INTERNAL = 7  # error: a bug in the emulator (logged and counted; the engine is reset)
    UNSUPPORTED_COMMAND = 8  # error: a real command of this ring the emulator does not execute (detail = dword)


#: terminal status -> event kind
KIND_BY_STATUS: dict[CtxStatus, str] = {
    CtxStatus.OK: "ctx_complete",
    CtxStatus.PAGE_FAULT: "page_fault",
    CtxStatus.HANG: "hang",
    CtxStatus.UNKNOWN_COMMAND: "error",
    CtxStatus.BAD_COMMAND: "error",
    CtxStatus.BAD_REGISTER: "error",
    CtxStatus.BAD_CONTEXT: "error",
    CtxStatus.INTERNAL: "error",
    CtxStatus.UNSUPPORTED_COMMAND: "error",
}

EVENT_KINDS = ("ctx_complete", "user_interrupt", "page_fault", "hang", "error")


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One event, due at ``due`` (clock seconds, the same clock as the ``now`` given to the core).

    ``owner`` is whatever the submitter passed to ``PgpuCore.submit`` (the shell uses the session)."""

    engine: str
    kind: str
    ctx_id: int
    tag: int
    status: int
    detail: int
    busy_ns: int
    seq: int
    reason: str
    due: float
    owner: Any = None

    def fields(self) -> dict[str, Any]:
        """The GPU_EVENT message fields."""
        return {"engine": self.engine, "kind": self.kind, "ctx_id": self.ctx_id, "tag": self.tag,
                "status": self.status, "detail": self.detail & 0xFFFF_FFFF_FFFF_FFFF, "busy_ns": self.busy_ns,
                "seq": self.seq, "reason": self.reason[:1024]}
