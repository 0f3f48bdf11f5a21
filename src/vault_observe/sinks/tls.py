"""TLS settings of a network sink: the CA bundle it trusts and its client certificate."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from ..errors import ConfigError

if TYPE_CHECKING:
    import ssl

# ``ssl`` is imported where it is used: it costs ~10 ms at start-up, and a daemon with
# only plain-http or stdout sinks (every sink's settings come through here) never needs it.

_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = "PRIVATE KEY-----"  # PKCS#8, RSA, EC and ENCRYPTED keys alike


_NO_SETTINGS: Mapping[str, str] = MappingProxyType({})


# A named tuple, not a frozen dataclass: as immutable, and every start (the factory
# imports this module) makes it in a fraction of the dataclass's ~1 ms.


class TlsOptions(NamedTuple):
    """Where a sink's HTTPS connections find their trust and identity.

    ``ca_file``: a PEM bundle of the CAs to trust instead of the system's.
    ``cert_file``/``key_file``: the client certificate and its key (mutual TLS); the key
    may be in the certificate's file.
    ``settings``: the setting that gave each field (a Config field such as
    ``zipkin_ca_file``, or a variable such as ``OTEL_EXPORTER_OTLP_CERTIFICATE``),
    which an error names; a field left out is named as the field.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    settings: Mapping[str, str] = _NO_SETTINGS

    def __bool__(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a urllib3 pool manager (``PoolManager``/``ProxyManager``)."""
        kwargs: dict[str, Any] = {}
        if self.ca_file:
            kwargs["ca_certs"] = self.ca_file
        if self.cert_file:
            kwargs["cert_file"] = self.cert_file
        if self.key_file:
            kwargs["key_file"] = self.key_file
        return kwargs

    def requests_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for each call of a ``requests`` session. Given per request,
        not set on the session: requests lets ``REQUESTS_CA_BUNDLE`` and
        ``CURL_CA_BUNDLE`` override a session's ``verify``, never a request's."""
        kwargs: dict[str, Any] = {}
        if self.ca_file:
            kwargs["verify"] = self.ca_file
        if self.cert_file:
            kwargs["cert"] = (self.cert_file, self.key_file) if self.key_file else self.cert_file
        return kwargs

    def check(self) -> None:
        """Refuse files a connection could not use, before the first one fails: a
        ConfigError naming the setting and its value. The files are loaded into an
        ``ssl.SSLContext`` as a connection would load them."""
        if not self:
            return  # nothing to load: a first SSLContext costs ~2 ms at start-up
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file:
            text = self._read("ca_file")
            if _CERTIFICATE not in text:
                self._refuse("ca_file", "not a PEM file of CA certificates (no BEGIN CERTIFICATE line)")
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as exc:
                self._refuse("ca_file", f"not a usable PEM bundle of CA certificates: {_reason(exc)}")
        if self.key_file and not self.cert_file:
            self._refuse("key_file", "a client key needs its client certificate too")
        if not self.cert_file:
            return
        if _CERTIFICATE not in self._read("cert_file"):
            self._refuse("cert_file", "not a PEM certificate (no BEGIN CERTIFICATE line)")
        key_setting = "key_file" if self.key_file else "cert_file"
        if _PRIVATE_KEY not in self._read(key_setting):
            if self.key_file:
                self._refuse("key_file", "not a PEM private key (no BEGIN ... PRIVATE KEY line)")
            self._refuse("cert_file", "no private key in this file, and no client key given")

        def no_password() -> NoReturn:  # never let OpenSSL prompt on the terminal
            self._refuse(key_setting, "the private key is encrypted; give an unencrypted key")

        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=no_password)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                self._refuse(key_setting, "the private key does not match the client certificate")
            self._refuse(key_setting, f"cannot load the client certificate and key: {_reason(exc)}")

    def describe_failure(self, exc: BaseException) -> str | None:
        """A failed HTTPS exchange in words an operator can act on (the settings to
        look at), or None when ``exc`` is no TLS error."""
        import ssl

        tls_error = _ssl_error(exc)
        if tls_error is None:
            return None
        reason = tls_error.strerror or str(tls_error)
        if isinstance(tls_error, ssl.SSLCertVerificationError):
            trusted = f"{self._label('ca_file')} {self.ca_file}" if self.ca_file else "the system's CA store"
            return f"TLS: the receiver's certificate was refused (checked against {trusted}): {tls_error}"
        if not self.cert_file:
            return (
                f"TLS: the receiver ended the connection ({reason}); if it requires a client "
                f"certificate, give one with {self._label('cert_file')}"
            )
        return f"TLS: {tls_error} (the client certificate {self.cert_file} was offered)"

    def _label(self, name: str) -> str:
        setting = self.settings.get(name, name)
        return setting if setting.isupper() else "--" + setting.replace("_", "-")

    def _read(self, name: str) -> str:
        path = getattr(self, name)
        try:
            with open(path, "rb") as fh:
                return fh.read().decode("ascii", "replace")
        except OSError as exc:
            self._refuse(name, f"cannot read it: {exc.strerror or exc}")

    def _refuse(self, name: str, reason: str) -> NoReturn:
        raise ConfigError(reason, setting=self.settings.get(name, name), value=getattr(self, name))


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``exc``: itself, or what HTTP libraries wrapped in it
    (requests wraps urllib3's errors, which wrap the ``ssl`` one)."""
    import ssl

    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 16:
        candidate = todo.pop(0)
        if not isinstance(candidate, BaseException) or id(candidate) in seen:
            continue
        if isinstance(candidate, ssl.SSLError):
            return candidate
        seen.add(id(candidate))
        todo += [*candidate.args, getattr(candidate, "reason", None), candidate.__cause__, candidate.__context__]
    return None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)
