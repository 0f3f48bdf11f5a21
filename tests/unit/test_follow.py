"""--input FILE --follow: growth, rename and copytruncate rotation, checkpoint and resume."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.receivers import ZipkinReceiver
from tests.sinks import CollectingSink
from vault_observe.config import Config, load_config
from vault_observe.errors import ConfigError
from vault_observe.model import SpanRecord
from vault_observe.pipeline import Daemon
from vault_observe.sinks.zipkin import ZipkinSink
from vault_observe.sources.follow import Checkpoint, Position, Saved

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


# -- rotation: the old file is read until the writer has moved


def rid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-000000000000"


def test_a_rotated_file_is_read_until_the_writer_writes_to_the_new_one(tmp_path: Path) -> None:
    """logrotate with ``create`` and a slow postrotate: the new file exists (empty) while
    the writer goes on appending to the renamed one for longer than the quiet grace."""
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    sink = CollectingSink()
    daemon = follower(log, tmp_path, sink)
    try:
        wait_for(lambda: len(sink.spans) == 1)
        log.rename(tmp_path / "audit.log.1")
        log.touch()  # create: empty until the writer reopens
        time.sleep(2.0)  # quiet for twice the grace: not a reason to leave the old file
        with (tmp_path / "audit.log.1").open("a") as fh:
            fh.write(pair(1))
        wait_for(lambda: len(sink.spans) == 2)
        with log.open("a") as fh:  # the writer reopened: the new file gets data
            fh.write(pair(2))
        wait_for(lambda: len(sink.spans) == 3)
    finally:
        counters = daemon.stop()
    assert ids(sink) == [rid(0), rid(1), rid(2)]
    assert daemon.follower is not None and daemon.follower.rotations == 1
    assert counters["rotations"] == 1 and counters["truncated"] == 0


def test_a_restart_between_rename_and_reopen_reads_the_old_file_until_the_writer_moves(
    tmp_path: Path,
) -> None:
    """The checkpoint's file was renamed while the daemon was down, and the writer still
    appends to it after the restarted daemon has read it to its end."""
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    first = CollectingSink()
    daemon = follower(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 1)
    daemon.stop()
    with log.open("a") as fh:
        fh.write(pair(1))
    log.rename(tmp_path / "audit.log.1")
    log.touch()
    second = CollectingSink()
    daemon = follower(log, tmp_path, second)
    try:
        wait_for(lambda: len(second.spans) == 1)
        time.sleep(1.5)  # longer than the quiet grace
        with (tmp_path / "audit.log.1").open("a") as fh:
            fh.write(pair(2))  # the writer has not reopened yet
        wait_for(lambda: len(second.spans) == 2)
        with log.open("a") as fh:
            fh.write(pair(3))
        wait_for(lambda: len(second.spans) == 3)
    finally:
        daemon.stop()
    assert ids(first) == [rid(0)]
    assert ids(second) == [rid(1), rid(2), rid(3)]


# -- delivery: retried until accepted, checkpoint on confirmation


class GatedSink(CollectingSink):
    """Two senders; a batch holding ``hold`` waits until ``gate`` is set."""

    concurrency = 2

    def __init__(self, hold: str) -> None:
        super().__init__()
        self.hold = hold
        self.gate = threading.Event()
        self.held = threading.Event()

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if any(s.request_id == self.hold for s in spans):
            self.held.set()
            self.gate.wait(30)
        return super().send(spans, deadline)


def saved_offset(tmp_path: Path) -> int | None:
    path = tmp_path / "checkpoint.json"
    return json.loads(path.read_text())["offset"] if path.exists() else None


def test_the_checkpoint_never_passes_a_batch_still_in_flight(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("")
    sink = GatedSink(hold=rid(0))
    config = Config(
        input=str(log),
        follow=True,
        checkpoint=str(tmp_path / "checkpoint.json"),
        flush_interval=0.01,
        batch_size=5,
        ttl=3600,
    )
    daemon = Daemon(config, [sink])
    daemon.start()
    try:
        for start in range(0, 20, 5):  # four reads, four batches
            with log.open("a") as fh:
                fh.write("".join(pair(i) for i in range(start, start + 5)))
            if start == 0:
                assert sink.held.wait(10)
            else:
                wait_for(lambda n=start: len(sink.spans) == n)
        # Batches 2-4 are delivered by the other sender; batch 1 is still in flight.
        time.sleep(0.5)
        assert saved_offset(tmp_path) in (None, 0)
        sink.gate.set()
        wait_for(lambda: len(sink.spans) == 20)
        wait_for(lambda: saved_offset(tmp_path) == log.stat().st_size)
    finally:
        sink.gate.set()
        daemon.stop()


class CheckpointReadingSink(CollectingSink):
    """One sender; notes the checkpoint's offset as each batch arrives."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.seen: list[int | None] = []

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        self.seen.append(json.loads(self.path.read_text())["offset"] if self.path.exists() else None)
        return super().send(spans, deadline)


def test_the_checkpoint_is_written_when_a_batch_is_confirmed(tmp_path: Path) -> None:
    """Each batch finds the checkpoint past the one before it: saved on confirmation,
    not once a second."""
    log = tmp_path / "audit.log"
    log.write_text("")
    sink = CheckpointReadingSink(tmp_path / "checkpoint.json")
    daemon = follower(log, tmp_path, sink)
    ends = []
    try:
        for i in range(5):
            with log.open("a") as fh:
                fh.write(pair(i))
            ends.append(log.stat().st_size)
            wait_for(lambda n=i + 1: len(sink.spans) == n)
    finally:
        daemon.stop()
    assert sink.seen[0] in (None, 0) and sink.seen[1:] == ends[:-1]
    assert saved_offset(tmp_path) == ends[-1]


def test_a_sink_down_longer_than_the_retry_window_gets_every_span_once_it_is_back(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("".join(pair(i) for i in range(20)))
    with ZipkinReceiver() as receiver:
        receiver.fail_with = 503
        sink = ZipkinSink(receiver.url, backoff_initial=0.02, backoff_max=0.1)
        config = Config(
            input=str(log),
            follow=True,
            checkpoint=str(tmp_path / "checkpoint.json"),
            flush_interval=0.02,
            retry_window=0.2,
            ttl=3600,
        )
        daemon = Daemon(config, [sink])
        daemon.start()
        try:
            assert receiver.wait_for(lambda: len(receiver.requests) >= 10, timeout=20)
            time.sleep(0.5)  # well past the retry window
            assert daemon.workers[0].counts["failed"] == 0
            assert saved_offset(tmp_path) in (None, 0)
            assert daemon.workers[0].failing_since is not None  # health sees the outage
            receiver.fail_with = None
            assert receiver.wait_for(lambda: len(receiver.spans) == 20, timeout=20)
            wait_for(lambda: saved_offset(tmp_path) == log.stat().st_size)
            assert daemon.workers[0].failing_since is None
        finally:
            counters = daemon.stop()
    assert sorted(s["traceId"] for s in receiver.spans) == sorted(rid(i).replace("-", "") for i in range(20))
    assert counters["sinks"]["zipkin"]["failed"] == 0
    assert counters["sinks"]["zipkin"]["delivered"] == 20
    assert receiver.errors == []


def test_a_stop_during_an_outage_with_a_full_queue_loses_nothing(tmp_path: Path) -> None:
    """The reader waits for room (the file is the buffer); a stop then ends that wait, and
    the next run sends everything once."""
    log = tmp_path / "audit.log"
    log.write_text("".join(pair(i) for i in range(60)))
    with ZipkinReceiver() as receiver:
        receiver.fail_with = 503
        config = Config(
            input=str(log),
            follow=True,
            checkpoint=str(tmp_path / "checkpoint.json"),
            flush_interval=0.02,
            queue_size=10,
            batch_size=5,
            shutdown_timeout=0.5,
            ttl=3600,
        )
        daemon = Daemon(config, [ZipkinSink(receiver.url, backoff_initial=0.02, backoff_max=0.1)])
        assert daemon.workers[0].queue_size == 10  # at most four batches (20 spans) here
        daemon.start()
        assert receiver.wait_for(lambda: len(receiver.requests) >= 5, timeout=20)
        stopper = threading.Thread(target=daemon.stop)
        stopper.start()
        stopper.join(20)
        assert not stopper.is_alive(), "the daemon did not stop while its reader waited for room"
        counters = daemon.result
        assert counters is not None and counters["sinks"]["zipkin"]["delivered"] == 0
        assert saved_offset(tmp_path) in (None, 0)
        receiver.fail_with = None
        again = Daemon(config, [ZipkinSink(receiver.url)])
        again.start()
        try:
            assert receiver.wait_for(lambda: len(receiver.spans) == 60, timeout=20)
            wait_for(lambda: saved_offset(tmp_path) == log.stat().st_size)
        finally:
            again.stop()
    assert sorted(s["traceId"] for s in receiver.spans) == sorted(rid(i).replace("-", "") for i in range(60))


def test_follow_refuses_the_libhoney_encoder() -> None:
    """libhoney reports deliveries after ``send`` returns: the checkpoint would pass them."""
    env = {"HONEYCOMB_API_KEY": "k"}
    args = ["--input", "audit.log", "--follow", "--honeycomb"]
    with pytest.raises(ConfigError, match="libhoney"):
        load_config([*args, "--honeycomb-encoder", "libhoney"], env=env)
    config, _ = load_config(args, env=env)
    assert config.follow and config.honeycomb_encoder == "native"


def test_a_checkpoint_of_the_earlier_format_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text('{"path": "/var/log/audit.log", "dev": 1, "inode": 2, "offset": 3}')
    saved = Checkpoint(str(path)).load()
    assert saved == Saved(Position("/var/log/audit.log", 1, 2, 3))
    Checkpoint(str(path)).save(Saved(Position("a", 1, 2, 3), (Position("b", 1, 5, 7),), 11))
    assert Checkpoint(str(path)).load() == Saved(Position("a", 1, 2, 3), (Position("b", 1, 5, 7),), 11)


# -- pairs survive restarts: pending requests are rebuilt from the checkpoint


@pytest.fixture
def core_impl(impl: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the daemon on each core."""
    from tests.implementations import core_class
    from vault_observe import core as core_module

    monkeypatch.setattr(core_module, "Core", core_class(impl))
    return impl


def req(i: int) -> str:
    return REQ % (i % 60, rid(i))


def resp(i: int) -> str:
    return RESP % (i % 60, rid(i))


def patient(log: Path, tmp_path: Path, sink: CollectingSink) -> Daemon:
    """A follower whose pending requests never expire by the wall clock here."""
    config = Config(
        input=str(log),
        follow=True,
        checkpoint=str(tmp_path / "checkpoint.json"),
        flush_interval=0.02,
        ttl=1e8,
    )
    daemon = Daemon(config, [sink])
    daemon.start()
    return daemon


def pairings(sink: CollectingSink) -> dict[str, int]:
    return {s.request_id: s.pairing for s in sink.spans}


def test_a_request_pending_at_a_stop_is_paired_with_its_response_after_the_restart(
    tmp_path: Path, core_impl: str
) -> None:
    log = tmp_path / "audit.log"
    log.write_text("".join(req(i) for i in range(5)) + resp(0) + resp(1))
    first = CollectingSink()
    daemon = patient(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 2)
    counters = daemon.stop()
    # Stopping sends no unanswered span: the checkpoint says where the requests were read.
    assert pairings(first) == {rid(0): 0, rid(1): 0}
    assert counters["unanswered"] == 0 and counters["pending"] == 3
    with log.open("a") as fh:
        fh.write(resp(2) + resp(3) + resp(4) + pair(5))
    second = CollectingSink()
    daemon = patient(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 4)
    time.sleep(0.3)
    counters = daemon.stop()
    assert pairings(second) == {rid(i): 0 for i in (2, 3, 4, 5)}  # paired, none twice
    assert len(second.spans) == 4
    assert counters["orphans"] == 0 and counters["unanswered"] == 0
    assert counters["reread_spans"] == 2 and counters["reread_lines"] == 7


def test_pending_requests_are_rebuilt_across_a_rotation(tmp_path: Path, core_impl: str) -> None:
    log = tmp_path / "audit.log"
    log.write_text(req(0) + req(1) + resp(0))
    first = CollectingSink()
    daemon = patient(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 1)
    log.rename(tmp_path / "audit.log.1")
    log.write_text(pair(2))
    wait_for(lambda: len(first.spans) == 2)
    daemon.stop()
    assert pairings(first) == {rid(0): 0, rid(2): 0}
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    # Files by inode: the request's (now renamed) from its offset, then the current one.
    inodes = [(tmp_path / "audit.log.1").stat().st_ino, log.stat().st_ino]
    assert [item["inode"] for item in saved["replay"]] == inodes
    with log.open("a") as fh:
        fh.write(resp(1))  # its request is in the rotated file
    second = CollectingSink()
    daemon = patient(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 1)
    time.sleep(0.3)
    counters = daemon.stop()
    assert pairings(second) == {rid(1): 0}
    assert counters["orphans"] == 0 and counters["reread_spans"] == 2


def test_an_earlier_checkpoint_resends_only_what_came_after_it(tmp_path: Path, core_impl: str) -> None:
    """A kill -9 leaves the last checkpoint saved: the restart re-sends the spans
    delivered after it, and pairs the requests pending then."""
    log = tmp_path / "audit.log"
    log.write_text(req(0) + req(1) + resp(0))
    first = CollectingSink()
    daemon = patient(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 1)
    wait_for(lambda: saved_offset(tmp_path) == log.stat().st_size)
    early = (tmp_path / "checkpoint.json").read_text()
    with log.open("a") as fh:
        fh.write(req(2) + resp(1) + pair(3))
    wait_for(lambda: len(first.spans) == 3)
    daemon.stop()
    (tmp_path / "checkpoint.json").write_text(early)  # as if killed before the later saves
    with log.open("a") as fh:
        fh.write(resp(2))
    second = CollectingSink()
    daemon = patient(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 3)
    time.sleep(0.3)
    counters = daemon.stop()
    assert pairings(second) == {rid(1): 0, rid(2): 0, rid(3): 0}
    assert counters["orphans"] == 0 and counters["reread_spans"] == 1


def test_a_file_truncated_while_down_is_read_as_new_not_replayed(tmp_path: Path, core_impl: str) -> None:
    """copytruncate while the daemon is down: what the file holds now is new, even where
    the checkpoint asked to read old lines again."""
    log = tmp_path / "audit.log"
    log.write_text(req(0) + pair(1) + pair(2))
    first = CollectingSink()
    daemon = patient(log, tmp_path, first)
    wait_for(lambda: len(first.spans) == 2)
    daemon.stop()
    with log.open("r+") as fh:
        fh.truncate(0)
    log.write_text(pair(3))
    second = CollectingSink()
    daemon = patient(log, tmp_path, second)
    wait_for(lambda: len(second.spans) == 1)
    time.sleep(0.3)
    counters = daemon.stop()
    assert pairings(second) == {rid(3): 0}
    assert counters["lost_files"] == 1 and counters["reread_spans"] == 0


def test_metrics_show_a_sink_retried_until_accepted_as_down_and_the_small_queue(tmp_path: Path) -> None:
    from tests.unit.test_metrics import scrape, value

    log = tmp_path / "audit.log"
    log.write_text("".join(pair(i) for i in range(3)))
    with ZipkinReceiver() as receiver:
        receiver.fail_with = 503
        config = Config(
            input=str(log),
            follow=True,
            checkpoint=str(tmp_path / "checkpoint.json"),
            flush_interval=0.02,
            batch_size=7,
            ttl=3600,
            metrics_address="127.0.0.1:0",
        )
        daemon = Daemon(config, [ZipkinSink(receiver.url, backoff_initial=0.02, backoff_max=0.1)])
        daemon.start()
        try:
            assert receiver.wait_for(lambda: len(receiver.requests) >= 3, timeout=20)
            samples = scrape(daemon)
            assert value(samples, "vault_observe_sink_queue_capacity", sink="zipkin") == 4 * 7
            assert value(samples, "vault_observe_sink_up", sink="zipkin") == 0
            assert value(samples, "vault_observe_sink_failing_seconds", sink="zipkin") > 0
            receiver.fail_with = None
            assert receiver.wait_for(lambda: len(receiver.spans) == 3, timeout=20)
            assert value(scrape(daemon), "vault_observe_sink_up", sink="zipkin") == 1
        finally:
            daemon.stop()


def test_a_checkpoint_that_cannot_be_written_is_counted_and_following_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    config = Config(
        input=str(log),
        follow=True,
        checkpoint=str(tmp_path / "missing-folder" / "checkpoint.json"),
        flush_interval=0.02,
        ttl=3600,
    )
    sink = CollectingSink()
    daemon = Daemon(config, [sink])
    daemon.start()
    try:
        wait_for(lambda: len(sink.spans) == 1)
        with log.open("a") as fh:
            fh.write(pair(1))
        wait_for(lambda: len(sink.spans) == 2)
    finally:
        counters = daemon.stop()
    assert ids(sink) == [rid(0), rid(1)]
    assert counters["checkpoint_errors"] >= 2


def test_two_rotations_while_down_are_read_in_order(tmp_path: Path) -> None:
    """The checkpoint's file was rotated twice before the restart: the file in between is
    found among the log's rotated copies (a compressed one and the checkpoint are not)."""
    log = tmp_path / "audit.log"
    log.write_text(pair(0))
    config = Config(
        input=str(log),
        follow=True,
        checkpoint=str(tmp_path / "audit.log.checkpoint"),
        flush_interval=0.02,
        ttl=3600,
    )
    first = CollectingSink()
    daemon = Daemon(config, [first])
    daemon.start()
    wait_for(lambda: len(first.spans) == 1)
    daemon.stop()
    (tmp_path / "audit.log.3.gz").write_bytes(b"\x1f\x8b not a log")
    with log.open("a") as fh:
        fh.write(pair(1))
    log.rename(tmp_path / "audit.log.1")  # first rotation
    time.sleep(0.02)
    log.write_text(pair(2))
    (tmp_path / "audit.log.1").rename(tmp_path / "audit.log.2")  # second rotation
    log.rename(tmp_path / "audit.log.1")
    time.sleep(0.02)
    log.write_text(pair(3))
    second = CollectingSink()
    daemon = Daemon(config, [second])
    daemon.start()
    try:
        wait_for(lambda: len(second.spans) == 3)
        time.sleep(0.3)
    finally:
        counters = daemon.stop()
    assert ids(second) == [rid(1), rid(2), rid(3)]
    assert counters["rotations"] == 2 and counters["malformed"] == 0
