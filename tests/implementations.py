"""The two implementations every differential test runs on: "py", the pure-Python
reference (``_core_py`` and the Python encoders), and "c", the compiled parts.

Tests take the ``impl`` fixture (tests/conftest.py), whose "c" parameter carries the
``c_extension`` marker; a test that uses a compiled part without that fixture carries
the marker itself. A test marked ``c_extension``:

- is skipped under ``VAULT_OBSERVE_NO_EXTENSIONS=1`` (that pass covers the Python parts);
- is skipped when a compiled part is not built, with the import error as the reason;
- fails instead when ``VAULT_OBSERVE_REQUIRE_EXTENSIONS=1`` (CI builds every part).

``@pytest.mark.c_extension("_zipkin_proto")`` names the parts a test needs; without
names it needs them all.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import vault_observe
from vault_observe import _compat, _core_py

PY = "py"
C = "c"
IMPLEMENTATIONS = (pytest.param(PY, id=PY), pytest.param(C, id=C, marks=pytest.mark.c_extension))

# Every Cython module of the package: what a build with a compiler must have produced.
SOURCE = Path(__file__).resolve().parent.parent / "src" / "vault_observe"
COMPILED_PARTS: tuple[str, ...] = tuple(sorted(path.stem for path in SOURCE.glob("*.pyx")))

# The folder holding the vault_observe these tests import: site-packages after
# `pip install .`, src/ for an editable install. A daemon started in a subprocess gets
# it on PYTHONPATH so that it runs the same build as the tests; src/ holds no compiled
# parts after a non-editable install, and a daemon run from it would use the
# reference core unnoticed.
PACKAGE_PATH = str(Path(vault_observe.__file__).resolve().parent.parent)


def compiled_module(name: str) -> ModuleType:
    """The compiled part ``vault_observe.<name>``; skips the test when it cannot be used,
    or fails it when VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 and it is not built."""
    if _compat.NO_EXTENSIONS:
        pytest.skip(f"the compiled parts are {_compat.DISABLED_REASON}")
    try:
        return importlib.import_module(f"vault_observe.{name}")
    except ImportError as exc:
        if _compat.REQUIRE_EXTENSIONS:
            pytest.fail(f"VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 but vault_observe.{name} is not built: {exc}")
        pytest.skip(f"vault_observe.{name} is not built: {exc}")


def core_class(impl: str) -> Any:
    """The Core class of an implementation ("py" or "c")."""
    if impl == PY:
        return _core_py.Core
    if impl != C:
        raise ValueError(f"no implementation {impl!r}")
    return compiled_module("_fast").Core


def check_marked(item: pytest.Item) -> None:
    """Skip or fail a ``c_extension`` test whose compiled parts cannot run (see above)."""
    markers = list(item.iter_markers("c_extension"))
    if not markers:
        return
    if any(not marker.args for marker in markers):
        needed: tuple[str, ...] = COMPILED_PARTS
    else:
        needed = tuple(name for marker in markers for name in marker.args)
    for name in needed:
        compiled_module(name)
