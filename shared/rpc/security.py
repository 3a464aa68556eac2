"""Trust on every hop: mutual TLS credentials and bearer tokens, with grpcio's own mechanisms.

* TLS: :class:`TlsFiles` (PEM paths) -> :func:`server_credentials` (with a CA, client certificates are
  *required*: ``ssl_server_credentials(require_client_auth=True)``) and :func:`channel_credentials`.
* Tokens: a UE token (``--token-file`` / ``MEG_TOKEN``) for the edge service, and a separate admin token
  (``--admin-token-file`` / ``MEG_ADMIN_TOKEN``) for the proxy's ``ChannelControl``. Servers check them with
  :class:`TokenInterceptor` (wrong or missing -> ``UNAUTHENTICATED``); clients send them as
  ``authorization: Bearer <token>`` through call credentials (TLS) or a client interceptor (plaintext).
* Plaintext without tokens stays the default (loopback development).

The health service is always open (orchestrators probe it without credentials)."""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shared.wire.headers import AUTH_HEADER

log = logging.getLogger("meg.security")
UE_TOKEN_ENV, ADMIN_TOKEN_ENV = "MEG_TOKEN", "MEG_ADMIN_TOKEN"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class SecurityConfigError(ValueError):
    """A TLS file or token that cannot be used (missing, unreadable, empty, incomplete set)."""


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not data.strip():
        raise SecurityConfigError(f"the {what} {str(path)!r} is empty")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one process: its certificate and key, and the CA it trusts for its peers."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    #: client side: the name to check the server's certificate against (default: the target's host)
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def _pair(self) -> tuple[bytes, bytes] | None:
        if bool(self.cert) != bool(self.key):
            raise SecurityConfigError("give both --tls-cert and --tls-key (or neither)")
        if not self.cert:
            return None
        return _read(self.key, "TLS key"), _read(self.cert, "TLS certificate")  # type: ignore[arg-type]


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS for a server; with ``tls.ca`` every client must present a certificate signed by it (mTLS)."""
    pair = tls._pair()
    if pair is None:
        raise SecurityConfigError("a TLS server needs --tls-cert and --tls-key")
    ca = _read(tls.ca, "TLS CA") if tls.ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """TLS for a client: trust ``tls.ca`` (default: the system roots) and present cert/key when given."""
    pair = tls._pair()
    ca = _read(tls.ca, "TLS CA") if tls.ca else None
    key, cert = pair if pair else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(tls: TlsFiles) -> list[tuple[str, Any]]:
    """Extra channel options (the certificate name override, when the target's host is not in the cert)."""
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.enabled and tls.server_name else []


def read_token(path: str | None, env: str) -> str | None:
    """A bearer token from ``path`` (stripped) or else the environment variable ``env``; None if neither."""
    if path:
        token = _read(path, "token file").decode("utf-8", "replace").strip()
    else:
        token = os.environ.get(env, "").strip()
    if token and any(c.isspace() or ord(c) < 32 for c in token):
        raise SecurityConfigError("a token must be one line without spaces")
    return token or None


def call_credentials(token: str) -> grpc.CallCredentials:
    """Per-call credentials that send ``authorization: Bearer <token>`` (TLS channels only). gRPC's built-in
    access-token credentials: no Python metadata plugin thread (such plugins can hang a CLI at exit)."""
    return grpc.access_token_call_credentials(token)


class _BearerClientInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Plaintext channels cannot carry call credentials: add the header to every call instead."""

    def __init__(self, token: str) -> None:
        self._header = (AUTH_HEADER, f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        md = [*(details.metadata or ()), self._header]
        return continuation(details._replace(metadata=md), request)


def is_loopback(target: str) -> bool:
    """Whether ``HOST:PORT`` (or a bare host) names this machine's loopback (``localhost``, 127/8, ``::1``)."""
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    host = host.strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plaintext_token(target: str, what: str = "a bearer token") -> None:
    """Log a warning (once per target) when ``what`` is about to cross a plaintext hop beyond loopback."""
    if not is_loopback(target) and target not in _WARNED:
        _WARNED.add(target)
        log.warning("sending %s to %s in plaintext: anyone on the path can read it; use --tls-ca (TLS) beyond "
                    "loopback", what, target)


_WARNED: set[str] = set()


def secure_channel(target: str, tls: TlsFiles | None = None, token: str | None = None,
                   options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A synchronous client channel: TLS (+ token as call credentials) or plaintext (+ token header; warned about
    beyond loopback)."""
    tls = tls or TlsFiles()
    opts = [*options, *channel_options(tls)]
    if tls.enabled:
        creds = channel_credentials(tls)
        if token:
            creds = grpc.composite_channel_credentials(creds, call_credentials(token))
        return grpc.secure_channel(target, creds, options=opts)
    channel = grpc.insecure_channel(target, options=opts)
    if token:
        warn_plaintext_token(target)
    return grpc.intercept_channel(channel, _BearerClientInterceptor(token)) if token else channel


def aio_channel(target: str, tls: TlsFiles | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An asyncio client channel (TLS when ``tls`` has files); tokens travel as per-call metadata."""
    tls = tls or TlsFiles()
    opts = [*options, *channel_options(tls)]
    if tls.enabled:
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=opts)
    return grpc.aio.insecure_channel(target, options=opts)


def bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The bearer token in request metadata, if any."""
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            v = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = v.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _unauthenticated(message: str) -> grpc.RpcMethodHandler:
    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(deny)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Require a bearer token per service: ``{"/meg.v1.EdgeService/": token, ...}`` (``None`` = open).

    A method whose path starts with none of the prefixes needs any of the configured tokens (reflection),
    except the health service, which is open. Tokens are compared in constant time.
    """

    def __init__(self, tokens: Mapping[str, str | Sequence[str | None] | None]) -> None:
        """``tokens``: method-path prefix -> the token (or tokens) it accepts; the first matching prefix wins."""
        self.tokens = {prefix: [t] if t is None or isinstance(t, str) else list(t) for prefix, t in tokens.items()}

    def _required(self, method: str) -> list[str] | None:
        if method.startswith(HEALTH_PREFIX):
            return None
        for prefix, accepted in self.tokens.items():
            if method.startswith(prefix):
                return [t for t in accepted if t] or None
        wanted = [t for accepted in self.tokens.values() for t in accepted if t]
        return wanted or None

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        wanted = self._required(details.method)
        if wanted is None:
            return await continuation(details)
        got = bearer(details.invocation_metadata)
        if got is None:
            return _unauthenticated(f"{details.method} needs a bearer token (authorization: Bearer ...)")
        if not any(hmac.compare_digest(got.encode(), w.encode()) for w in wanted):
            return _unauthenticated(f"the token is not valid for {details.method}")
        return await continuation(details)


def server_interceptors(tokens: Mapping[str, str | Sequence[str | None] | None]) -> list[grpc.aio.ServerInterceptor]:
    """``[TokenInterceptor]`` when any token is configured, else none."""
    configured = [t for v in tokens.values() for t in ([v] if v is None or isinstance(v, str) else v) if t]
    return [TokenInterceptor(tokens)] if configured else []


def add_tls_flags(parser: argparse.ArgumentParser, server: bool) -> None:
    """``--tls-cert/--tls-key/--tls-ca`` (and for clients ``--tls-server-name``) on a CLI command."""
    if server:
        parser.add_argument("--tls-cert", help="PEM certificate: serve TLS (with --tls-key)")
        parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
        parser.add_argument("--tls-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    else:
        parser.add_argument("--tls-ca", help="PEM CA that signed the server's certificate: connect with TLS")
        parser.add_argument("--tls-cert", help="PEM client certificate for mutual TLS (with --tls-key)")
        parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
        parser.add_argument("--tls-server-name", help="name in the server's certificate, if not the --via host")


def tls_from_args(args: argparse.Namespace) -> TlsFiles:
    return TlsFiles(getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None),
                    getattr(args, "tls_server_name", None))


def certificate_name(cert_path: str) -> str | None:
    """The name a certificate proves (the identity the channel proxy ties a UE id to): its subject's common name,
    else its first DNS subject alternative name; None if the file has neither or cannot be read.

    Reads the PEM with the standard library's decoder (``ssl``; no extra dependency)."""
    import ssl

    try:
        decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, ValueError):
        return None
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return next((str(v) for k, v in decoded.get("subjectAltName", ()) if k == "DNS" and v), None)
