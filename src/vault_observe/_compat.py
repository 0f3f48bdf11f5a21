"""The one switch for the compiled extensions (the core and the encoders).

``VAULT_OBSERVE_NO_EXTENSIONS=1`` makes every part use its pure-Python twin, which
is also the oracle the compiled parts are tested against.
``VAULT_OBSERVE_REQUIRE_EXTENSIONS=1`` (CI) makes a missing compiled part an error
rather than a silent fallback. Every module that picks between a compiled part and
its Python twin reads these two flags here, nowhere else.
"""

from __future__ import annotations

import os

NO_EXTENSIONS: bool = os.environ.get("VAULT_OBSERVE_NO_EXTENSIONS") == "1"
USE_EXTENSIONS: bool = not NO_EXTENSIONS
REQUIRE_EXTENSIONS: bool = os.environ.get("VAULT_OBSERVE_REQUIRE_EXTENSIONS") == "1"
DISABLED_REASON = "disabled by VAULT_OBSERVE_NO_EXTENSIONS=1"

__all__ = ["DISABLED_REASON", "NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "USE_EXTENSIONS"]
