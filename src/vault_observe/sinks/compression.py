"""Request-body compression shared by the HTTP sinks: gzip (ISA-L when installed,
else zlib), zstd (when ``zstandard`` is installed) or none."""

from __future__ import annotations

import logging
import threading
import zlib
from types import ModuleType
from typing import Any

from ..errors import ConfigError

_deflate_module: ModuleType | None = None


def _deflate() -> ModuleType:
    """ISA-L's deflate: standard gzip output about six times faster than zlib at level
    1, with the GIL released; zlib where the wheel is not there. Imported by the first
    compression (on a sender thread), not at start-up."""
    global _deflate_module
    if _deflate_module is None:
        try:
            from isal import isal_zlib

            _deflate_module = isal_zlib
        except ImportError:  # pragma: no cover - platforms without an isal wheel
            _deflate_module = zlib
    return _deflate_module


def gzip_compress(body: bytes, level: int = 1) -> bytes:
    """``body`` as one gzip member (wbits 31: gzip framing)."""
    module = _deflate()
    level = min(level, 3) if module is not zlib else level  # ISA-L has levels 0-3
    data: bytes = module.compress(body, level, wbits=31)
    return data


class Compressor:
    """Compress request bodies: ``gzip`` (default), ``zstd`` (when ``zstandard`` is
    importable; otherwise gzip with a warning) or ``none``."""

    def __init__(
        self, encoding: str = "gzip", level: int | None = None, logger: logging.Logger | None = None
    ) -> None:
        encoding = (encoding or "none").lower()
        if encoding not in ("gzip", "zstd", "none"):
            raise ConfigError(f"unknown compression {encoding!r} (use gzip, zstd or none)")
        self._zstd: Any = None  # the zstandard module
        self._local = threading.local()
        if encoding == "zstd":
            try:
                import zstandard
            except ImportError:
                (logger or logging.getLogger(__name__)).warning(
                    "zstd compression asked for but the zstandard module is not installed: using gzip"
                )
                encoding = "gzip"
            else:
                self._zstd = zstandard
        self.encoding = encoding
        # Level 1: the sinks share two cores with the reader; size gains above it are small.
        self.level = 1 if level is None else level
        self._zstd_level = 3 if level is None else level

    @property
    def header(self) -> str | None:
        """The ``Content-Encoding`` value, None when bodies go uncompressed."""
        return None if self.encoding == "none" else self.encoding

    def compress(self, body: bytes) -> bytes:
        if self.encoding == "gzip":
            return gzip_compress(body, self.level)
        if self.encoding == "zstd":
            # A ZstdCompressor must not be used by two threads at once: one per thread.
            packer = getattr(self._local, "zstd", None)
            if packer is None:
                packer = self._local.zstd = self._zstd.ZstdCompressor(level=self._zstd_level)
            data: bytes = packer.compress(body)
            return data
        return body
