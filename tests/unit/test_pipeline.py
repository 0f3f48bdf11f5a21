"""The daemon end to end on the reference sinks contract: sockets, replay, shutdown."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.sinks import CollectingSink
from vault_observe.config import Config, Listener
from vault_observe.model import ORPHAN, PAIRED, UNANSWERED
from vault_observe.pipeline import Daemon
from vault_observe.sink_worker import Acknowledgements, SinkWorker

REQ = b'{"time":"2026-01-01T00:00:00.000000001Z","type":"request","auth":{},"request":{"id":"%s","operation":"read","mount_point":"kv/","path":"kv/x"}}\n'
RESP = b'{"time":"2026-01-01T00:00:00.250000001Z","type":"response","auth":{},"request":{"id":"%s","operation":"read","mount_point":"kv/","path":"kv/x"},"response":{"data":{"a":1}}}\n'
ID1 = b"11111111-2222-3333-4444-555555555555"
ID2 = b"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def unix_config(tmp_path: Path, **kw: object) -> Config:
    return Config(listeners=[Listener("unix", str(tmp_path / "audit.sock"))], **kw)  # type: ignore[arg-type]


def send(path: str, *parts: bytes, pause: float = 0.0) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        for part in parts:
            client.sendall(part)
            if pause:
                time.sleep(pause)


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_socket_pairs_requests_and_responses_and_cleans_up(tmp_path: Path) -> None:
    sink = CollectingSink()
    config = unix_config(tmp_path, flush_interval=0.05)
    daemon = Daemon(config, [sink])
    daemon.start()
    path = config.listeners[0].address
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # The request and its response split across reads, one connection.
    send(path, (REQ % ID1)[:30], (REQ % ID1)[30:] + (RESP % ID1)[:10], (RESP % ID1)[10:], pause=0.05)
    wait_for(lambda: len(sink.spans) == 1)
    counters = daemon.stop()
    span = sink.spans[0]
    assert span.pairing == PAIRED
    assert span.trace_id.hex() == ID1.decode().replace("-", "")
    assert span.end_ns - span.start_ns == 250_000_000
    assert span.name == "read kv/"
    assert counters["lines"] == 2 and counters["truncated"] == 0
    assert counters["sinks"]["collect"]["delivered"] == 1
    assert sink.flushed and sink.closed
    assert not os.path.exists(path)


def test_fragment_is_not_joined_across_connections(tmp_path: Path) -> None:
    sink = CollectingSink()
    config = unix_config(tmp_path, flush_interval=0.05)
    daemon = Daemon(config, [sink])
    daemon.start()
    path = config.listeners[0].address
    req = REQ % ID1
    send(path, req[: len(req) // 2])  # abandoned mid-entry, as after a write timeout
    send(path, req, RESP % ID1)  # the whole entry again on a new connection
    wait_for(lambda: len(sink.spans) == 1)
    counters = daemon.stop()
    assert counters["truncated"] == 1
    assert counters["malformed"] == 0
    assert sink.spans[0].pairing == PAIRED


def test_many_concurrent_connections(tmp_path: Path) -> None:
    sink = CollectingSink()
    config = unix_config(tmp_path, flush_interval=0.05)
    daemon = Daemon(config, [sink])
    daemon.start()
    path = config.listeners[0].address
    ids = [f"{i:08x}-0000-0000-0000-000000000000".encode() for i in range(40)]

    def client(rid: bytes) -> None:
        send(path, REQ % rid, RESP % rid)

    threads = [threading.Thread(target=client, args=(rid,)) for rid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(sink.spans) == 40)
    counters = daemon.stop()
    assert sorted(s.request_id for s in sink.spans) == sorted(r.decode() for r in ids)
    assert counters["connections"] == 40
    assert all(s.pairing == PAIRED for s in sink.spans)


def test_stop_turns_pending_requests_into_unanswered_spans(tmp_path: Path) -> None:
    sink = CollectingSink()
    daemon = Daemon(unix_config(tmp_path), [sink])
    daemon.start()
    send(daemon.config.listeners[0].address, REQ % ID1)
    wait_for(lambda: daemon.core.counters()["requests"] == 1)
    counters = daemon.stop()
    assert [s.pairing for s in sink.spans] == [UNANSWERED]
    assert counters["unanswered"] == 1


def test_tcp_and_udp_listeners(tmp_path: Path) -> None:
    sink = CollectingSink()
    config = Config(
        listeners=[Listener("tcp", "127.0.0.1", 0), Listener("udp", "127.0.0.1", 0)], flush_interval=0.05
    )
    daemon = Daemon(config, [sink])
    daemon.start()
    assert daemon.source is not None
    tcp_url, udp_url = daemon.source.bound_addresses()
    tcp_port = int(tcp_url.rsplit(":", 1)[1])
    udp_port = int(udp_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", tcp_port)) as client:
        client.sendall(REQ % ID1 + RESP % ID1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(REQ % ID2, ("127.0.0.1", udp_port))
        udp.sendto((RESP % ID2).rstrip(b"\n"), ("127.0.0.1", udp_port))  # one entry per datagram
    wait_for(lambda: len(sink.spans) == 2)
    daemon.stop()
    assert {s.request_id for s in sink.spans} == {ID1.decode(), ID2.decode()}


def test_a_datagram_over_the_line_limit_is_judged_once_by_the_core(caplog: pytest.LogCaptureFixture) -> None:
    """A datagram is one whole line: the core applies --max-line-bytes to it as to any
    line, so it is counted once and the warning shows its first bytes."""
    sink = CollectingSink()
    config = Config(listeners=[Listener("udp", "127.0.0.1", 0)], max_line_bytes=100, flush_interval=0.05)
    daemon = Daemon(config, [sink])
    daemon.start()
    assert daemon.sockets is not None
    udp_port = int(daemon.sockets.bound_addresses()[0].rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b'{"oversize":"' + b"x" * 200 + b'"}', ("127.0.0.1", udp_port))
        udp.sendto(b"{}", ("127.0.0.1", udp_port))
    wait_for(lambda: daemon.core.counters()["lines"] == 2)
    counters = daemon.stop()
    assert counters["oversize"] == 1
    assert any(
        "skipped 1 oversize line(s)" in record.getMessage() and "{\"oversize\"" in record.getMessage()
        for record in caplog.records
    )


def test_stale_socket_file_is_replaced_and_other_files_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    daemon = Daemon(unix_config(tmp_path), [CollectingSink()])
    daemon.start()
    daemon.stop()
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        Daemon(Config(listeners=[Listener("unix", str(regular))]), []).serve()
    assert regular.read_text() == "keep me"


def test_socket_mode_is_configurable(tmp_path: Path) -> None:
    daemon = Daemon(unix_config(tmp_path, socket_mode=0o660), [CollectingSink()])
    daemon.start()
    mode = stat.S_IMODE(os.stat(daemon.config.listeners[0].address).st_mode)
    daemon.stop()
    assert mode == 0o660


def test_slow_sink_drops_and_counts_but_never_blocks_the_reader(tmp_path: Path) -> None:
    slow = CollectingSink("slow", delay=0.5)
    fast = CollectingSink("fast")
    config = unix_config(tmp_path, queue_size=40, batch_size=5, flush_interval=0.01, shutdown_timeout=3.0)
    daemon = Daemon(config, [slow, fast])
    daemon.start()
    ids = [f"{i:08x}-0000-0000-0000-000000000001".encode() for i in range(200)]
    started = time.monotonic()
    parts = [b"".join(REQ % r + RESP % r for r in ids[i : i + 10]) for i in range(0, 200, 10)]
    send(config.listeners[0].address, *parts, pause=0.02)
    wait_for(lambda: len(fast.spans) == 200)
    assert time.monotonic() - started < 5  # the slow sink did not hold the reader
    counters = daemon.stop()
    slow_counts = counters["sinks"]["slow"]
    assert slow_counts["dropped_queue_full"] > 0
    assert (
        slow_counts["delivered"]
        + slow_counts["dropped_queue_full"]
        + slow_counts["dropped_shutdown"]
        + slow_counts["failed"]
        == 200
    )
    assert counters["sinks"]["fast"]["delivered"] == 200


def test_replay_delivers_everything_even_to_a_slow_sink(tmp_path: Path, sample_log: Path) -> None:
    sink = CollectingSink(delay=0.001)
    config = Config(input=str(sample_log), queue_size=50, batch_size=20)
    daemon = Daemon(config, [sink])
    assert daemon.run() == 0
    counters = daemon.result
    assert counters is not None
    lines = sample_log.read_bytes().count(b"\n")
    assert counters["lines"] == lines
    assert len(sink.spans) == counters["spans"] == counters["sinks"]["collect"]["delivered"]
    assert counters["sinks"]["collect"]["dropped_queue_full"] == 0


def test_replay_counts_a_truncated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(REQ % ID1 + RESP % ID1 + (REQ % ID2)[:40])
    sink = CollectingSink()
    daemon = Daemon(Config(input=str(log)), [sink])
    daemon.run()
    assert daemon.result is not None
    assert daemon.result["truncated"] == 1
    assert [s.pairing for s in sink.spans] == [PAIRED]


def test_capture_holds_the_exact_lines_received(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    sink = CollectingSink()
    daemon = Daemon(unix_config(tmp_path, capture=str(capture), flush_interval=0.05), [sink])
    daemon.start()
    send(daemon.config.listeners[0].address, RESP % ID2, b'{"broken')
    wait_for(lambda: len(sink.spans) == 1)
    daemon.stop()
    assert capture.read_bytes() == RESP % ID2
    assert sink.spans[0].pairing == ORPHAN
    assert json.loads(sink.spans[0].attrs_json)["response.data.a"] == 1


def test_sink_worker_batches_and_flushes_partial_batches() -> None:
    sink = CollectingSink()
    worker = SinkWorker(sink, queue_size=100, batch_size=10, flush_interval=0.05, retry_window=1.0)
    worker.start()
    from vault_observe._core_py import Core

    core = Core()
    core.feed(b"".join(RESP % f"{i:08x}-0000-0000-0000-000000000002".encode() for i in range(25)))
    worker.offer(core.drain())
    wait_for(lambda: len(sink.spans) == 25)
    worker.stop(time.monotonic() + 1)
    worker.close()
    assert sink.batches == 3  # 10 + 10 + a partial 5 after flush_interval


def test_sink_worker_with_two_senders_delivers_each_span_once_and_flushes_once() -> None:
    class TwoSenders(CollectingSink):
        concurrency = 2

        def __init__(self) -> None:
            super().__init__(delay=0.01)
            self.flushes = 0

        def flush(self, timeout: float) -> None:
            self.flushes += 1

    sink = TwoSenders()
    worker = SinkWorker(sink, queue_size=1000, batch_size=10, flush_interval=0.01, retry_window=1.0)
    worker.start()
    from vault_observe._core_py import Core

    core = Core()
    core.feed(b"".join(RESP % f"{i:08x}-0000-0000-0000-000000000003".encode() for i in range(200)))
    worker.offer(core.drain())
    wait_for(lambda: len(sink.spans) == 200)
    worker.stop(time.monotonic() + 1)
    worker.close()
    assert len({s.request_id for s in sink.spans}) == 200
    assert worker.counts["delivered"] == 200
    assert sink.flushes == 1


def test_the_core_lets_go_of_the_gil_only_when_sender_threads_need_it(tmp_path: Path) -> None:
    assert Daemon(unix_config(tmp_path), sinks=[CollectingSink()]).core.release_gil
    assert not Daemon(unix_config(tmp_path), sinks=[]).core.release_gil


class CountingWorker:
    """What Acknowledgements reads of a SinkWorker: spans given, spans confirmed."""

    def __init__(self) -> None:
        self.counts = {"queued": 0}
        self.confirmed = 0


def test_a_mark_is_acknowledged_once_every_worker_confirmed_the_spans_before_it() -> None:
    fast, slow = CountingWorker(), CountingWorker()
    acked: list[object] = []
    acks = Acknowledgements([fast, slow], acked.append)  # type: ignore[list-item]
    fast.counts["queued"] = slow.counts["queued"] = 10
    acks.add("a")
    fast.counts["queued"] = slow.counts["queued"] = 20
    acks.add("b")
    acks.add("c")  # no span since "b": it supersedes it
    fast.confirmed = 20
    acks.advance()
    assert acked == []  # the slow worker has confirmed nothing yet
    slow.confirmed = 15
    acks.advance()
    assert acked == ["a"]
    slow.confirmed = 20
    acks.advance()
    assert acked == ["a", "c"]
    acks.advance()  # nothing new: the last mark again, for a source that could not keep it
    assert acked == ["a", "c", "c"]
    acks.add("d")  # its spans are all confirmed already
    assert acked[-1] == "d"

