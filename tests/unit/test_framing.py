from __future__ import annotations

import pytest

from vault_observe.framing import FramingCounters, LineFramer


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
