"""Build the optional compiled core (``vault_observe._fast``).

simdjson is compiled from the sources that the pinned ``pysimdjson`` wheel ships
(``simdjson/simdjson.h`` and ``simdjson/simdjson.cpp``), so nothing of simdjson is
vendored here. If the extension cannot be built, the package still installs and
runs on the pure-Python reference core, unless VAULT_OBSERVE_REQUIRE_EXTENSIONS=1.

VAULT_OBSERVE_SANITIZE=address,undefined (either or both) builds every extension,
simdjson included, with AddressSanitizer and UndefinedBehaviorSanitizer instead of
the optimised flags: -O1 -g, no recovery from a report. Build such a copy apart from
the installed one, for example ``python setup.py build --build-base build/sanitize``,
and run it as tests/fuzz/README.md shows (CPython is not built with ASan, so its
runtime is preloaded).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PYX = HERE / "src" / "vault_observe" / "_fast.pyx"
ZIPKIN_PYX = HERE / "src" / "vault_observe" / "_zipkin_proto.pyx"
BATCH_JSON_PYX = HERE / "src" / "vault_observe" / "_batch_json.pyx"
SPANS_PYX = HERE / "src" / "vault_observe" / "_spans.pyx"
SPANS_PXD = "src/vault_observe/_spans.pxd"
PENDING_PYX = HERE / "src" / "vault_observe" / "_pending.pyx"
PENDING_DEPENDS = ["src/vault_observe/_pending.pxd", "src/vault_observe/_pending_entry.h"]
BYTEBUF = "src/vault_observe/_bytebuf.pxi"
ENCODE_COMMON = "src/vault_observe/_encode_common.pxi"
REQUIRE = os.environ.get("VAULT_OBSERVE_REQUIRE_EXTENSIONS") == "1"
SKIP = os.environ.get("VAULT_OBSERVE_NO_EXTENSIONS") == "1"


def simdjson_dir() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("simdjson")
    except Exception:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / "simdjson.cpp").exists() else None


SANITIZERS = ("address", "undefined")


def sanitizers() -> list[str]:
    names = [n.strip() for n in os.environ.get("VAULT_OBSERVE_SANITIZE", "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(SANITIZERS))
    if unknown:
        raise SystemExit(
            f"VAULT_OBSERVE_SANITIZE: unknown sanitizer(s) {', '.join(unknown)}; use {','.join(SANITIZERS)}"
        )
    return names


SANITIZE = sanitizers()
if SANITIZE:
    _flag = "-fsanitize=" + ",".join(SANITIZE)
    # -O1 and frame pointers for usable reports; every report ends the process
    COMPILE_ARGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", _flag]
    COMPILE_ARGS += ["-std=c++17", "-Wno-unused-function"]
    LINK_ARGS = [_flag]
else:
    # -g0: no debug info in the shipped module (Python's own CFLAGS ask for -g)
    COMPILE_ARGS = ["-O3", "-g0", "-std=c++17", "-DNDEBUG", "-Wno-unused-function"]
    LINK_ARGS = []


class OptionalBuildExt(build_ext):
    """Warn instead of failing when the compiled core cannot be built.

    simdjson.cpp (about 40 s to compile) becomes one object file in build_temp,
    reused until pysimdjson's copy changes.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            self._give_up(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            self._use_simdjson_object(ext)
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def _use_simdjson_object(self, ext) -> None:  # type: ignore[no-untyped-def]
        sources = [s for s in ext.sources if Path(s).name == "simdjson.cpp"]
        if not sources:
            return
        source = Path(sources[0])
        # one object per set of flags: a sanitized build never links the optimised one
        out_dir = Path(self.build_temp) / ("simdjson-object-" + "-".join(SANITIZE) if SANITIZE else "simdjson-object")
        objects = self.compiler.object_filenames([str(source)], output_dir=str(out_dir))
        obj = Path(objects[0])
        if self.force or not obj.exists() or obj.stat().st_mtime < source.stat().st_mtime:
            self.compiler.compile(
                [str(source)],
                output_dir=str(out_dir),
                include_dirs=ext.include_dirs,
                extra_postargs=ext.extra_compile_args,
                debug=self.debug,
            )
        ext.sources = [s for s in ext.sources if s != sources[0]]
        ext.extra_objects = [*ext.extra_objects, str(obj)]

    def _give_up(self, exc: BaseException) -> None:
        if REQUIRE:
            raise exc
        sys.stderr.write(
            f"WARNING: vault-observe's compiled core could not be built ({exc}); "
            "installing the pure-Python reference core only.\n"
        )


def extensions() -> list:  # type: ignore[type-arg]
    if SKIP:
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    # The packed spans the core hands the encoders: a C++ compiler only; the encoders
    # and the core cimport it.
    exts = [
        Extension(
            "vault_observe._spans",
            sources=[str(SPANS_PYX.relative_to(HERE))],
            depends=[SPANS_PXD],
            language="c++",
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
        )
    ]
    if ZIPKIN_PYX.exists():  # the native Zipkin encoder needs nothing but a C++ compiler
        exts.append(
            Extension(
                "vault_observe._zipkin_proto",
                sources=[str(ZIPKIN_PYX.relative_to(HERE))],
                depends=[ENCODE_COMMON, BYTEBUF, SPANS_PXD],
                language="c++",
                extra_compile_args=COMPILE_ARGS,
                extra_link_args=LINK_ARGS,
            )
        )
    if BATCH_JSON_PYX.exists():  # the Honeycomb and OTLP body encoders: a C++ compiler only
        exts.append(
            Extension(
                "vault_observe._batch_json",
                sources=[str(BATCH_JSON_PYX.relative_to(HERE))],
                depends=[ENCODE_COMMON, BYTEBUF, SPANS_PXD],
                language="c++",
                extra_compile_args=COMPILE_ARGS,
                extra_link_args=LINK_ARGS,
            )
        )
    sj = simdjson_dir() if PYX.exists() else None
    if PYX.exists() and sj is None:
        msg = "pysimdjson (with simdjson.cpp) is not importable at build time"
        if REQUIRE:
            raise RuntimeError(msg)
        sys.stderr.write(f"WARNING: {msg}; building without the compiled core.\n")
    elif sj is not None:
        # the core's pending requests: a C++ compiler only; the core cimports it
        exts.append(
            Extension(
                "vault_observe._pending",
                sources=[str(PENDING_PYX.relative_to(HERE))],
                depends=PENDING_DEPENDS,
                language="c++",
                extra_compile_args=COMPILE_ARGS,
                extra_link_args=LINK_ARGS,
            )
        )
        exts.append(
            Extension(
                "vault_observe._fast",
                sources=[str(PYX.relative_to(HERE)), str(sj / "simdjson.cpp")],
                include_dirs=[str(sj)],
                depends=[str((PYX.parent / "_fast_json.h").relative_to(HERE)), SPANS_PXD, *PENDING_DEPENDS],
                language="c++",
                extra_compile_args=COMPILE_ARGS,
                extra_link_args=LINK_ARGS,
            )
        )
    return cythonize(
        exts,
        include_path=[str(HERE / "src")],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    # the C++ that Cython generates is a build product, not package data
    exclude_package_data={"vault_observe": ["*.cpp"]},
)
