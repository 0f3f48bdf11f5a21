"""Pieces shared by the HTTP sinks: a retrying POST and a log that masks secrets.

``RetryingPoster`` is the whole failure policy of an HTTP sink: connection errors,
timeouts, 429 and 5xx are retried with capped exponential backoff (or the server's
``Retry-After``) until the caller's deadline; any other answer is final. It never
raises for delivery problems; the sinks log what it returns through ``SafeLog``, a
rate-limited log that masks every secret (API keys, header values).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..ratelog import RateLimitedLog
from .transport import TRANSIENT_ERRORS, Transport

if TYPE_CHECKING:
    from email.message import Message

# ---------------------------------------------------------------- retrying POST


def is_retryable(status: int) -> bool:
    """429 and 5xx are worth another try; other answers are final."""
    return status == 429 or 500 <= status <= 599


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import email.utils

        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter (so many senders do not retry in step)."""

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2  # a delay is shortened by up to this fraction

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


@dataclass
class PostResult:
    """The last answer to a POST after retries."""

    status: int  # HTTP status, 0 when no answer came
    body: bytes
    error: str  # "" when ok
    retryable: bool  # the last failure was transient (the deadline or a close ended the retries)
    headers: Message | None = None  # the answer's headers (case-insensitive)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


class SafeLog:
    """A rate-limited log (per key) that masks every secret it was given."""

    def __init__(self, logger: logging.Logger, secrets: Iterable[str] = (), interval: float = 60.0) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._ratelog = RateLimitedLog(logger, interval)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        self._ratelog(key, level, "%s", self.redact(text))


class RetryingPoster:
    """POST bodies over keep-alive connections (``transport.Transport``, one per URL),
    retrying transient failures until a deadline.

    Counters (``requests``, ``retries``, ``bytes``) are kept for the sink's stats.
    ``close`` cuts short any backoff in progress.
    """

    def __init__(self, *, timeout: float = 10.0, retry: RetryPolicy | None = None) -> None:
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {timeout}")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._transports: dict[str, Transport] = {}
        self._closed = threading.Event()
        self.requests = 0
        self.retries = 0
        self.bytes = 0
        self._count_lock = threading.Lock()  # a sink may post from two threads

    def post(self, url: str, body: bytes, headers: Mapping[str, str], deadline: float) -> PostResult:
        """POST until a final answer, the deadline or ``close``. Never raises."""
        attempt = 0
        while True:
            if self._closed.is_set():
                return PostResult(0, b"", "the sink is closed", True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return PostResult(0, b"", "deadline passed before sending", True)
            retry_after: float | None = None
            try:
                transport = self._transport(url)
                with self._count_lock:
                    self.requests += 1
                    self.bytes += len(body)
                resp = transport.post(body, min(self.timeout, remaining), headers)
            except TRANSIENT_ERRORS as exc:
                result = PostResult(0, b"", f"{type(exc).__name__}: {exc}", True)
            except Exception as exc:  # bad URL, bad header...: another try would fail the same way
                return PostResult(0, b"", f"{type(exc).__name__}: {exc}", False)
            else:
                status = resp.status
                result = PostResult(
                    status,
                    resp.body,
                    "" if 200 <= status <= 299 else f"HTTP {status}",
                    is_retryable(status),
                    resp.headers,
                )
                if not is_retryable(status):
                    return result
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if not self.backoff(attempt, deadline, retry_after):
                return result
            attempt += 1

    def backoff(self, attempt: int, deadline: float, retry_after: float | None = None) -> bool:
        """Sleep before retry number ``attempt + 1``; False (no sleep) when the retry
        could not start before ``deadline`` or the poster is closing."""
        delay = self.retry.delay(attempt) if retry_after is None else retry_after
        if self._closed.is_set() or time.monotonic() + delay >= deadline:
            return False
        with self._count_lock:
            self.retries += 1
        return not self._closed.wait(delay)

    def _transport(self, url: str) -> Transport:
        transport = self._transports.get(url)
        if transport is None:
            with self._count_lock:
                transport = self._transports.setdefault(url, Transport(url))
        return transport

    def close(self) -> None:
        self._closed.set()
        with self._count_lock:
            transports = list(self._transports.values())
        for transport in transports:
            transport.close()


def describe(result: PostResult, limit: int = 200) -> str:
    """A short text of a failed answer for the log."""
    if result.status == 0:
        return result.error
    snippet = result.body[:limit].decode("utf-8", "replace").strip()
    return f"HTTP {result.status}" + (f": {snippet}" if snippet else "")


def parse_headers(text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` with URL-encoded keys and values (the OTLP header variables)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for number, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key).strip().lower()
        if not sep or not key:
            # The entry itself is not echoed: it may well be a credential.
            raise ConfigError(f"header entry {number} is not of the form name=value")
        out[key] = unquote(value).strip()
    return out
