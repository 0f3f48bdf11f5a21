"""Pick the core: the compiled ``_fast`` when it is built, else the reference ``_core_py``.

``VAULT_OBSERVE_NO_EXTENSIONS=1`` forces the reference core (the switch is ``_compat``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _compat, _core_py

if TYPE_CHECKING:
    Core = _core_py.Core
    IMPLEMENTATION = "py"
    LOAD_ERROR: str | None = None
else:
    LOAD_ERROR = None
    if not _compat.USE_EXTENSIONS:
        Core = _core_py.Core
        IMPLEMENTATION = "py"
        LOAD_ERROR = _compat.DISABLED_REASON
    else:
        try:
            from ._fast import Core
        except ImportError as exc:
            Core = _core_py.Core
            IMPLEMENTATION = "py"
            LOAD_ERROR = str(exc)
        else:
            IMPLEMENTATION = "c"

COUNTER_NAMES = _core_py.COUNTER_NAMES

__all__ = ["COUNTER_NAMES", "IMPLEMENTATION", "LOAD_ERROR", "Core"]
