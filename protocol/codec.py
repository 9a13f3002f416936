"""The one codec: MessagePack via msgspec, validated against the schemas in messages.py.

All validation happens here, generically: msgspec checks the tag, every field's type and ``Meta`` bounds,
required and unknown keys. What msgspec reports is turned into a :class:`DecodeError` that names the
message type and the field, so an ERROR reply can tell the sender exactly what was wrong.
"""

from __future__ import annotations

import re
from typing import cast

import msgpack
import msgspec

from .constants import MAX_MESSAGE
from .errors import DecodeError
from .messages import BY_TAG, AnyMessage, Message

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)

_AT = re.compile(r"- at `\$(?P<path>[^`]*)`")
_FIELD = re.compile(r"field `(?P<name>[^`]+)`")


def encode(msg: Message) -> bytes:
    """Encode one message to the bytes of one ZeroMQ frame."""
    return _encoder.encode(msg)


def _peek_type(data: bytes) -> str | None:
    """Best effort: the ``type`` key of a frame that failed to decode, for the error report.

    Uses plain msgpack: for one-shot unpackb every length limit defaults to the frame length, so a hostile
    length prefix cannot allocate more than the frame.
    """
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        return None
    if isinstance(obj, dict):
        t = obj.get("type")
        if isinstance(t, str):
            return t[:64]
    return None


def _classify(err: Exception, data: bytes) -> DecodeError:
    text = str(err)
    msg_type = _peek_type(data)
    if isinstance(err, msgspec.ValidationError):
        m = _AT.search(text)
        path = m.group("path").lstrip(".") if m else ""
        f = _FIELD.search(text)
        if "unknown field" in text:
            return DecodeError("extra_field", text, msg_type, f.group("name") if f else None)
        if "missing required field" in text:
            name = f.group("name") if f else None
            if name == "type":
                return DecodeError("unknown_type", "the map has no 'type' key", None, "type")
            return DecodeError("missing_field", text, msg_type, name)
        if path == "type" or (path == "" and "Invalid value" in text):
            return DecodeError("unknown_type", text, msg_type, "type")
        if path == "" and text.startswith("Expected `object`"):
            return DecodeError("not_a_map", text, msg_type)
        return DecodeError("bad_field", text, msg_type if msg_type in BY_TAG else None, path or None)
    return DecodeError("malformed", text, msg_type)


def decode(data: bytes | memoryview) -> Message:
    """Decode and validate one frame.

    Raises:
        DecodeError: for anything that is not exactly one valid message (never another exception).
    """
    if len(data) > MAX_MESSAGE:
        raise DecodeError("oversized", f"{len(data)} bytes > {MAX_MESSAGE}")
    try:
        return cast(Message, _decoder.decode(data))
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise _classify(err, bytes(data)) from None
    except Exception as err:  # msgspec is strict, but never let anything else escape a decode
        raise DecodeError("malformed", f"{type(err).__name__}: {err}") from None

