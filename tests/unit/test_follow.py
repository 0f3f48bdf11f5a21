"""--input FILE --follow: growth, rename and copytruncate rotation, checkpoint and resume."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.sinks import CollectingSink
from vault_observe.config import Config
from vault_observe.pipeline import Daemon

REQ = '{"time":"2026-01-01T00:00:%02d.000000001Z","type":"request","auth":{},"request":{"id":"%s","operation":"read","mount_point":"kv/"}}\n'
RESP = '{"time":"2026-01-01T00:00:%02d.500000001Z","type":"response","auth":{},"request":{"id":"%s","operation":"read","mount_point":"kv/"}}\n'


def pair(i: int) -> str:
    rid = f"{i:08x}-0000-4000-8000-000000000000"
    return REQ % (i % 60, rid) + RESP % (i % 60, rid)


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def follower(log: Path, tmp_path: Path, sink: CollectingSink) -> Daemon:
    config = Config(
        input=str(log),
        follow=True,
        checkpoint=str(tmp_path / "checkpoint.json"),
        flush_interval=0.02,
        ttl=3600,
    )
    daemon = Daemon(config, [sink])
    assert daemon.follower is None
    daemon.start()
    return daemon


def ids(sink: CollectingSink) -> list[str]:
    return [s.request_id for s in sink.spans]


def test_follows_growth_rename_rotation_and_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(pair(0) + pair(1))
    sink = CollectingSink()
    daemon = follower(log, tmp_path, sink)
    wait_for(lambda: len(sink.spans) == 2)
    with log.open("a") as fh:  # growth, one line split across writes
        text = pair(2)
        fh.write(text[:50])
        fh.flush()
        time.sleep(0.3)
        fh.write(text[50:])
    wait_for(lambda: len(sink.spans) == 3)
    # rename rotation: the writer still appends to the old file before it reopens
    log.rename(tmp_path / "audit.log.1")
    with (tmp_path / "audit.log.1").open("a") as fh:
        fh.write(pair(3))
    log.write_text(pair(4))
    wait_for(lambda: len(sink.spans) == 5)
    # copytruncate
    shutil.copy(log, tmp_path / "audit.log.2")
    with log.open("r+") as fh:
        fh.truncate(0)
    time.sleep(0.5)
    with log.open("a") as fh:
        fh.write(pair(5))
    wait_for(lambda: len(sink.spans) == 6)
    counters = daemon.stop()
    assert sorted(ids(sink)) == sorted(f"{i:08x}-0000-4000-8000-000000000000" for i in range(6))
    assert counters["paired"] == 6 and counters["truncated"] == 0
    assert daemon.follower is not None and daemon.follower.rotations == 1 and daemon.follower.truncations == 1
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["offset"] == log.stat().st_size and saved["inode"] == log.stat().st_ino


def test_restart_resumes_at_the_checkpoint_without_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("".join(pair(i) for i in range(10)))
    first = CollectingSink()
    daemon = follower(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 10)
    daemon.stop()
    with log.open("a") as fh:  # written while the daemon was down
        fh.write("".join(pair(i) for i in range(10, 15)))
    second = CollectingSink()
    daemon = follower(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 5)
    time.sleep(0.3)
    daemon.stop()
    assert sorted(ids(second)) == sorted(f"{i:08x}-0000-4000-8000-000000000000" for i in range(10, 15))


def test_restart_finds_a_file_rotated_while_down(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    first = CollectingSink()
    daemon = follower(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 1)
    daemon.stop()
    with log.open("a") as fh:
        fh.write(pair(1))  # after the checkpoint, in the file about to be rotated
    log.rename(tmp_path / "audit.log.1")
    log.write_text(pair(2))
    second = CollectingSink()
    daemon = follower(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 2)
    daemon.stop()
    assert sorted(ids(second)) == [f"{i:08x}-0000-4000-8000-000000000000" for i in (1, 2)]


def test_checkpoint_waits_for_a_failing_sink(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    sink = CollectingSink(fail=False, delay=0.0)
    sink.fail = True  # every span fails: it is handled (counted), and the checkpoint moves on
    daemon = follower(log, tmp_path, sink)
    wait_for(lambda: daemon.workers[0].counts["failed"] == 1)
    counters = daemon.stop()
    assert counters["sinks"]["collect"]["failed"] == 1
    assert os.path.exists(tmp_path / "checkpoint.json")
