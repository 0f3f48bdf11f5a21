"""Follow the file audit device's log across rotation, from a saved position.

With Vault's file device as the primary device this is the no-loss deployment: the
file holds every entry, and the checkpoint (written here when the reader loop
acknowledges a position: every sink has handled the spans of the lines before it)
lets a restart resume where the last run stopped.

Rotation, polled (no inotify needed):
- rename (logrotate's default, then SIGHUP to Vault): the path gets a new inode, but
  Vault writes to the old file until it reopens, which may be seconds later (a slow
  ``postrotate``). The old file is read until the writer has demonstrably moved (the
  new file has data: Vault reopens before it writes there) and the old one has stopped
  growing; then it is read to its end once more and the new file from 0. An empty new
  file (logrotate's ``create``) is not a move.
- copytruncate: the file shrinks below the position; reading restarts at 0.

Positions are also given as a stream offset (``Chunk.offset``) that keeps growing across
files: the core keeps it with each pending request, so a checkpoint can record where
the oldest pending request was read and a restart can read the files again from there
(``Saved.replay``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..framing import FramingCounters, StreamFramer
from ..ratelog import RateLimitedLog
from .base import Chunk, Read, Source

log = logging.getLogger("vault_observe.sources")

# A chunk of whole lines is cut into pieces of at most this many lines, each with its
# own position: the checkpoint can then stop within a read, so a kill -9 re-sends at
# most one piece's spans beyond the batches in flight.
PIECE_LINES = 100
KEPT_SEGMENTS = 16  # files remembered for a replay (a rotation or truncation starts one)
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".Z")


@dataclass(frozen=True)
class Position:
    """Where reading stands: which file (device, inode) and the offset after the last whole line."""

    path: str
    dev: int
    inode: int
    offset: int


@dataclass(frozen=True)
class Saved:
    """What a checkpoint holds.

    ``position``: every span of the lines before it has been delivered (or refused for
    good) by every sink. ``replay``: where the oldest request still pending at that
    point was read, as the files to read again: the first from its offset, each next one
    from its offset (where reading it began), the last (``position``'s file) up to
    ``position.offset``. Empty when nothing was pending. ``expired_ns``: the latest time
    pending requests had been expired against, so that a replay expires the same ones.
    """

    position: Position
    replay: tuple[Position, ...] = ()
    expired_ns: int = 0


class Checkpoint:
    """A ``Saved`` written atomically (write, fsync, rename) in a small JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Saved | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            position = _position(data)
            replay = tuple(_position(item) for item in data.get("replay") or ())
            return Saved(position, replay, int(data.get("expired_ns") or 0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the unreadable checkpoint %s: %s", self.path, exc)
            return None

    def save(self, saved: Saved) -> None:
        doc = {
            **asdict(saved.position),
            "replay": [asdict(item) for item in saved.replay],
            "expired_ns": saved.expired_ns,
        }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        # The rename itself survives a power cut only once its folder is synced.
        folder = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _position(data: dict[str, object]) -> Position:
    return Position(str(data["path"]), int(data["dev"]), int(data["inode"]), int(data["offset"]))  # type: ignore[call-overload]


@dataclass
class FollowCounters:
    """What following did besides reading lines."""

    rotations: int = 0
    truncations: int = 0
    lost_files: int = 0  # a checkpoint's file (or a file to replay) was gone or truncated
    checkpoint_errors: int = 0  # checkpoint writes that failed
    replay_framing: FramingCounters = field(default_factory=FramingCounters)


@dataclass(frozen=True)
class _Segment:
    first_mark: int  # stream offset of the first byte read from it
    base: int  # stream offset = base + file offset
    file: Position  # its identity, offset = where reading it began


class _Capped:
    """A file read no further than ``limit`` (a line boundary)."""

    def __init__(self, fh: io.FileIO, limit: int) -> None:
        self._fh = fh
        self._limit = limit

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None:
        left = self._limit - self._fh.tell()
        if left <= 0:
            return 0
        view = memoryview(buffer)
        return self._fh.readinto(view[:left] if len(view) > left else view)


class FileFollower(Source):
    """The follow source: whole lines from a growing, rotating file, in pieces of at
    most ``piece_lines`` lines each with its position (``mark``); a position the reader
    loop acknowledges is saved in the checkpoint, and ``start`` resumes from it."""

    def __init__(
        self,
        path: str,
        *,
        max_line_bytes: int,
        counters: FramingCounters,
        checkpoint: str | None = None,
        poll_interval: float = 0.2,
        rotate_grace: float = 1.0,
        piece_lines: int = PIECE_LINES,
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.counters = counters
        self.poll_interval = poll_interval
        self.rotate_grace = rotate_grace
        self.piece_lines = max(1, piece_lines)
        self.stats = FollowCounters()
        self.checkpoint = Checkpoint(checkpoint) if checkpoint else None
        self._start: Saved | None = None  # what the checkpoint held at the start
        self._saved: Saved | None = None  # what it holds now
        self._errlog = RateLimitedLog(log, 60.0)
        self._reads: Generator[Read, None, None] | None = None
        self._stopping = False
        self._file: io.FileIO | None = None
        self._path_open = ""  # the name the open file was opened by
        self._dev = 0
        self._inode = 0
        self._offset = 0  # after the last whole line handed out
        self._framer: StreamFramer | None = None
        self._ignore = {os.path.abspath(checkpoint)} if checkpoint else set()
        self._between: list[tuple[str, int, int]] = []  # rotated while down, to read next
        self._segments: list[_Segment] = []
        self._base = 0
        self._stream_end = 0  # stream offset after the last whole line handed out

    # -- the Source contract

    def start(self) -> None:
        """Load the checkpoint; the file is opened by the reads (it may not exist yet)."""
        self._start = self._saved = self.checkpoint.load() if self.checkpoint is not None else None
        self._reads = self._follow()

    def read(self, timeout: float) -> Read | None:
        """The next piece of lines, or none when idle (after waiting ``poll_interval``:
        a file is polled); ``timeout`` is not used."""
        if self._reads is None or self._stopping:
            return None
        return next(self._reads, None)

    def ready(self) -> str | None:
        return "" if self._inode else None  # reading once the file is open

    def mark(self, pending_from: int | None, expired_ns: int) -> Saved:
        replay = () if pending_from is None else self.replay_files(pending_from)
        # A replay after the next restart expires what this run and the last one had.
        resumed_ns = self._start.expired_ns if self._start is not None else 0
        return Saved(self.position, replay, max(expired_ns, resumed_ns))

    def ack(self, mark: object) -> None:
        """Save ``mark`` in the checkpoint (again, if writing it failed last time)."""
        assert isinstance(mark, Saved)
        if self.checkpoint is None or mark == self._saved:
            return
        try:
            self.checkpoint.save(mark)
        except OSError as exc:
            # Reading and sending go on; a restart would resume at the last checkpoint
            # written, re-sending what was delivered since.
            self.stats.checkpoint_errors += 1
            self._errlog(
                "checkpoint",
                logging.ERROR,
                "cannot write the checkpoint %s: %s (%d failed writes)",
                self.checkpoint.path,
                exc,
                self.stats.checkpoint_errors,
            )
            return
        self._saved = mark

    def wake(self) -> None:
        """Nothing to cut short: an idle read waits one ``poll_interval`` at most."""

    def stop(self, timeout: float) -> None:
        """Read no further: a line being written is read again after the restart."""
        self._stopping = True

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        self._close(stopping=True)

    # -- counters

    @property
    def rotations(self) -> int:
        return self.stats.rotations

    @property
    def truncations(self) -> int:
        return self.stats.truncations

    # -- opening

    def _open(
        self,
        path: str,
        offset: int,
        *,
        expect: tuple[int, int] | None = None,
        replay: bool = False,
        limit: int | None = None,
    ) -> bool:
        """Open ``path`` at ``offset`` as the next segment; False if it is missing (or not
        the file ``expect`` names). ``replay``: to be read again, up to ``limit`` if given
        (False if it is shorter than that: truncated since)."""
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open while following
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            fh.close()
            return False
        if replay and max(offset, limit or 0) > st.st_size:
            # Truncated since (copytruncate): what it held is gone, and what it holds now
            # is new, to be read as such.
            fh.close()
            return False
        if offset > st.st_size:
            log.warning("%s is shorter than the saved position %d: reading it from the start", path, offset)
            offset = 0
        fh.seek(offset)
        self._close()
        self._file, self._path_open = fh, path
        self._dev, self._inode, self._offset = st.st_dev, st.st_ino, offset
        if not replay:
            self._framer = StreamFramer(fh, self.max_line_bytes, self.counters)
        else:
            source = fh if limit is None else _Capped(fh, limit)
            self._framer = StreamFramer(source, self.max_line_bytes, self.stats.replay_framing)
        first = self._stream_end
        self._base = first - offset
        self._segments.append(_Segment(first, self._base, Position(path, st.st_dev, st.st_ino, offset)))
        del self._segments[:-KEPT_SEGMENTS]
        return True

    def _open_saved(self, position: Position, *, replay: bool = False, limit: int | None = None) -> bool:
        """Open the file of ``position`` (at the path, or renamed in the same folder)."""
        ident = (position.dev, position.inode)
        if self._open(self.path, position.offset, expect=ident, replay=replay, limit=limit):
            return True
        rotated = _find_inode(Path(self.path).parent, position.dev, position.inode)
        if rotated is not None and self._open(
            str(rotated), position.offset, expect=ident, replay=replay, limit=limit
        ):
            log.info("reading %s, the rotated log, from offset %d", rotated, position.offset)
            return True
        return False

    def _close(self, *, stopping: bool = False) -> None:
        if self._file is not None:
            assert self._framer is not None
            if not stopping:
                # Leaving a file for good: an unterminated tail is a truncated entry. At a
                # stop it is a line still being written, read again after the restart.
                self._framer.close()
            self._file.close()
            self._file = None

    def _replay(self) -> Iterator[Read]:
        """Read again what the checkpoint says holds requests still pending, up to its
        position; then expire what the last run had expired by then."""
        saved = self._start
        if saved is None or not saved.replay:
            return
        yield from self._reread(saved)
        yield Read((), saved.expired_ns, reread=True)

    def _reread(self, saved: Saved) -> Iterator[Read]:
        last = len(saved.replay) - 1
        for i, item in enumerate(saved.replay):
            limit = saved.position.offset if i == last else None
            if not self._open_saved(item, replay=True, limit=limit):
                self.stats.lost_files += 1
                log.warning(
                    "%s (inode %d) is gone or was truncated: requests pending at the last stop that "
                    "were read from it cannot be rebuilt, and their responses become orphan spans",
                    item.path,
                    item.inode,
                )
                self._close()
                return
            yield from self._read_available(replay=True)
        # Positioned at the checkpoint: read on with the real counters.
        assert self._file is not None
        self._framer = StreamFramer(self._file, self.max_line_bytes, self.counters)

    def _resume(self) -> None:
        """Open where the checkpoint says, finding a file rotated while we were away."""
        saved = self._start
        if saved is None:
            return
        position = saved.position
        if self._open_saved(position):
            return
        self.stats.lost_files += 1
        log.warning(
            "the checkpoint's file %s (inode %d) is gone: lines written to it after offset %d are lost",
            position.path,
            position.inode,
            position.offset,
        )

    def _rotated_between(self) -> list[tuple[str, int, int]]:
        """Files rotated after the open one while the daemon was down (two rotations before
        a restart): uncompressed rotated copies of the log (``audit.log.1``,
        ``audit.log-20261203``) last written after it, oldest first, as (path, dev, inode)."""
        assert self._file is not None
        opened = os.fstat(self._file.fileno())
        skip = {(opened.st_dev, opened.st_ino)}
        with contextlib.suppress(OSError):
            current = os.stat(self.path)
            skip.add((current.st_dev, current.st_ino))
        folder = Path(self.path).parent
        base = Path(self.path).name
        found: list[tuple[int, str, int, int]] = []
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith((base + ".", base + "-")) or name.endswith(COMPRESSED):
                    continue
                if os.path.abspath(entry.path) in self._ignore or entry.path.endswith(".tmp"):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    ident = (st.st_dev, st.st_ino)
                    if stat.S_ISREG(st.st_mode) and ident not in skip and st.st_mtime_ns > opened.st_mtime_ns:
                        found.append((st.st_mtime_ns, entry.path, *ident))
        return [(path, dev, inode) for _, path, dev, inode in sorted(found)]

    # -- reading

    @property
    def position(self) -> Position:
        return Position(self._path_open or self.path, self._dev, self._inode, self._offset)

    def replay_files(self, mark: int) -> tuple[Position, ...]:
        """The files to read again to see every line from stream offset ``mark`` on (see
        ``Saved.replay``); empty when that is no longer known."""
        segments = self._segments
        first = next((i for i in range(len(segments) - 1, -1, -1) if segments[i].first_mark <= mark), None)
        if first is None:
            return ()
        chain = [replace(segments[first].file, offset=mark - segments[first].base)]
        seen = {(chain[0].dev, chain[0].inode)}
        for segment in segments[first + 1 :]:
            ident = (segment.file.dev, segment.file.inode)
            if ident in seen:
                # Truncated since (copytruncate): what was read before is gone.
                chain = []
                seen = set()
            chain.append(segment.file)
            seen.add(ident)
        return tuple(chain)

    def _read_available(self, replay: bool = False) -> Iterator[Read]:
        assert self._file is not None and self._framer is not None
        piece_lines = self.piece_lines
        while True:
            lines = self._framer.read()
            if lines is None:
                return
            # The offset moves past whole lines only; a partial tail is re-read after a restart.
            end = self._file.tell() - self._framer.buffered
            if not lines:
                continue
            start = end - len(lines)
            data = bytes(lines)
            view = memoryview(data)
            size = len(data)
            lo = 0
            while lo < size:
                hi = lo
                for _ in range(piece_lines):
                    hi = data.find(b"\n", hi) + 1
                    if hi <= 0 or hi >= size:
                        hi = size
                        break
                self._offset = start + hi
                self._stream_end = self._base + self._offset
                yield Read((Chunk(view[lo:hi], self._base + start + lo),), None, replay)
                lo = hi

    def _read_all(self) -> Generator[Read, None, bool]:
        """The reads the open file has now; True when there was any."""
        got = False
        for read in self._read_available():
            got = True
            yield read
        return got

    def _pause(self) -> Iterator[Read]:
        """An idle read (no lines: the clock is the wall clock, as the file's times are
        Vault's), then a wait of ``poll_interval``."""
        yield Read((), time.time_ns())
        time.sleep(self.poll_interval)

    def _follow(self) -> Generator[Read, None, None]:
        """Reads as they come, one piece of lines each, or idle (the reader loop does its
        periodic work); a stop ends it between two reads."""
        yield from self._replay()
        if self._file is None:
            self._resume()
        if self._file is not None and self._path_open != self.path:
            # Resumed in a rotated file: any rotated after it while we were away come next.
            self._between = self._rotated_between()
            for path, _dev, _inode in self._between:
                log.info("%s was rotated after the daemon's file: reading it next", path)
        while self._file is None:
            if self._open(self.path, 0):
                break
            yield from self._pause()
        quiet_since: float | None = None
        while True:
            if (yield from self._read_all()):
                quiet_since = None
                continue
            now = time.monotonic()
            if quiet_since is None:
                quiet_since = now
            change = self._rotation(now - quiet_since)
            if change == "rotated":
                # The writer has moved on: what it wrote to the old file came first.
                if (yield from self._read_all()):
                    quiet_since = None
                    continue
                self.stats.rotations += 1
                while self._between:
                    path, dev, inode = self._between.pop(0)
                    if self._open(path, 0, expect=(dev, inode)):
                        break
                    moved = _find_inode(Path(self.path).parent, dev, inode)  # renamed again
                    if moved is not None and self._open(str(moved), 0, expect=(dev, inode)):
                        break
                else:
                    log.info("%s was rotated: reading the new file", self.path)
                    if self._open(self.path, 0):
                        quiet_since = None
                        continue
                    yield from self._pause()
                    continue
                quiet_since = None
                continue
            elif change == "truncated":
                log.warning("%s was truncated (copytruncate?): reading it from the start", self.path)
                self.stats.truncations += 1
                if self._open(self.path, 0):
                    quiet_since = None
                    continue
            yield from self._pause()

    def _rotation(self, quiet_for: float) -> str | None:
        """ "rotated" when the writer has moved to a new file at the path and the open one
        has been quiet for ``rotate_grace``; "truncated" when the open file shrank."""
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # between rename and re-create: the writer still has the old file
        if (st.st_dev, st.st_ino) != (self._dev, self._inode):
            # An empty new file (logrotate's create) is not a move: Vault writes to the
            # old one until it reopens, and it reopens before it writes to the new one.
            if st.st_size > 0 and quiet_for >= self.rotate_grace:
                return "rotated"
            return None
        if st.st_size < self._file.tell():
            return "truncated"
        return None


def _find_inode(folder: Path, dev: int, inode: int) -> Path | None:
    # the iterator holds a directory descriptor until closed: the early return must close it
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (dev, inode) and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
    return None
