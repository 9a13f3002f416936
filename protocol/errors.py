"""Error types of the wire contract.

Two families, h11-style: a :class:`DecodeError` is what a peer sent (remote fault); an
:class:`IllegalTransition` is a local state-machine misuse. Error *codes* travel in ERROR messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    """Codes carried by the ERROR message (``Error.code``). Documented in docs/PROTOCOL.md.

    The message schema names this enum directly, so a decoded ERROR carries a member; a ``StrEnum`` member
    is its value wherever it is formatted or compared (``f"{code}"`` is ``"decode"``)."""

    DECODE = "decode"  # the message did not decode (bad msgpack, wrong type/field/range, oversized)
    WIRE_VERSION = "wire_version"  # HELLO with a wire version this peer does not speak
    NOT_HELLO = "not_hello"  # a message other than HELLO from a peer that has not said HELLO
    UNEXPECTED = "unexpected"  # a valid message this role does not accept
    FORGED_ID = "forged_id"  # a message naming a VM (or vGPU) that this connection does not own
    NO_SUCH_VM = "no_such_vm"
    SLOT_BUSY = "slot_busy"  # an ioreq from a vCPU whose slot is not FREE
    BAD_ADDRESS = "bad_address"  # gfn/gpa/mfn/offset out of range
    BAD_REQUEST = "bad_request"  # well-formed but semantically invalid arguments
    NO_SPACE = "no_space"  # out of machine frames, GM, fences or vGPU ids
    NO_DEVICE_MODEL = "no_device_model"  # a vGPU was asked for and no device model is connected
    CLIENT_LOST = "client_lost"  # the ioreq client died while the request was PROCESSING
    PEER_LOST = "peer_lost"  # a peer the request depends on went away
    FAILSAFE = "failsafe"  # the vGPU is in failsafe mode
    GPU_RESET = "gpu_reset"  # the (virtual) GPU was reset under the request
    TIMEOUT = "timeout"
    BUSY = "busy"  # too many requests of this kind are waiting already (STATUS under a flood): ask again later
    INTERNAL = "internal"  # a bug: logged and counted, the service stays up


@dataclass(frozen=True)
class Refusal:
    """A request a core did not carry out: the ERROR code and the reason to answer with.

    Every sans-I/O core (vhm, gvt, pgpu, guest) returns this one type for a refusal instead of raising; the
    shell turns it into an ERROR message. ``vm``, ``vcpu`` and ``seq`` are echoed when the refused request was
    an ioreq (the guest matches the ERROR to its vCPU slot by them).
    """

    code: ErrorCode
    reason: str
    vm: int | None = None
    vcpu: int | None = None
    seq: int | None = None


class ProtocolError(Exception):
    """Base of every gvtsim protocol error."""


class DecodeError(ProtocolError):
    """A frame that is not a valid gvtsim message.

    Attributes:
        what: short class of fault: ``oversized``, ``malformed``, ``not_a_map``, ``unknown_type``,
            ``missing_field``, ``extra_field``, ``bad_field``.
        msg_type: the message type named by the frame, if it could be read.
        field: the offending field (dotted path inside the message), if any.
        detail: the human-readable reason.
    """

    def __init__(self, what: str, detail: str, msg_type: str | None = None, field: str | None = None):
        self.what = what
        self.detail = detail
        self.msg_type = msg_type
        self.field = field
        where = f" in {msg_type}" if msg_type else ""
        at = f" field {field!r}" if field else ""
        super().__init__(f"{what}{where}{at}: {detail}")


class IllegalTransition(ProtocolError):
    """An ioreq slot transition that the ACRN state machine does not allow."""

    def __init__(self, src: object, dst: object, why: str = ""):
        self.src = src
        self.dst = dst
        super().__init__(f"illegal ioreq transition {src!r} -> {dst!r}" + (f": {why}" if why else ""))
