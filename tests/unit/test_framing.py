from __future__ import annotations

import pytest

from vault_observe.framing import FramingCounters, LineFramer, StreamFramer


def framer(max_line: int = 100) -> tuple[LineFramer, FramingCounters]:
    counters = FramingCounters()
    return LineFramer(max_line, counters), counters


def test_whole_lines_pass_through_and_tail_waits() -> None:
    f, c = framer()
    assert f.feed(b'{"a":1}\n{"b"') == b'{"a":1}\n'
    assert f.buffered == 4
    assert f.feed(b":2}\n") == b'{"b":2}\n'
    assert c.bytes == 16 and c.truncated == 0


@pytest.mark.parametrize("cut", range(1, 20))
def test_any_split_point_gives_the_same_lines(cut: int) -> None:
    data = b'{"x":"one"}\n{"y":"two"}\n'
    f, _ = framer()
    out = f.feed(data[:cut]) + f.feed(data[cut:])
    assert out == data


def test_tail_at_eof_is_truncated_and_never_joined() -> None:
    first, counters = framer()
    second = LineFramer(100, counters)
    assert first.feed(b'{"partial":') == b""
    first.close()
    # The next connection starts clean: its bytes are not glued to the fragment.
    assert second.feed(b'{"whole":1}\n') == b'{"whole":1}\n'
    assert counters.truncated == 1


def test_close_after_whole_lines_counts_nothing() -> None:
    f, c = framer()
    f.feed(b"{}\n")
    f.close()
    assert c.truncated == 0


def test_oversize_line_is_skipped_while_streaming() -> None:
    f, c = framer(max_line=10)
    assert f.feed(b"x" * 8) == b""
    assert f.feed(b"y" * 8) == b""  # now over the limit: dropped, not buffered
    assert f.buffered == 0
    assert f.feed(b"z" * 1000) == b""
    assert f.feed(b'zz\n{"ok":1}\n') == b'{"ok":1}\n'
    assert c.oversize == 1


def test_line_at_exactly_the_limit_is_kept() -> None:
    f, c = framer(max_line=10)
    assert f.feed(b"0123456789") == b""
    assert f.feed(b"\n") == b"0123456789\n"
    assert c.oversize == 0


# -- StreamFramer: the same rules for a file read into one reused buffer


class Pieces:
    """A stream whose reads return the given pieces one by one (as a socket or a
    growing file would), never more than the caller's buffer holds."""

    def __init__(self, *pieces: bytes) -> None:
        self._pieces = list(pieces)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if not self._pieces:
            return 0
        piece = self._pieces[0]
        n = min(len(piece), len(buffer))
        buffer[:n] = piece[:n]
        if n == len(piece):
            self._pieces.pop(0)
        else:
            self._pieces[0] = piece[n:]
        return n


def read_all(framer: StreamFramer) -> list[bytes]:
    out = []
    while (lines := framer.read()) is not None:
        out.append(bytes(lines))  # a view is only valid until the next read
    framer.close()
    return out


def test_stream_whole_lines_pass_through_and_tail_waits() -> None:
    counters = FramingCounters()
    f = StreamFramer(Pieces(b'{"a":1}\n{"b"', b":2}\n"), 100, counters)
    assert bytes(f.read() or b"") == b'{"a":1}\n'
    assert f.buffered == 4
    assert bytes(f.read() or b"") == b'{"b":2}\n'
    assert f.read() is None
    assert counters.bytes == 16 and counters.truncated == 0


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 8, 13, 64])
@pytest.mark.parametrize("cut", range(1, 24, 3))
def test_stream_any_buffer_size_and_split_gives_the_same_lines(cut: int, read_bytes: int) -> None:
    data = b'{"x":"one"}\n{"y":"two"}\n{"z":"three"}\n'
    counters = FramingCounters()
    f = StreamFramer(Pieces(data[:cut], data[cut:]), 100, counters, read_bytes=read_bytes)
    assert b"".join(read_all(f)) == data
    assert counters.bytes == len(data) and counters.truncated == 0 and counters.oversize == 0


def test_stream_tail_at_eof_is_truncated() -> None:
    counters = FramingCounters()
    assert read_all(StreamFramer(Pieces(b'{"whole":1}\n{"partial":'), 100, counters)) == [b'{"whole":1}\n']
    assert counters.truncated == 1


def test_stream_oversize_line_is_skipped_while_streaming() -> None:
    counters = FramingCounters()
    f = StreamFramer(Pieces(b"x" * 8, b"y" * 8, b"z" * 1000, b'zz\n{"ok":1}\n'), 10, counters, read_bytes=4)
    assert b"".join(read_all(f)) == b'{"ok":1}\n'
    assert counters.oversize == 1 and counters.truncated == 0


def test_stream_line_longer_than_the_buffer_grows_it() -> None:
    line = b"0123456789" * 50 + b"\n"
    counters = FramingCounters()
    f = StreamFramer(Pieces(line, b"{}\n"), 1000, counters, read_bytes=16)
    assert b"".join(read_all(f)) == line + b"{}\n"
    assert counters.oversize == 0


def test_stream_line_at_exactly_the_limit_is_kept() -> None:
    counters = FramingCounters()
    f = StreamFramer(Pieces(b"0123456789", b"\n"), 10, counters, read_bytes=4)
    assert b"".join(read_all(f)) == b"0123456789\n"
    assert counters.oversize == 0
