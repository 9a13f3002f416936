"""The reason a failed CURVE handshake is counted under, from the socket monitor's event (services/common/curve.py)."""

from __future__ import annotations

import zmq

from gvtsim.services.common import curve


def test_handshake_failures_are_named_by_reason() -> None:
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                    "value": zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC}) == "zmtp_cryptographic"
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                    "value": zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH}) == "zmtp_mechanism_mismatch"
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": 0x7777}) == "protocol_0x7777"
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_AUTH, "value": 400}) == "auth_400"
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, "value": 104}) == "no_detail"
    assert curve.handshake_failure({"event": zmq.EVENT_DISCONNECTED, "value": 0}) is None
    assert curve.handshake_failure({"event": zmq.EVENT_HANDSHAKE_SUCCEEDED, "value": 0}) is None
