"""Follow the file audit device's log across rotation, from a saved position.

With Vault's file device as the primary device this is the no-loss deployment: the
file holds every entry, and the checkpoint (written by the pipeline only once the
spans of the lines before it are delivered) lets a restart resume where the last
run stopped.

Rotation, polled (no inotify needed):
- rename (logrotate's default, then SIGHUP to Vault): the path gets a new inode.
  The old file is read to its end, and until it has been quiet for ``rotate_grace``
  seconds (Vault writes to it until it reopens), then the new file from 0.
- copytruncate: the file shrinks below the position; reading restarts at 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..framing import FramingCounters, StreamFramer

log = logging.getLogger("vault_observe.sources")

@dataclass(frozen=True)
class Position:
    """Where reading stands: which file (device, inode) and the offset after the last whole line."""

    path: str
    dev: int
    inode: int
    offset: int


@dataclass(frozen=True)
class Chunk:
    lines: memoryview  # whole lines, valid until the next chunk is asked for
    position: Position  # the position just after them


class Checkpoint:
    """A Position saved atomically in a small JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Position | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            return Position(str(data["path"]), int(data["dev"]), int(data["inode"]), int(data["offset"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable checkpoint %s: %s", self.path, exc)
            return None

    def save(self, position: Position) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(position), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class FileFollower:
    """Yields chunks of whole lines from a growing, rotating file."""

    def __init__(
        self,
        path: str,
        *,
        max_line_bytes: int,
        counters: FramingCounters,
        start: Position | None = None,
        poll_interval: float = 0.2,
        rotate_grace: float = 1.0,
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.counters = counters
        self.poll_interval = poll_interval
        self.rotate_grace = rotate_grace
        self.rotations = 0
        self.truncations = 0
        self._start = start
        self._file: io.FileIO | None = None
        self._dev = 0
        self._inode = 0
        self._offset = 0  # after the last whole line handed out
        self._framer: StreamFramer | None = None

    # -- opening

    def _open(self, path: str, offset: int) -> bool:
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open while following
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if offset > st.st_size:
            log.warning("%s is shorter than the saved position %d: reading it from the start", path, offset)
            offset = 0
        fh.seek(offset)
        self._close()
        self._file, self._dev, self._inode, self._offset = fh, st.st_dev, st.st_ino, offset
        self._framer = StreamFramer(fh, self.max_line_bytes, self.counters)
        return True

    def _close(self) -> None:
        if self._file is not None:
            assert self._framer is not None
            self._framer.close()
            self._file.close()
            self._file = None

    def _resume(self) -> Iterator[Chunk]:
        """Open where the checkpoint says, finding a file rotated while we were away."""
        start = self._start
        if start is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (start.dev, start.inode):
            self._open(self.path, start.offset)
            return
        rotated = _find_inode(Path(self.path).parent, start.dev, start.inode)
        if rotated is not None and self._open(str(rotated), start.offset):
            log.info("resuming in %s, the rotated log, at offset %d", rotated, start.offset)
            yield from self._read_available()
            self._close()
            self.rotations += 1
        else:
            log.warning(
                "the checkpoint's file (inode %d) is gone: lines written to it after offset %d are lost",
                start.inode,
                start.offset,
            )
        self._open(self.path, 0)

    # -- reading

    @property
    def position(self) -> Position:
        return Position(self.path, self._dev, self._inode, self._offset)

    def _read_available(self) -> Iterator[Chunk]:
        assert self._file is not None and self._framer is not None
        while True:
            lines = self._framer.read()
            if lines is None:
                return
            # The offset moves past whole lines only; a partial tail is re-read after a restart.
            self._offset = self._file.tell() - self._framer.buffered
            if lines:
                yield Chunk(lines, self.position)

    def follow(self, stopped: Callable[[], bool]) -> Iterator[Chunk | None]:
        """Chunks as they come; ``None`` when idle (so the caller can do periodic work)."""
        yield from self._resume()
        if self._file is None:
            while not self._open(self.path, 0):
                if stopped():
                    return
                yield None
                time.sleep(self.poll_interval)
        quiet_since: float | None = None
        while not stopped():
            got = False
            for chunk in self._read_available():
                got = True
                yield chunk
            if got:
                quiet_since = None
                continue
            if self._rotated_or_truncated(quiet_since):
                quiet_since = None
                continue
            if quiet_since is None:
                quiet_since = time.monotonic()
            yield None
            time.sleep(self.poll_interval)
        self._close()

    def _rotated_or_truncated(self, quiet_since: float | None) -> bool:
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # between rename and re-create: keep the old file
        if (st.st_dev, st.st_ino) != (self._dev, self._inode):
            # Renamed away: switch once the old file has been quiet for a while.
            if quiet_since is not None and time.monotonic() - quiet_since >= self.rotate_grace:
                log.info("%s was rotated: reading the new file", self.path)
                self.rotations += 1
                self._open(self.path, 0)
                return True
            return False
        if st.st_size < self._file.tell():
            log.warning("%s was truncated (copytruncate?): reading it from the start", self.path)
            self.truncations += 1
            self._open(self.path, 0)
            return True
        return False


def _find_inode(folder: Path, dev: int, inode: int) -> Path | None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (dev, inode) and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
    return None
