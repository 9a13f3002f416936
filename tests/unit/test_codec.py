"""The wire codec: every message round-trips; every kind of bad frame is a typed DecodeError."""

from __future__ import annotations

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvtsim.protocol import MAX_MESSAGE, DecodeError, decode, encode
from gvtsim.protocol import messages as m
from support.strategies import bad_value_for, for_struct

ANY_MESSAGE = st.one_of(*(for_struct(cls) for cls in m.ALL_MESSAGES))
raw = msgspec.msgpack.encode


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.__struct_config__.tag)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(cls, data):
    msg = data.draw(for_struct(cls))
    wire = encode(msg)
    assert decode(wire) == msg
    assert msgspec.msgpack.decode(wire)["type"] == cls.__struct_config__.tag  # a map keyed by "type"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_give_decode_error_only(blob):
    try:
        decode(blob)
    except DecodeError:
        pass  # the only acceptable failure


@settings(max_examples=200, deadline=None)
@given(msg=ANY_MESSAGE, data=st.data())
def test_truncated_messages_are_decode_errors(msg, data):
    wire = encode(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        decode(wire[:cut])


def _as_map(msg: m.Message) -> dict:
    """A valid message as the plain map that travels on the wire."""
    return msgspec.msgpack.decode(encode(msg))


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.__struct_config__.tag)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_wrong_types_and_out_of_range_values_name_the_field(cls, data):
    info = mi.type_info(cls)
    base = _as_map(data.draw(for_struct(cls)))
    checked = 0
    for f in info.fields:
        for bad in bad_value_for(f.type):
            frame = raw({**base, f.encode_name: bad})
            with pytest.raises(DecodeError) as exc:
                decode(frame)
            assert exc.value.what == "bad_field", exc.value
            assert exc.value.field is not None and exc.value.field.split("[")[0] == f.encode_name
            assert exc.value.msg_type == cls.__struct_config__.tag
            checked += 1
    assert checked > 0 or not info.fields


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.__struct_config__.tag)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_extra_and_missing_fields(cls, data):
    base = _as_map(data.draw(for_struct(cls)))
    with pytest.raises(DecodeError) as exc:
        decode(raw({**base, "surplus": 1}))
    assert exc.value.what == "extra_field" and exc.value.field == "surplus"
    required = [f.encode_name for f in mi.type_info(cls).fields if f.required]
    for name in required:
        partial = {k: v for k, v in base.items() if k != name}
        with pytest.raises(DecodeError) as exc:
            decode(raw(partial))
        assert exc.value.what == "missing_field" and exc.value.field == name


@pytest.mark.parametrize("frame", [
    raw({"type": "NO_SUCH_MESSAGE", "req": 1}),
    raw({"req": 1}),
    raw({"type": 7}),
])
def test_unknown_type(frame):
    with pytest.raises(DecodeError) as exc:
        decode(frame)
    assert exc.value.what in ("unknown_type", "bad_field") and exc.value.field == "type"


@pytest.mark.parametrize("frame", [raw([1, 2, 3]), raw(5), raw("IOREQ"), raw(None)])
def test_not_a_map(frame):
    with pytest.raises(DecodeError) as exc:
        decode(frame)
    assert exc.value.what == "not_a_map"


def test_oversized_frame_is_refused_before_parsing():
    with pytest.raises(DecodeError) as exc:
        decode(b"\x00" * (MAX_MESSAGE + 1))
    assert exc.value.what == "oversized"


def test_oversized_field_names_the_field():
    frame = raw({"type": "WRITE_GPA", "req": 1, "vm": 1, "gpa": 0, "data": b"x" * (256 * 1024 + 1)})
    with pytest.raises(DecodeError) as exc:
        decode(frame)
    assert exc.value.field == "data" and exc.value.msg_type == "WRITE_GPA"


def test_an_ioreq_batch_over_its_bound_names_the_field():
    """IOREQ_BATCH carries at most MAX_IOREQ_BATCH entries: each may draw an ERROR, so one message's worth
    of answers stays bounded (a longer one is a decode error, answered once)."""
    from gvtsim.protocol.constants import MAX_IOREQ_BATCH

    req = {"vm": 1, "vcpu": 0, "seq": 1, "kind": 1, "dir": 0, "addr": 0, "size": 4}
    ok = decode(raw({"type": "IOREQ_BATCH", "reqs": [dict(req, seq=i + 1) for i in range(MAX_IOREQ_BATCH)]}))
    assert isinstance(ok, m.IoreqBatch) and len(ok.reqs) == MAX_IOREQ_BATCH
    with pytest.raises(DecodeError) as exc:
        decode(raw({"type": "IOREQ_BATCH", "reqs": [dict(req, seq=i + 1) for i in range(MAX_IOREQ_BATCH + 1)]}))
    assert exc.value.field == "reqs" and exc.value.msg_type == "IOREQ_BATCH"


def test_every_tag_is_unique_and_catalogued():
    tags = [c.__struct_config__.tag for c in m.ALL_MESSAGES]
    assert len(tags) == len(set(tags))
    declared = {v for v in vars(m).values()
                if isinstance(v, type) and issubclass(v, m.Message) and v is not m.Message}
    assert declared == set(m.ALL_MESSAGES), "a message class is missing from ALL_MESSAGES"


def test_error_code_is_the_errorcode_enum_on_the_wire_and_after_decode():
    """ERROR.code is typed by ErrorCode itself: a decoded ERROR carries a member, its wire form is the plain
    string, and a code outside the enum is a decode error naming the field."""
    from gvtsim.protocol import ErrorCode

    got = decode(encode(m.Error(code=ErrorCode.SLOT_BUSY, reason="busy", vm=1, vcpu=0, seq=9)))
    assert isinstance(got, m.Error) and got.code is ErrorCode.SLOT_BUSY
    assert f"{got.code}" == "slot_busy"
    assert msgspec.msgpack.decode(encode(got))["code"] == "slot_busy"
    with pytest.raises(DecodeError) as err:
        decode(raw({"type": "ERROR", "code": "no_such_code", "reason": "x"}))
    assert err.value.field == "code"
