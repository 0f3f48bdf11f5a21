"""The compiled encoders, when they are built and not switched off (``_compat``).

The switch is read at each call, so a test may flip ``_compat.USE_EXTENSIONS``.
"""

from __future__ import annotations

from types import ModuleType

from ... import _compat


def batch_json() -> tuple[ModuleType | None, str | None]:
    """The compiled Honeycomb/OTLP body encoders (``_batch_json``) or None, and why not."""
    if not _compat.USE_EXTENSIONS:
        return None, _compat.DISABLED_REASON
    try:
        from ... import _batch_json
    except ImportError as exc:
        return None, str(exc)
    return _batch_json, None


def zipkin_proto() -> tuple[ModuleType | None, str | None]:
    """The compiled Zipkin protobuf encoder (``_zipkin_proto``) or None, and why not."""
    if not _compat.USE_EXTENSIONS:
        return None, _compat.DISABLED_REASON
    try:
        from ... import _zipkin_proto
    except ImportError as exc:
        return None, str(exc)
    return _zipkin_proto, None
