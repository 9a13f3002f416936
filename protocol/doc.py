"""Generate docs/PROTOCOL.md from the message catalogue, so the document cannot drift from the code.

    python -m gvtsim.protocol.doc > docs/PROTOCOL.md

A test checks that the committed file equals this output.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence

import msgspec.inspect as mi

from . import authz
from . import messages as m
from .constants import MAX_BATCH, MAX_BLOB, MAX_IOREQ_BATCH, MAX_MESSAGE, WIRE_VERSION

# the wire names of every reply type, listed in the intro
_REPLY_TAGS = ", ".join(f"`{c.__struct_config__.tag}`" for c in m.REPLY_TYPES)

INTRO = f"""# gvtsim wire protocol (wire version {WIRE_VERSION})

This is the complete message catalogue. It is generated from `protocol/messages.py`
(`python -m gvtsim.protocol.doc > docs/PROTOCOL.md`) and a test keeps the two identical.

## Transport

* ZeroMQ over `tcp://` (or `ipc://`). Servers (vhm, gvt's management endpoint, pgpu) bind a **ROUTER**;
  clients connect a **DEALER**. One ZeroMQ message = one gvtsim message = one frame (a ROUTER additionally sees
  the peer's routing-id frame, which it strips when answering).
* Sockets refuse frames over **{MAX_MESSAGE} bytes** (`ZMQ_MAXMSGSIZE`); byte payloads inside a message are at
  most **{MAX_BLOB} bytes**; batches carry at most **{MAX_BATCH}** ioreqs (a guest's IOREQ_BATCH {MAX_IOREQ_BATCH}).
* ROUTERs set `ROUTER_MANDATORY` (an unreachable peer is an error, not a silent drop); request senders set
  `IMMEDIATE` (no queueing for a peer that is not connected); every socket has `LINGER 0`.

## Security (CURVE)

Every socket runs ZeroMQ CURVE (RFC 26) by default. The topology has one keypair per service and per client
role: `vhm`, `gvt`, `pgpu`, `guest`, `ctl`, `probe`, made by `gvtsim keys DIR` as pyzmq `zmq.auth` certificates
(z85 text): `DIR/public/NAME.key` and `DIR/private/NAME.key_secret`. A server is a CURVE server with its own
service's key; a client connects as a CURVE client with its role's key and the server's public key. Servers
run a ZAP handler (RFC 27, domain `gvtsim`) that admits only the topology's public keys: a peer without one
never completes the handshake and gets nothing back; the refusal is counted (`curve_denied`). A key may say
`HELLO` only as the roles it is bound to (`vhm`, `gvt`, `pgpu`, `guest`: their own; `ctl`: `ctl` or
`probe`; `probe`: `probe`); any other `HELLO` gets `ERROR unexpected` and is counted (`curve_role_refused`).
Every failed handshake, seen by the server's socket monitor, is counted by reason: `curve_handshake_failed`
and `curve_handshake_failed_REASON`, REASON `zmtp_cryptographic` (a client that dialled with the wrong server
key), `zmtp_mechanism_mismatch` (no CURVE at all), `auth_400` (a key the ZAP handler refused).
`--insecure` (or `GVTSIM_INSECURE=1`) turns CURVE off for debugging; every process says so in its log.

## Encoding

Every message is a **MessagePack map**. The key `"type"` holds the message name (the headings below); the other
keys are the fields listed for that message. Integers are MessagePack integers (u64 fields use the unsigned
64-bit range), `bool` is MessagePack true/false, `str` is UTF-8 text, `bytes` is MessagePack bin.
Fields with a default may be omitted (senders omit them when they equal the default). A receiver refuses a map
with an unknown key, a missing required key, a value of the wrong type or out of its range, an unknown
`"type"`, or anything that is not a single map: it answers with `ERROR` `code: "decode"` whose `reason` names
the message type, the field and what was wrong, counts it, and carries on.

Small structures travel as MessagePack **arrays** inside messages: `Extent` = `[gfn, mfn, count]` and
`Run` = `[mfn, count]`; `IoreqResult` = `[vm, vcpu, seq, value]`; `VgpuEntry` = `[vm, vgpu_id]`.

## Sessions

1. A client's first message is `HELLO {{role, id, epoch, wire}}`. `epoch` is the sender's incarnation: it
   changes every time the process restarts. The server answers `HELLO_ACK` with its own role, id and epoch;
   a client that sees a different server epoch after a reconnect knows the server restarted. A `wire` the
   server does not speak is answered with `ERROR wire_version`.
2. Anything but `HELLO` (and `STATUS`, which health probes may send directly) from a peer without a session
   is answered with `ERROR not_hello`.
3. Liveness. A dead or unreachable peer is found by the transport, not by the application: every client
   socket enables ZeroMQ's ZMTP heartbeats (`ZMQ_HEARTBEAT_IVL` 1000 ms, `ZMQ_HEARTBEAT_TIMEOUT` 3000 ms,
   `ZMQ_HEARTBEAT_TTL` 3000 ms; libzmq answers them in its I/O thread, so a peer busy in its own code still
   answers; the server drops a connection silent past the TTL the client's PINGs carry, and sends no PINGs
   itself, which would expose it to a libzmq 4.3.5 abort when a client closes a connection whose input the
   server had stopped at its high-water mark), and a disconnect reported by the socket monitor ends the
   session at once. Application
   heartbeats are only a backstop for a hung process. `HELLO_ACK` announces the two intervals the client
   must follow: **send `HEARTBEAT {{epoch}}` whenever you have sent nothing for `heartbeat_ms`** (default
   1000) and consider the server lost after `timeout_ms` (default 12000) of silence; the server does the
   same. Any message counts as a sign of life. A client written from this page needs exactly this: `HELLO`
   first, then its requests, and a `HEARTBEAT` in every idle `heartbeat_ms`. On loss the server drops the
   session (and, e.g., vhm destroys the VMs it owned); the client fails every pending call and reconnects
   with a fresh socket and a new `HELLO` (same epoch: it did not restart).
4. `BYE` ends a session on purpose.
   `STATUS` is answered with the service's figures as they are when the answer is built. Builds take at
   most 5 % of a service's time: a STATUS that comes sooner after the previous build waits for the next
   one (at most 1 s), which answers every request then waiting. Four requests of one connection may wait;
   a fifth is answered `ERROR busy` (counted as `status_busy`).
5. Device models reconcile on every session (docs/VHM.md, "Device models across reconnects"): right after
   `HELLO_ACK` a device model sends `VGPU_SYNC` with the vGPUs it holds for vhm's VMs. vhm answers
   `VGPU_SYNC_REPLY`: whether it kept the client's state (`resumed`: same id and epoch, back within vhm's
   grace period), the VMs to `keep` (the client registers their ranges, BDF and tracked pages again, which
   changes nothing if they were kept) and the vGPUs to `destroy` (their VM is gone). A VM whose vGPU the client
   no longer holds, or whose device model is lost for good, gets `VGPU_LOST`. Then vhm sends again the ioreqs
   that were PROCESSING at the client while it was away; the client answers one it had already completed with
   the same value.

## Calls and replies

A request carries `req`, a u64 the **requester** chooses (unique among its outstanding calls); the answer
echoes it. Answers are `OK`, `DATA`, `ERROR` or the specific reply named for the request. Many calls may be
in flight on one connection (pipelining). Messages that answer a request are: {_REPLY_TAGS}.
A request that arrives from the other side carries a `req` in the *sender's* id space.

ioreqs are keyed by `(vm, vcpu, seq)` instead: one outstanding ioreq per vCPU (ACRN: one slot per vCPU,
states FREE 3 -> PENDING 0 -> PROCESSING 2 -> COMPLETE 1 -> FREE; kinds PIO 0, MMIO 1, PCI 2, WP 3; dir READ 0,
WRITE 1). The answer is `IOREQ_DONE` or `ERROR` with the same three keys.

A guest whose vCPUs trap together may send their requests as one `IOREQ_BATCH` (as ACRN's Service OS takes
every pending vCPU slot on one upcall). Each entry is handled exactly as an `IOREQ` sent alone: its VM must
belong to the connection, a refusal is an `ERROR` with that entry's keys and the other entries go on; a batch
naming one vCPU twice is refused whole (one `ERROR bad_request`). At most {MAX_IOREQ_BATCH} entries. Once a
connection has sent an `IOREQ_BATCH`, vhm answers all of its requests (batched or not) with `IOREQ_DONE_BATCH`:
the completions one vhm batch produced for that connection, in one message. Refusals stay `ERROR`s.

## Error codes

| code | meaning |
|---|---|
"""

ERROR_MEANINGS = {
    "decode": "the message did not decode (bad MessagePack, unknown type, wrong/missing/extra field, range, size)",
    "wire_version": "HELLO with a wire version this peer does not speak",
    "not_hello": "a message other than HELLO/STATUS from a peer that has no session (e.g. the server restarted)",
    "unexpected": "a valid message this role does not accept",
    "forged_id": "the message names a VM (or vGPU) that the sending connection does not own",
    "no_such_vm": "no VM with that id",
    "slot_busy": "an ioreq from a vCPU whose slot is not FREE",
    "bad_address": "gfn, gpa, mfn, GGTT index or offset out of range",
    "bad_request": "well-formed but semantically invalid arguments",
    "no_space": "out of machine frames, graphics memory, fences or vGPU ids",
    "no_device_model": "a vGPU was asked for but no device model is connected",
    "client_lost": "the ioreq client died while the request was PROCESSING (the guest treats it as a GPU reset)",
    "peer_lost": "a peer the request depends on went away",
    "failsafe": "the vGPU is in failsafe mode",
    "gpu_reset": "the (virtual) GPU was reset under the request",
    "timeout": "the request could not be served in time",
    "busy": "too many requests of this kind wait already (STATUS: four per connection); ask again after the answers",
    "internal": "a bug in the answering service: it was logged and counted, and the service stays up",
}


AUTHZ_INTRO = """## Who may send what (authorisation)

Every server checks each message against this table (generated from `protocol/authz.py`) before acting on it.
A column names a receiver and lists the roles that may send the message there; `-` means nobody. A `HELLO`
with a role the server opens no session for is answered `ERROR unexpected` (and the peer has no session: what
follows gets `not_hello`). A message from a role not listed gets `ERROR unexpected`; a message naming a VM or
vGPU that belongs to another connection gets `ERROR forged_id`. Both are counted (`authz_refused`,
`authz_refused_role_<TYPE>`, `authz_refused_owner_<TYPE>` in STATUS counters). A refused answer (`OK`,
`ERROR`...) is counted and never answered. With CURVE on (the default, see Security below) the role given in
`HELLO` must also be one the peer's key is bound to.

Ownership rules: `vm_creator` - `vm` must be a VM created by this connection (VM_CREATE); `device_model` -
`vm` must have no device model yet or be served by this connection; `vgpu_creator` - if the VM has a vGPU, the
sender's role must be the one that created it (vhm for the VMs it hosts, ctl for its own); `per_entry` - each
entry of the batch is checked by the receiver (a completion must answer a request dispatched to this client,
frames freed must be frames it allocated); `reply` - an answer must match a call the receiver made; `session`
- session control; `none` - names nothing that belongs to anyone.
"""


def _type_str(t: mi.Type) -> tuple[str, str]:
    """(type, range/constraints) of a field type."""
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        if lo == 0 and hi is None:
            return "int", "0 .. 2^64-1"
        return "int", f"{lo if lo is not None else '-2^63'} .. {hi if hi is not None else '2^64-1'}"
    if isinstance(t, mi.BoolType):
        return "bool", ""
    if isinstance(t, mi.StrType):
        return "str", f"length {t.min_length or 0} .. {t.max_length}" if t.max_length else ""
    if isinstance(t, mi.BytesType):
        return "bytes", f"length {t.min_length or 0} .. {t.max_length}" if t.max_length else ""
    if isinstance(t, mi.EnumType):
        return "one of", ", ".join(repr(v.value) for v in sorted(t.cls, key=lambda e: str(e.value)))
    if isinstance(t, mi.LiteralType):
        return "one of", ", ".join(repr(v) if isinstance(v, str) else str(v) for v in t.values)
    if isinstance(t, mi.ListType):
        inner, rng = _type_str(t.item_type)
        n = f"{t.min_length or 0} .. {t.max_length} items" if t.max_length else "any length"
        return f"array of {inner}", "; ".join(x for x in (n, rng) if x)
    if isinstance(t, mi.TupleType):
        parts = [_type_str(x) for x in t.item_types]
        return "[" + ", ".join(p[0] for p in parts) + "]", "; ".join(p[1] for p in parts if p[1])
    if isinstance(t, mi.DictType):
        return f"map of {_type_str(t.key_type)[0]} to {_type_str(t.value_type)[0]}", ""
    if isinstance(t, mi.UnionType):
        parts = [_type_str(x) for x in t.types if not isinstance(x, mi.NoneType)]
        nil = any(isinstance(x, mi.NoneType) for x in t.types)
        return " or ".join(p[0] for p in parts) + (" or nil" if nil else ""), "; ".join(p[1] for p in parts if p[1])
    if isinstance(t, mi.NoneType):
        return "nil", ""
    if isinstance(t, mi.AnyType):
        return "any", ""
    if isinstance(t, mi.StructType):
        return t.cls.__name__, ""
    return type(t).__name__, ""


def _fields_table(cls: type) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    rows = ["| field | type | range | required / default |", "|---|---|---|---|"]
    if issubclass(cls, m.Message):
        rows.append(f"| `type` | str | `\"{info.tag}\"` | required |")
    for f in info.fields:
        typ, rng = _type_str(f.type)
        if f.required:
            req = "required"
        elif f.default_factory is not mi.NODEFAULT:
            req = f"default `{f.default_factory()!r}`"
        else:
            req = f"default `{f.default!r}`"
        rows.append(f"| `{f.encode_name}` | {typ} | {rng} | {req} |")
    return rows


def _section(title: str, classes: Sequence[type]) -> list[str]:
    out = [f"## {title}", ""]
    for cls in classes:
        name = cls.__struct_config__.tag if issubclass(cls, m.Message) else cls.__name__
        doc = inspect.cleandoc(cls.__doc__ or "").replace("\n", " ")
        out += [f"### `{name}`", "", doc, ""] if doc else [f"### `{name}`", ""]
        out += _fields_table(cls) + [""]
    return out


GROUPS = [
    ("Session messages (every connection)", [m.Hello, m.HelloAck, m.Heartbeat, m.Bye, m.Error, m.Ok, m.Data,
                                             m.StatusRequest, m.StatusReply]),
    ("Guest <-> vhm", [m.VmCreate, m.VmCreated, m.VmDestroy, m.VmReset, m.Ioreq, m.IoreqDone, m.IoreqBatch,
                       m.IoreqDoneBatch, m.Msi, m.VgpuLost, m.EptChanged]),
    ("ioreq client / device model (gvt) <-> vhm: dispatch and MPT services",
     [m.IoreqDispatch, m.IoreqComplete, m.IoRange, m.InterceptBdf, m.GfnToMfn, m.DmaMapGuestPage,
      m.DmaUnmapGuestPage, m.MapGfnToMfn, m.PageTrack, m.ReadGpa, m.WriteGpa, m.InjectMsi, m.AllocFrames,
      m.FramesReply, m.FreeFrames, m.AttachVgpu, m.VgpuSync, m.VgpuSyncReply, m.Dom0Ready]),
    ("vhm / ctl -> gvt: vGPU management", [m.VgpuCreate, m.VgpuCreated, m.VgpuDestroy, m.VgpuReset, m.MgmtTypes,
                                          m.MgmtTypesReply, m.MgmtList, m.MgmtListReply]),
    ("gvt <-> pgpu", [m.GgttWrite, m.GgttFill, m.GgttRead, m.GgttEntries, m.PgpuMmioRead, m.PgpuMmioWrite, m.ElspSubmit,
                      m.GpuEvent, m.EngineReset, m.WorkloadQuery, m.WorkloadStatus]),
]
STRUCTS = [m.Extent, m.Run, m.IoreqResult, m.VgpuEntry, m.VgpuTypeInfo, m.VgpuInfo, m.EndedEvent]


def render() -> str:
    """The full text of docs/PROTOCOL.md."""
    out = [INTRO.rstrip("\n")]
    out += [f"| `{code}` | {text} |" for code, text in ERROR_MEANINGS.items()] + [""]
    out += [AUTHZ_INTRO, authz.markdown(), ""]
    grouped = [c for _, cs in GROUPS for c in cs]
    rest = [c for c in m.ALL_MESSAGES if c not in grouped]
    groups = GROUPS + ([("Other messages", rest)] if rest else [])
    for title, classes in groups:
        out += _section(title, classes)
    out += _section("Embedded structures", STRUCTS)
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
