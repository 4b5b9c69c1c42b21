"""TLS: the `ssl.SSLContext` built from the `--ssl-*` settings, and the ASGI `tls` extension.

`load_tls` builds both, at start and on every certificate reload (SIGHUP: server.py,
supervisor.py, through `reload_tls`), so a context made for a reload is made exactly as the
first one.

Flag names and meanings are uvicorn's (`--ssl-cert-reqs` is `ssl.VerifyMode` as an int, 0 none,
1 optional, 2 required; `--ssl-version` an `ssl.PROTOCOL_*` int). The cipher list defaults to
Python's own, as uvicorn 0.55's does (older uvicorn's "TLSv1" left out every TLS 1.2 AEAD
suite). The extension follows the ASGI TLS extension spec 0.2.
"""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING, Any

from aserve.errors import ConfigError

if TYPE_CHECKING:
    from aserve.config import Config

# Offered to clients in this order by ALPN: HTTP/2 first, unless it is off (`--no-http2`).
ALPN_PROTOCOLS = ["h2", "http/1.1"]
ALPN_HTTP1_ONLY = ["http/1.1"]

# `SSLObject.version()` names to the numbers TLS puts on the wire (the extension's form).
TLS_VERSIONS = {"SSLv3": 0x0300, "TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303}
TLS_VERSIONS["TLSv1.3"] = 0x0304

# RFC 4514's short names for the attribute types Python's `getpeercert()` spells out; other
# types keep Python's name.
_RFC4514_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The context to serve with: `config.ssl_context_factory`'s when given (uvicorn's
    hook, called with the config and a function building the context from the `--ssl-*`
    settings), else the one those settings make, or None when TLS is off."""
    factory = config.ssl_context_factory
    if factory is None:
        return create_ssl_context(config)

    def default_factory() -> ssl.SSLContext:
        context = create_ssl_context(config)
        if context is None:
            raise ConfigError(
                "ssl_context_factory called the default factory, which needs ssl_certfile"
            )
        return context

    context = factory(config, default_factory)
    if not isinstance(context, ssl.SSLContext):
        raise ConfigError(
            f"ssl_context_factory must return an ssl.SSLContext, got {type(context).__name__}"
        )
    return context


def create_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server's context, or None when TLS is off (no `ssl_certfile`).

    Every problem is a ConfigError naming the setting: a missing file, a file with no valid
    certificate or key, a key that does not match, an encrypted key without its password or
    with a wrong one, an unknown cipher string.
    """
    certfile = config.ssl_certfile
    if certfile is None:
        for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs"):
            if getattr(config, name) is not None:
                raise ConfigError(f"{name} is given but TLS is off: give ssl_certfile too")
        if config.ssl_cert_reqs != ssl.CERT_NONE:
            raise ConfigError("ssl_cert_reqs is given but TLS is off: give ssl_certfile too")
        return None
    if config.ssl_cert_reqs not in (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED):
        raise ConfigError(
            f"ssl_cert_reqs must be 0 (none), 1 (optional) or 2 (required), "
            f"got {config.ssl_cert_reqs!r}"
        )
    if config.ssl_cert_reqs != ssl.CERT_NONE and config.ssl_ca_certs is None:
        raise ConfigError(
            "ssl_cert_reqs asks for client certificates: give ssl_ca_certs to verify them with"
        )
    try:
        context = ssl.SSLContext(config.ssl_version)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"ssl_version {config.ssl_version!r} is not usable: {exc}") from None
    _load_certificate(context, str(certfile), _optional_str(config.ssl_keyfile), config)
    context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ca_certs is not None:
        try:
            context.load_verify_locations(str(config.ssl_ca_certs))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"ssl_ca_certs: cannot load {str(config.ssl_ca_certs)!r}: {reason}"
            ) from None
    if config.ssl_ciphers:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"ssl_ciphers: {config.ssl_ciphers!r} selects no cipher OpenSSL knows"
            ) from None
    context.set_alpn_protocols(ALPN_PROTOCOLS if config.http2 else ALPN_HTTP1_ONLY)
    return context


def load_tls(config: Config) -> TLSInfo | None:
    """The context (`server_ssl_context`: `ssl_context_factory`'s, or the `--ssl-*` files')
    and the `tls` extension's per-server part, made now; None when TLS is off. Raises
    ConfigError naming the problem (see `create_ssl_context`)."""
    context = server_ssl_context(config)
    if context is None:
        return None
    return TLSInfo(context, config.ssl_certfile)


def reload_tls(config: Config) -> TLSInfo:
    """`load_tls` again, for a certificate reload (SIGHUP) of a server that serves TLS.

    Every failure is a ConfigError, for the one error line that keeps the certificate in
    use: an embedder's `ssl_context_factory` may raise anything (a renewal half-copied makes
    its own `load_cert_chain` raise FileNotFoundError or SSLError), and a running server must
    not stop on that.
    """
    try:
        tls = load_tls(config)
    except ConfigError:
        raise
    except Exception as exc:
        source = "ssl_context_factory" if config.ssl_context_factory is not None else "TLS"
        raise ConfigError(f"{source} raised {type(exc).__name__}: {exc}") from None
    if tls is None:  # a factory cannot turn TLS off: only ssl_certfile's absence does
        raise ConfigError("ssl_certfile is not set")
    return tls


def _load_certificate(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, config: Config
) -> None:
    """The certificate chain and its key, each problem named.

    OpenSSL says "PEM lib" for a damaged certificate, a damaged key and a wrong password
    alike, without naming the file: the certificates are parsed on their own first, and the
    password callback tells whether the key is encrypted.
    """
    for setting, path in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{setting}: cannot read {path!r}: {exc.strerror}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(certfile)
    except ssl.SSLError:
        raise ConfigError(f"ssl_certfile: no valid PEM certificate in {certfile!r}") from None
    where = keyfile or certfile
    password = config.ssl_keyfile_password
    encrypted = False

    def give_password() -> Any:
        nonlocal encrypted
        encrypted = True
        if password is None:  # never OpenSSL's prompt on the terminal: a server reads none
            raise ConfigError(
                f"the private key in {where!r} is encrypted: give ssl_keyfile_password"
            )
        return password

    try:
        context.load_cert_chain(certfile, keyfile, give_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"the private key in {where!r} does not match the certificate in {certfile!r}"
            ) from None
        if encrypted:
            raise ConfigError(
                f"wrong ssl_keyfile_password: cannot decrypt the private key in {where!r}"
            ) from None
        missing = "" if keyfile is not None else " (give it as ssl_keyfile)"
        raise ConfigError(f"no valid PEM private key in {where!r}{missing}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename or where!r}: {exc.strerror}") from None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class TLSInfo:
    """A server's TLS context, and the ASGI `tls` extension: what is the same for every
    connection is computed here once, the rest once per connection (`extension`), never per
    request.

    After a certificate reload, `previous` is the info of the context it replaced: a
    handshake begun before the reload ends on that context, and its connection reports that
    certificate.
    """

    __slots__ = ("_cipher_ids", "context", "previous", "server_cert")

    def __init__(self, context: ssl.SSLContext, certfile: str | None) -> None:
        self.context = context
        self.previous: TLSInfo | None = None
        # The cipher suites' IANA numbers: OpenSSL's ids carry them in their low 16 bits.
        self._cipher_ids = {
            cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()
        }
        self.server_cert = _first_certificate(certfile)

    def replacing(self, current: TLSInfo | None) -> TLSInfo:
        """This info, taking over from `current` (kept for handshakes under way); one level
        only, so reloads do not pile contexts up."""
        if current is not None:
            current.previous = None
        self.previous = current
        return self

    def extension(self, ssl_object: Any) -> dict[str, Any]:
        """The `tls` extension's value for one connection (`ssl_object`: its SSLObject)."""
        info = self
        if ssl_object.context is not self.context and self.previous is not None:
            info = self.previous
        chain = _client_chain(ssl_object)
        cipher = ssl_object.cipher()
        return {
            "server_cert": info.server_cert,
            "client_cert_chain": chain,
            "client_cert_name": _subject_name(ssl_object.getpeercert()) if chain else None,
            # Python's ssl refuses a certificate it cannot verify during the handshake, so a
            # connection that got this far never has a verification error to report.
            "client_cert_error": None,
            "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
            "cipher_suite": info._cipher_ids.get(cipher[0]) if cipher else None,
        }


def _first_certificate(certfile: str | None) -> str | None:
    """The server's own certificate (the first in the file), PEM-encoded."""
    if certfile is None:
        return None
    try:
        with open(certfile, encoding="ascii", errors="replace") as file:
            match = _PEM_CERTIFICATE.search(file.read())
    except OSError:
        return None
    return match.group(0).replace("\r\n", "\n") + "\n" if match else None


def _client_chain(ssl_object: Any) -> list[str]:
    """The client's certificate first, then the chain that signs it, PEM-encoded.

    Python 3.13+ gives the chain as verified (up to the CA that --ssl-ca-certs trusts);
    before, only the client's own certificate is available.
    """
    get_chain = getattr(ssl_object, "get_verified_chain", None)
    if get_chain is not None:
        chain = get_chain() or []
    else:
        leaf = ssl_object.getpeercert(binary_form=True)
        chain = [leaf] if leaf else []
    return [ssl.DER_cert_to_PEM_cert(bytes(der)) for der in chain]


def _subject_name(certificate: dict[str, Any] | None) -> str | None:
    """The certificate's subject as an RFC 4514 string ("CN=client,O=Example,C=FR")."""
    if not certificate or "subject" not in certificate:
        return None
    rdns = [
        "+".join(f"{_RFC4514_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in certificate["subject"]
    ]
    return ",".join(reversed(rdns))  # RFC 4514 writes the most specific part first


def _escape(value: str) -> str:
    escaped = "".join("\\" + char if char in '"+,;<>\\' else char for char in value)
    escaped = escaped.replace("\0", "\\00")
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped
