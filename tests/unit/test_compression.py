from __future__ import annotations

import gzip
import threading

import pytest

from vault_observe.errors import ConfigError
from vault_observe.sinks.compression import Compressor, gzip_compress

BODY = b'[{"data":{"request.path":"secret/data/app","response.data.value":"%d"}}]' * 5000


def test_gzip_bodies_are_standard_gzip() -> None:
    packed = gzip_compress(BODY)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == BODY
    assert len(packed) < len(BODY) // 5


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_gzip_any_level_round_trips(level: int) -> None:
    assert gzip.decompress(Compressor("gzip", level=level).compress(BODY)) == BODY


def test_zstd_from_several_threads_at_once() -> None:
    """Two senders share one sink's compressor: each thread gets its own zstd context."""
    zstandard = pytest.importorskip("zstandard")
    compressor = Compressor("zstd")
    assert compressor.header == "zstd"
    bodies = [BODY + str(i).encode() * 1000 for i in range(4)]
    results: dict[int, list[bytes]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = [compressor.compress(bodies[i]) for _ in range(30)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    decompress = zstandard.ZstdDecompressor().decompress
    for i, packed in results.items():
        assert all(decompress(p, max_output_size=1 << 24) == bodies[i] for p in packed)


def test_none_leaves_the_body_alone() -> None:
    compressor = Compressor("none")
    assert compressor.header is None
    assert compressor.compress(BODY) is BODY


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Compressor("brotli")
