"""The delivery path under every network sink: encode -> compress -> post -> retry ->
count -> log, in the shape of the OpenTelemetry Collector's exporter helper.

A sink supplies two hooks: ``encode`` (a batch of spans to a body, through an
``EncodeGuard`` so that a span that cannot be encoded costs only itself) and
``read_reply`` (what an accepted request's answer says about its items: Honeycomb's
per-event statuses, OTLP's ``partialSuccess``; Zipkin's answers say nothing). The
rest is written once here:

* one retry policy, the OTLP specification's: 429, 502, 503 and 504 and connection
  errors are retried with capped exponential backoff and jitter, or after the
  server's ``Retry-After`` (seconds or an HTTP date), until the send's deadline; any
  other answer is final;
* one set of counters (``sent``, ``failed``, ``unencodable``, ``retries``,
  ``batches``: request bodies posted, ``bytes``: bytes on the wire, retries included);
* one rate-limited failure log that masks every secret (API keys, header values).

HTTP is urllib3: each sender thread has its own keep-alive pool, so a sink with two
senders posts twice at once; proxies come from the environment (``HTTPS_PROXY``,
``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, either case), http:// or https:// ones;
``tls`` gives the CA bundle and client certificate. urllib3 is imported by ``start``.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from .. import __version__
from ..errors import ConfigError
from ..model import SpanRecord
from ..ratelog import RateLimitedLog
from .base import Counters
from .compression import Compressor
from .isolate import EncodeGuard

if TYPE_CHECKING:
    from urllib3 import PoolManager

    from .tls import TlsOptions

USER_AGENT = f"vault-observe/{__version__}"

# The OTLP specification's retryable answers (OTLP/HTTP "Retryable Response Codes").
RETRYABLE_STATUSES = frozenset((429, 502, 503, 504))


def is_retryable(status: int) -> bool:
    """429, 502, 503 and 504 are worth another try; other answers are final."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter (so that senders that failed together
    do not retry in step): the delay before retry ``n + 1`` is
    ``min(maximum, initial * multiplier ** n)``, shortened by up to ``jitter`` of it."""

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


# ---------------------------------------------------------------- HTTP


@dataclass
class Reply:
    """An HTTP answer; ``status`` 0 when none came (``error`` says why)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] | None = None  # case-insensitive
    error: str = ""
    retryable: bool = False  # the failure was transient (the deadline or a close ended the retries)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    def describe(self, limit: int = 200) -> str:
        """A short text of a failed answer for the log."""
        if self.status == 0:
            return self.error
        snippet = self.body[:limit].decode("utf-8", "replace").strip()
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL the environment names for ``url`` (``NO_PROXY`` honoured), or None."""
    env = os.environ if environ is None else environ
    if not any(name.lower().endswith("_proxy") for name in env):
        return None  # the common case, without importing urllib.request
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    scheme = urlsplit(proxy).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"unsupported proxy scheme {scheme}://: use an http:// or https:// proxy")
    return proxy


class HttpClient:
    """POSTs to one URL: a kept-alive urllib3 pool per calling thread."""

    def __init__(self, url: str, headers: Mapping[str, str], tls: TlsOptions | None = None) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ConfigError("the port is not a number from 0 to 65535", value=url) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("not an http(s) URL", value=url)
        self.url = url
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"User-Agent": USER_AGENT, **headers}
        self.proxy = proxy_for(url)
        self._pool_kwargs = tls.pool_kwargs() if tls is not None else {}
        self._tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._managers: list[PoolManager] = []  # every thread's, for close()
        # urllib3's ProtocolError and SSLError, set with the first opener
        self._protocol_error: type[Exception]
        self._ssl_error: type[Exception]

    def _opener(self) -> Callable[..., Any]:
        """This thread's ``urlopen``: its pool's own, to the URL's path, without a proxy
        (a PoolManager would look the pool up again on every POST); else the
        ProxyManager's, which writes the request for the proxy. Every argument but the
        body and the timeout is bound here once: urlopen would otherwise build the
        same ``Retry`` from ``retries=False`` on every call."""
        opener: Callable[..., Any] | None = getattr(self._local, "urlopen", None)
        if opener is None:
            from urllib3.exceptions import ProtocolError, SSLError
            from urllib3.util import Retry

            self._protocol_error, self._ssl_error = ProtocolError, SSLError
            manager = self._new_manager()
            with self._lock:
                self._managers.append(manager)
            fixed: dict[str, Any] = {
                "headers": self.headers,
                "retries": Retry(False, redirect=False),  # what urlopen makes of retries=False
                "redirect": False,
                "preload_content": True,
            }
            if self.proxy is None:
                pool = manager.connection_from_url(self.url)
                # the path is this pool's host's: nothing to check on each POST
                opener = functools.partial(pool.urlopen, "POST", self._path, assert_same_host=False, **fixed)
            else:
                opener = functools.partial(manager.urlopen, "POST", self.url, **fixed)
            self._local.urlopen = opener
        return opener

    def _new_manager(self) -> PoolManager:
        import urllib3

        # One connection per thread: a sender posts one body at a time.
        kwargs: dict[str, Any] = {"num_pools": 2, "maxsize": 1, **self._pool_kwargs}
        if self.proxy is None:
            return urllib3.PoolManager(**kwargs)
        proxy = urlsplit(self.proxy)
        proxy_headers: dict[str, str] = {}
        if proxy.username is not None:
            token = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
            proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        proxy_context = None
        if proxy.scheme == "https" and self._tls is not None and self._tls.ca_file:
            import ssl

            # The proxy's certificate is checked against the same CA bundle.
            proxy_context = ssl.create_default_context(cafile=self._tls.ca_file)
        bare = f"{proxy.scheme}://{proxy.hostname}" + (f":{proxy.port}" if proxy.port else "")
        return urllib3.ProxyManager(
            bare, proxy_headers=proxy_headers, proxy_ssl_context=proxy_context, **kwargs
        )

    def post(self, body: bytes, timeout: float) -> Reply:
        """The answer; raises (urllib3's ``HTTPError`` or an ``OSError``) when none came."""
        urlopen = self._opener()
        for last_try in (False, True):
            try:
                response = urlopen(body=body, timeout=timeout)
            except self._protocol_error:
                # The server dropped a kept-alive connection as the request went out:
                # once more at once, on a new one.
                if last_try:
                    raise
                continue
            except self._ssl_error as exc:
                # in the log: OpenSSL's reason and the settings to look at
                described = self._tls.describe_failure(exc) if self._tls is not None else None
                if described is None:
                    raise
                raise self._ssl_error(described) from exc
            return Reply(response.status, response.data, response.headers)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            managers, self._managers = self._managers, []
        for manager in managers:
            manager.clear()


# ---------------------------------------------------------------- the exporter


@dataclass(frozen=True)
class Verdict:
    """What an accepted request's answer says about its items."""

    refused: int = 0  # items the receiver refused for good
    retry: Sequence[int] = ()  # positions (in the request) of items worth sending again
    detail: str = ""  # for the log: why, or what was odd about the answer


ACCEPTED = Verdict()


class Splittable(Protocol):
    """An encoded batch that can be cut into request bodies without encoding again
    (``JoinedBody``): items joined by commas between a head and a tail."""

    body: bytes
    head_len: int
    tail_len: int

    def runs(self, max_bytes: int, max_items: int) -> Iterable[list[int]]: ...

    def run_body(self, run: Sequence[int]) -> bytes: ...

    def item(self, i: int) -> bytes: ...

    def start(self, i: int) -> int: ...

    @property
    def ends(self) -> list[int]: ...


Encoded = Any  # bytes (one body) or a Splittable


class Exporter:
    """Delivers batches of spans to one URL for the sink ``name``.

    ``encode`` returns bytes (one body) or a ``Splittable`` batch, which is cut into
    bodies of at most ``max_bytes`` and ``max_items`` (an item too large alone is
    dropped and counted). ``merge`` joins the encodings of consecutive runs (for the
    guard). ``read_reply(body, items)`` reads an accepted answer. ``noun`` names the
    items in the log (spans, events).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        logger: logging.Logger,
        content_type: str,
        encode: Callable[[Sequence[SpanRecord]], Encoded],
        merge: Callable[[Sequence[Encoded]], Encoded],
        read_reply: Callable[[bytes, int], Verdict] | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str = "none",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        tls: TlsOptions | None = None,
        max_bytes: int = 1 << 62,
        max_items: int = 1 << 62,
        secrets: Iterable[str] = (),
        noun: str = "spans",
    ) -> None:
        if not timeout > 0:
            raise ConfigError("must be greater than 0", setting="send_timeout", value=timeout)
        self.name = name
        self.url = url
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.noun = noun
        self.compressor = Compressor(compression, logger=logger)
        fixed = {"Content-Type": content_type}
        if self.compressor.header:
            fixed["Content-Encoding"] = self.compressor.header
        self.client = HttpClient(url, {**fixed, **(headers or {})}, tls)
        self._logger = logger
        self.log = RateLimitedLog(logger, 60.0, secrets=secrets)
        self.guard = EncodeGuard(name, self.log)
        self.counts = Counters()
        self._encode = encode
        self._merge = merge
        self._read_reply = read_reply
        self._max_bytes = max_bytes
        self._max_items = max_items
        self._closed = threading.Event()

    # -- lifecycle

    def start(self) -> None:
        """Imports urllib3 (before the reader starts); nothing runs on its own: each
        sender thread opens its pool on its first POST."""
        # Imported by a sender thread while the reader runs, its ~60 modules' file
        # reads hand the GIL back and forth with the reader: measured, that costs
        # the replay more CPU than the import itself costs here.
        import urllib3  # noqa: F401

    def close(self) -> None:
        """Ends any backoff wait at once; later sends fail; the pools are closed."""
        self._closed.set()
        self.client.close()

    def stats(self) -> dict[str, int]:
        return {**self.counts.snapshot(), "unencodable": self.guard.unencodable}

    # -- sending

    def export(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        """Deliver ``spans`` by ``deadline``; how many were not delivered. Never raises."""
        if not spans:
            return 0
        failed = 0
        done = 0  # spans accounted for (delivered or failed)
        try:
            encoded, failed = self.guard.encode(self._encode, spans, self._merge)
            done = failed
            if encoded is not None:
                if isinstance(encoded, bytes):
                    count = len(spans) - failed
                    failed += self._post_items(encoded, count, deadline, None, None)
                    done = len(spans)
                else:
                    for run in encoded.runs(self._max_bytes, self._max_items):
                        failed += self._post_run(encoded, run, deadline)
                        done += len(run)
        except Exception:  # a bug must not take the worker down: count and log it
            self._logger.exception(
                "%s: unexpected error; %d spans dropped", self.name, len(spans) - done
            )
            failed += len(spans) - done
        self.counts.add(sent=len(spans) - failed, failed=failed)
        return failed

    def _post_run(self, batch: Splittable, run: list[int], deadline: float) -> int:
        overhead = batch.head_len + batch.tail_len
        if len(run) == 1:
            size = batch.ends[run[0]] - batch.start(run[0])
            if size + overhead > self._max_bytes:
                self.log(
                    "too-large",
                    logging.WARNING,
                    "%s: dropped one of %d bytes: a request body may not exceed %d bytes",
                    self.name,
                    size,
                    self._max_bytes,
                )
                return 1
        return self._post_items(batch.run_body(run), len(run), deadline, batch, run)

    def _post_items(
        self, body: bytes, count: int, deadline: float, batch: Splittable | None, run: list[int] | None
    ) -> int:
        """Post one body of ``count`` items; re-post the items the answer says may be
        retried (``batch``/``run`` give them). How many items failed."""
        failed = 0
        attempt = 0
        while True:
            self.counts.add(batches=1)
            reply = self.post(body, deadline)
            if not reply.ok:
                self.log_failure(reply, count)
                return failed + count
            verdict = ACCEPTED if self._read_reply is None else self._read_reply(reply.body, count)
            failed += min(verdict.refused, count)
            if verdict.detail:
                self.log(
                    "reply",
                    logging.WARNING,
                    "%s: %d of %d %s not accepted by %s: %s",
                    self.name,
                    verdict.refused,
                    count,
                    self.noun,
                    self.url,
                    verdict.detail,
                )
            if not verdict.retry or batch is None or run is None:
                return failed + (len(verdict.retry) if verdict.retry else 0)
            if not self.backoff(attempt, deadline):
                self.log(
                    "items-gave-up",
                    logging.WARNING,
                    "%s: %d %s still refused (429/5xx) at the deadline",
                    self.name,
                    len(verdict.retry),
                    self.noun,
                )
                return failed + len(verdict.retry)
            attempt += 1
            run = [run[i] for i in verdict.retry]
            count = len(run)
            body = _subset_body(batch, run)

    def post(self, payload: bytes, deadline: float) -> Reply:
        """POST ``payload`` (compressed here) until a final answer, the deadline or
        ``close``. Never raises for delivery problems."""
        body = self.compressor.compress(payload)
        client, counts, size = self.client, self.counts, len(body)

        def attempt(timeout: float) -> Reply:
            counts.add(bytes=size)
            return client.post(body, timeout)

        return self.retrying(attempt, deadline)

    def retrying(self, attempt: Callable[[float], Reply], deadline: float) -> Reply:
        """Call ``attempt(timeout)`` until a final answer, the deadline or ``close``.
        An OSError or urllib3 error from it is a transient failure (no answer);
        other exceptions are raised."""
        tries = 0
        while True:
            if self._closed.is_set():
                return Reply(0, error="the sink is closed", retryable=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reply(0, error="deadline passed before sending", retryable=True)
            retry_after: float | None = None
            try:
                reply = attempt(min(self.timeout, remaining))
            except Exception as exc:
                if not isinstance(exc, OSError) and not _is_http_error(exc):
                    raise
                reply = Reply(0, error=f"{type(exc).__name__}: {exc}", retryable=True)
            else:
                if reply.ok or not is_retryable(reply.status):
                    return reply
                reply.error, reply.retryable = f"HTTP {reply.status}", True
                if reply.headers is not None:
                    retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            if not self.backoff(tries, deadline, retry_after):
                return reply
            tries += 1

    def backoff(self, attempt: int, deadline: float, retry_after: float | None = None) -> bool:
        """Wait before retry ``attempt + 1``; False (no wait) when the retry could not
        start before ``deadline`` or the exporter is closing."""
        delay = self.retry.delay(attempt) if retry_after is None else retry_after
        if self._closed.is_set() or time.monotonic() + delay >= deadline:
            return False
        self.counts.add(retries=1)
        return not self._closed.wait(delay)

    def log_failure(self, reply: Reply, count: int) -> None:
        if reply.retryable:
            self.log(
                "gave-up",
                logging.WARNING,
                "%s: %d %s not delivered to %s by the deadline: %s",
                self.name,
                count,
                self.noun,
                self.url,
                reply.describe(),
            )
        else:
            self.log(
                f"refused-{reply.status}",
                logging.ERROR,
                "%s: %d %s refused by %s: %s",
                self.name,
                count,
                self.noun,
                self.url,
                reply.describe(),
            )


def _subset_body(batch: Splittable, items: Sequence[int]) -> bytes:
    """The body of some items of ``batch`` (in order), envelope included."""
    body = batch.body
    return (
        body[: batch.head_len]
        + b",".join([batch.item(i) for i in items])
        + body[len(body) - batch.tail_len :]
    )


def _is_http_error(exc: BaseException) -> bool:
    """One of urllib3's errors: no answer came (the URL was checked when the sink was made)."""
    from urllib3.exceptions import HTTPError

    return isinstance(exc, HTTPError)
