"""gvtsim wire contract: message catalogue, codec, the ACRN ioreq slot state machine, error types.

This package is sans-I/O: no sockets, no event loop, no clocks. Services import it; so can a client
written in any language from docs/PROTOCOL.md.
"""

from .codec import decode, encode
from .constants import (
    MAX_BLOB,
    MAX_MESSAGE,
    WIRE_VERSION,
    IoreqDir,
    IoreqState,
    IoreqType,
)
from .errors import DecodeError, ErrorCode, IllegalTransition, ProtocolError
from .ioreq import IoreqSlot
from . import messages

__all__ = [
    "MAX_BLOB",
    "MAX_MESSAGE",
    "WIRE_VERSION",
    "DecodeError",
    "ErrorCode",
    "IllegalTransition",
    "IoreqDir",
    "IoreqSlot",
    "IoreqState",
    "IoreqType",
    "ProtocolError",
    "decode",
    "encode",
    "messages",
]
