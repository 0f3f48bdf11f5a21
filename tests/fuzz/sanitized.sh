#!/usr/bin/env bash
# Build every extension (simdjson included) with AddressSanitizer and
# UndefinedBehaviorSanitizer into build/sanitize, apart from the installed optimised
# build, and run the differential fuzzer on that copy. Arguments go to the fuzzer
# (tests/fuzz/differential.py), for example:
#   bash tests/fuzz/sanitized.sh --lines 200000 --threads 20
#   bash tests/fuzz/sanitized.sh --long
# Any sanitizer report aborts the run with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=build/sanitize
lib="$out/lib"
mkdir -p "$lib"
# the Python files of the package, then the sanitized extensions beside them
rm -rf "$lib/vault_observe"
cp -r src/vault_observe "$lib/"
rm -f "$lib"/vault_observe/*.so "$lib"/vault_observe/*.cpp
# what pyproject.toml's build-system asks for (pip builds the installed copy in isolation)
python3 -m pip install -q 'setuptools>=77' wheel 'Cython>=3.0,<4' 'pysimdjson==7.0.2'
start=$(date +%s)
VAULT_OBSERVE_SANITIZE=address,undefined VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 \
    python3 setup.py -q build_ext -j 2 --build-lib "$lib" --build-temp "$out/temp"
echo "sanitized build: $(( $(date +%s) - start )) s"

# CPython is not built with ASan: its runtime must be loaded first. Leak checks are
# off (CPython keeps memory until exit); a UBSan report stops the process as well.
asan=$(${CXX:-g++} -print-file-name=libasan.so)
export LD_PRELOAD="$asan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$PWD/$lib${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m tests.fuzz.differential --expect-sanitized "$@"
