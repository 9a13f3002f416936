"""ZeroMQ CURVE on every socket: the topology's keys, the ZAP authenticator, and which roles a key may claim.

The topology has one CURVE keypair per service and per client role (:data:`KEY_NAMES`), made by
``gvtsim keys DIR`` (``gvtsim up`` and the compose topology's ``keygen`` service run it) as pyzmq
``zmq.auth`` certificates: ``DIR/public/NAME.key`` (every process reads these) and
``DIR/private/NAME.key_secret`` (the process playing NAME reads its own).

* A server socket (ROUTER) is a CURVE server with its service's key; a ZAP authenticator (RFC 27, run by
  pyzmq's ``ThreadAuthenticator`` in its own thread, so a busy event loop never stalls a handshake) admits
  only the topology's public keys and names the peer by its key (the ZAP User-Id). A peer without a
  topology key never completes the handshake: it gets nothing back, and the refusal is counted
  (``curve_denied``). A peer that fails the handshake before ZAP is asked (it dialled with the wrong server
  key, so its HELLO does not decrypt; or it speaks no CURVE at all) is seen by the server's socket monitor
  and counted by reason: ``curve_handshake_failed`` and ``curve_handshake_failed_REASON``
  (:func:`handshake_failure`).
* A client socket (DEALER) is a CURVE client with its role's key and the server's public key.
* After the handshake the session layer checks that the role claimed in HELLO is one the key is bound to
  (:data:`KEY_ROLES`): a guest key cannot HELLO as ``ctl`` or ``gvt``.

``--insecure`` / ``GVTSIM_INSECURE=1`` turns all of this off for debugging and says so loudly in the log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

#: One keypair per service (server side, and gvt's client side) and per client role.
KEY_NAMES: tuple[str, ...] = ("vhm", "gvt", "pgpu", "guest", "ctl", "probe")
#: The roles each key may say HELLO as. ``ctl`` may also probe (``gvtsim status`` with the operator's key).
KEY_ROLES: dict[str, frozenset[str]] = {
    "vhm": frozenset({"vhm"}), "gvt": frozenset({"gvt"}), "pgpu": frozenset({"pgpu"}),
    "guest": frozenset({"guest"}), "ctl": frozenset({"ctl", "probe"}), "probe": frozenset({"probe"}),
}
ZAP_DOMAIN = "gvtsim"
ENV_KEYS = "GVTSIM_KEYS"
ENV_INSECURE = "GVTSIM_INSECURE"


class CurveError(RuntimeError):
    """The keys are missing or unreadable (the message says what to run)."""


def default_keys_dir() -> str:
    """``$GVTSIM_KEYS``, else the native launcher's keys (``$GVTSIM_RUN_DIR/keys`` or ``.gvtsim/run/keys``)."""
    if os.environ.get(ENV_KEYS):
        return os.environ[ENV_KEYS]
    run_dir = os.environ.get("GVTSIM_RUN_DIR", os.path.join(os.getcwd(), ".gvtsim", "run"))
    return os.path.join(run_dir, "keys")


def insecure_from_env() -> bool:
    """Whether ``GVTSIM_INSECURE`` asks for CURVE off."""
    return os.environ.get(ENV_INSECURE, "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------- key files
def generate(keys_dir: str, overwrite: bool = False) -> list[str]:
    """Make the topology's keypairs in ``keys_dir`` (existing ones are kept unless ``overwrite``).
    Returns the names created. Private keys are readable by the owner only."""
    pub, priv = os.path.join(keys_dir, "public"), os.path.join(keys_dir, "private")
    os.makedirs(pub, exist_ok=True)
    os.makedirs(priv, mode=0o700, exist_ok=True)
    made = []
    for name in KEY_NAMES:
        if not overwrite and os.path.exists(os.path.join(priv, f"{name}.key_secret")):
            continue
        tmp = tempfile.mkdtemp(dir=keys_dir)
        try:
            public_file, secret_file = zmq.auth.create_certificates(tmp, name, metadata={"roles": " ".join(
                sorted(KEY_ROLES[name]))})
            os.chmod(secret_file, 0o600)
            os.replace(secret_file, os.path.join(priv, f"{name}.key_secret"))
            os.replace(public_file, os.path.join(pub, f"{name}.key"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        made.append(name)
    return made


@dataclass
class Keys:
    """The topology's public keys, and secret keys loaded on demand."""

    keys_dir: str
    public: dict[str, bytes] = field(default_factory=dict)  # name -> z85 public key
    _secret: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def load(cls, keys_dir: str) -> "Keys":
        """Read every public key; raises CurveError with what to do when there are none."""
        pub = os.path.join(keys_dir, "public")
        keys = cls(keys_dir)
        for name in KEY_NAMES:
            path = os.path.join(pub, f"{name}.key")
            if os.path.exists(path):
                keys.public[name] = zmq.auth.load_certificate(path)[0]
        if not keys.public:
            raise CurveError(f"no CURVE keys in {keys_dir}: run `gvtsim keys {keys_dir}` (gvtsim up does it), "
                             f"point {ENV_KEYS} at the topology's keys, or use --insecure for debugging")
        return keys

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) of key ``name``; raises CurveError if this process cannot read it."""
        if name not in self._secret:
            path = os.path.join(self.keys_dir, "private", f"{name}.key_secret")
            try:
                public, secret = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as err:
                raise CurveError(f"cannot read the {name} secret key {path}: {err}") from None
            if secret is None:
                raise CurveError(f"{path} holds no secret key")
            self._secret[name] = (public, secret)
        return self._secret[name]

    def server_public(self, name: str) -> bytes:
        """The public key of server ``name``."""
        try:
            return self.public[name]
        except KeyError:
            raise CurveError(f"no public key for {name} in {self.keys_dir}/public") from None

    def name_of(self, public_key: bytes) -> str | None:
        """The key name of a raw 32-byte public key, or None if it is not the topology's."""
        z = z85.encode(public_key)
        return next((n for n, k in self.public.items() if k == z), None)


# ------------------------------------------------------------------------------------ process settings
@dataclass
class Settings:
    insecure: bool = False
    keys_dir: str = ""
    keys: Keys | None = None
    log: Any = None
    warned: bool = False


_settings = Settings()


def configure(keys_dir: str | None = None, insecure: bool | None = None, log: Any = None) -> Settings:
    """Set this process's CURVE settings (services call it with their flags; tools with defaults).
    With ``insecure``, logs a loud warning once."""
    global _settings
    ins = insecure_from_env() if insecure is None else insecure
    _settings = Settings(insecure=ins, keys_dir=keys_dir or default_keys_dir(), log=log)
    if ins:
        _loud_insecure()
    return _settings


def settings() -> Settings:
    """The current settings (configured from the environment on first use)."""
    if not _settings.keys_dir:
        configure()
    return _settings


def _loud_insecure() -> None:
    s = _settings
    if s.warned:
        return
    s.warned = True
    text = ("CURVE IS OFF (--insecure / GVTSIM_INSECURE): every socket is unauthenticated and unencrypted, any "
            "local process may connect and claim any role. For debugging only.")
    if s.log is not None:
        s.log.warning("insecure", detail=text)
    else:
        import sys

        print(f"WARNING: {text}", file=sys.stderr, flush=True)


def keys() -> Keys:
    """The topology's keys (loaded on first use)."""
    s = settings()
    if s.keys is None:
        s.keys = Keys.load(s.keys_dir)
    return s.keys


def enabled() -> bool:
    """Whether CURVE is on in this process."""
    return not settings().insecure


def key_for_role(role: str) -> str:
    """The key a client of ``role`` uses (its own)."""
    return role if role in KEY_NAMES else "probe"


# --------------------------------------------------------------------------------------------- sockets
def secure_client(sock: zmq.Socket, role: str, server: str, key: str | None = None) -> None:
    """Make ``sock`` (before connect) a CURVE client of server ``server`` with ``role``'s key (or ``key``)."""
    if not enabled():
        return
    k = keys()
    public, secret = k.pair(key or key_for_role(role))
    sock.setsockopt(zmq.CURVE_SERVERKEY, k.server_public(server))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


class _Zap(ThreadAuthenticator):
    """Admits the topology's keys, names the peer by its key, counts every refusal."""

    def __init__(self, ctx: zmq.Context, topology: Keys, counters: Counter[str], log: Any) -> None:
        super().__init__(ctx)
        self.topology = topology
        self.counters = counters
        self.structlog = log
        self.users = 0

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.topology.name_of(client_public_key) or "unknown"

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.counters["curve_denied"] += 1
            if self.structlog is not None and self.counters["curve_denied"] <= 100:
                self.structlog.warning("curve_denied", reason=status_text.decode(errors="replace"))
        else:
            self.counters["curve_admitted"] += 1
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


_zaps: dict[int, _Zap] = {}


def secure_server(sock: zmq.Socket, role: str, counters: Counter[str], log: Any = None) -> None:
    """Make ``sock`` (before bind) a CURVE server with ``role``'s key, authenticated by the context's ZAP
    handler (started on first use, admitting only the topology's public keys)."""
    if not enabled():
        if log is not None:
            _settings.log = _settings.log or log
            _loud_insecure()
        return
    k = keys()
    public, secret = k.pair(role)
    ctx = sock.context
    zap = _zaps.get(id(ctx))
    if zap is None:
        zap = _Zap(zmq.Context.shadow(ctx.underlying), k, counters, log)
        zap.start()
        zap.configure_curve(domain=ZAP_DOMAIN, location=os.path.join(k.keys_dir, "public"))
        _zaps[id(ctx)] = zap
    zap.users += 1
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def release_server(sock: zmq.Socket) -> None:
    """A server socket closed: stop its context's ZAP thread when no server socket needs it any more."""
    zap = _zaps.get(id(sock.context))
    if zap is None:
        return
    zap.users -= 1
    if zap.users <= 0:
        zap.stop()
        del _zaps[id(sock.context)]


def peer_key(frame: Any) -> str | None:
    """The key name the ZAP handler gave the peer that sent ``frame`` (a zmq.Frame), None without CURVE."""
    if not enabled():
        return None
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None


#: the socket monitor events of a failed handshake (libzmq zmq_socket_monitor: HANDSHAKE_FAILED_*)
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_PROTOCOL_ERRORS = {getattr(zmq, n): n.removeprefix("PROTOCOL_ERROR_").lower()
                    for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


def handshake_failure(event: Mapping[str, Any]) -> str | None:
    """The reason of a failed handshake from a socket monitor event (None for any other event).

    libzmq reports HANDSHAKE_FAILED_PROTOCOL with a ZMTP protocol error as its value: a client with the wrong
    server key is ``zmtp_cryptographic`` (the server cannot open its HELLO box), a plain client at a CURVE
    server ``zmtp_mechanism_mismatch``; HANDSHAKE_FAILED_AUTH carries the ZAP status code (``auth_400``:
    the key is not the topology's); HANDSHAKE_FAILED_NO_DETAIL an errno (``no_detail``)."""
    kind, value = event.get("event"), event.get("value", 0)
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_ERRORS.get(value, f"protocol_{value:#x}")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"auth_{value}"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "no_detail"
    return None


def may_claim(key_name: str | None, role: str) -> bool:
    """Whether a peer authenticated with key ``key_name`` may say HELLO as ``role`` (always, without CURVE)."""
    if not enabled():
        return True
    return key_name is not None and role in KEY_ROLES.get(key_name, frozenset())
