"""``vault-observe demo``: a local OpenBao dev server, a short workload, the spans on stdout.

Starts a dev server (``openbao.DevServer``), runs the daemon in this process on a
temporary unix socket, points a ``socket`` audit device at it, drives a small varied
workload through the HTTP API (including errors and concurrent clients), then stops
the daemon (every span is printed to stdout as one JSON line, and sent to whatever
other sinks were asked for) and the server, and prints a short summary on stderr.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .model import PAIRED, SpanRecord
from .openbao import BaoError, BaoNotFound, Client, DevServer
from .sinks.base import LocalSink

if TYPE_CHECKING:
    from .config import Config

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ID = "demo-4242"
READER_POLICY = """
path "secret/data/app/*" {
  capabilities = ["read"]
}
path "secret/metadata/app/*" {
  capabilities = ["list", "read"]
}
"""


@dataclass
class Call:
    method: str
    path: str
    status: int
    client: int  # 0 for the main sequence, 1.. for the concurrent clients
    answered: bool = True  # False when OpenBao logs a request entry and no response entry


@dataclass
class Workload:
    """What a workload run did, as the HTTP clients saw it."""

    calls: list[Call] = field(default_factory=list)
    seconds: float = 0.0
    clients: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(call.status for call in self.calls)

    @property
    def audit_lines(self) -> int:
        """Lines the calls give on an audit device: a request and a response each, or
        only a request for those that OpenBao leaves unanswered."""
        return sum(2 if call.answered else 1 for call in self.calls)


class _Recorder:
    """Makes API calls through one client and records each."""

    def __init__(self, client: Client, workload: Workload, number: int) -> None:
        self.client = client
        self.workload = workload
        self.number = number

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        answered: bool = True,
        **kwargs: Any,
    ) -> Any:
        response = self.client.request(method, path, body, **kwargs)
        self.workload.record(Call(method, path, response.status, self.number, answered))
        if expect is not None and response.status != expect:
            raise BaoError(
                f"{method} {path}: expected {expect}, got {response.status} "
                f"{response.body[:300].decode(errors='replace')}"
            )
        return response.json() if response.body else None


def run_workload(server: DevServer, *, clients: int = 4, rounds: int = 5) -> Workload:
    """A short mix of successful and failing calls, then ``clients`` threads in parallel.

    Covers kv v2 writes and reads (with versions, one carrying an audited
    ``X-Correlation-Id`` header), kv v1, a token create and lookups,
    permission denied with a limited token, 404 reads, a good and a failed userpass
    login, and a response-wrapped secret unwrapped twice (the second unwrap fails and
    OpenBao logs its request entry only).
    """
    workload = Workload(clients=clients)
    started = time.monotonic()
    with server.client() as root_client:
        api = _Recorder(root_client, workload, 0)
        # Set-up, audited like everything else.
        api("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}}, expect=204)
        api("POST", "sys/auth/userpass", {"type": "userpass"}, expect=204)
        api("PUT", "sys/policies/acl/demo-reader", {"policy": READER_POLICY}, expect=204)
        # Devices record this request header (unhashed) from now on: a correlation id in the spans.
        api("PUT", f"sys/config/auditing/request-headers/{CORRELATION_HEADER}", {"hmac": False}, expect=204)
        api(
            "POST",
            "auth/userpass/users/alice",
            {"password": "correct horse", "token_policies": "demo-reader"},
            expect=204,
        )

        # kv v2: two versions, reads of the latest and of version 1.
        api("POST", "secret/data/app/config", {"data": {"db_host": "db.internal", "pool": 8}}, expect=200)
        api("POST", "secret/data/app/config", {"data": {"db_host": "db2.internal", "pool": 16}}, expect=200)
        api("GET", "secret/data/app/config", headers={CORRELATION_HEADER: CORRELATION_ID}, expect=200)
        api("GET", "secret/data/app/config?version=1", expect=200)
        api("LIST", "secret/metadata/app", expect=200)
        # kv v1
        api("PUT", "kv1/team/db", {"username": "app", "password": "s3cr3t"}, expect=204)
        api("GET", "kv1/team/db", expect=200)
        # A limited token: create, look up, use within and outside its policy.
        created = api(
            "POST",
            "auth/token/create",
            {"policies": ["demo-reader"], "ttl": "10m", "meta": {"team": "demo"}},
            expect=200,
        )
        limited = created["auth"]["client_token"]
        api("POST", "auth/token/lookup", {"token": limited}, expect=200)
        api("GET", "auth/token/lookup-self", token=limited, expect=200)
        api("GET", "secret/data/app/config", token=limited, expect=200)
        api("POST", "secret/data/app/config", {"data": {"db_host": "evil"}}, token=limited, expect=403)
        api("GET", "sys/mounts", token=limited, expect=403)
        # Not found.
        api("GET", "secret/data/app/missing", expect=404)
        api("GET", "kv1/team/missing", expect=404)
        # userpass: a good login and a wrong password.
        api("POST", "auth/userpass/login/alice", {"password": "correct horse"}, token=None, expect=200)
        api("POST", "auth/userpass/login/alice", {"password": "wrong"}, token=None, expect=400)
        # Response wrapping: the second unwrap of the same token fails before a response is logged.
        wrapped = api("POST", "sys/wrapping/wrap", {"api_key": "k-123"}, wrap_ttl="60s", expect=200)
        wrap_token = wrapped["wrap_info"]["token"]
        api("POST", "sys/wrapping/unwrap", token=wrap_token, expect=200)
        api("POST", "sys/wrapping/unwrap", {"token": wrap_token}, expect=400, answered=False)

    errors: list[BaseException] = []

    def client_loop(number: int) -> None:
        try:
            with server.client() as client:
                call = _Recorder(client, workload, number)
                for i in range(rounds):
                    path = f"secret/data/load/client-{number}/item-{i}"
                    call("POST", path, {"data": {"n": i, "client": number}}, expect=200)
                    call("GET", path, expect=200)
                    call("GET", "kv1/team/db", expect=200)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=client_loop, args=(n,), name=f"client-{n}") for n in range(1, clients + 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    workload.seconds = time.monotonic() - started
    return workload


class SpanTable(LocalSink):
    """A sink that keeps, per span name, the count, the errors and the durations of
    paired spans, for the table the demo ends with."""

    name = "demo-table"
    internal = True  # the demo's own: not in the sinks' counters

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[str, list[Any]] = {}  # name -> [count, errors, durations in ms]

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        with self._lock:
            for span in spans:
                row = self.rows.setdefault(span.name, [0, 0, []])
                row[0] += 1
                row[1] += 1 if span.error else 0
                if span.pairing == PAIRED:
                    row[2].append((span.end_ns - span.start_ns) / 1e6)
        return 0

    def stats(self) -> dict[str, int]:
        return {}

    def render(self) -> str:
        """The table, busiest span names first; p50/p99 of paired spans (nearest rank)."""
        header = ("span", "count", "errors", "p50 ms", "p99 ms")
        body = []
        with self._lock:
            rows = sorted(self.rows.items(), key=lambda item: (-item[1][0], item[0]))
            for name, (count, errors, durations) in rows:
                body.append(
                    (name, str(count), str(errors), _percentile(durations, 50), _percentile(durations, 99))
                )
            total = (
                "all spans",
                str(sum(row[0] for row in self.rows.values())),
                str(sum(row[1] for row in self.rows.values())),
                _percentile([d for row in self.rows.values() for d in row[2]], 50),
                _percentile([d for row in self.rows.values() for d in row[2]], 99),
            )
        width = max(len(row[0]) for row in [header, *body, total])
        lines = []
        for row in [header, *body, total]:
            lines.append(f"  {row[0]:<{width}}  {row[1]:>5}  {row[2]:>6}  {row[3]:>7}  {row[4]:>7}")
        lines.insert(1, "  " + "-" * (width + 33))
        lines.insert(len(lines) - 1, "  " + "-" * (width + 33))
        return "\n".join(lines)


def _percentile(values: list[float], percent: int) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    rank = max(1, -(-percent * len(ordered) // 100))  # nearest rank: ceil(p/100 * n)
    return f"{ordered[rank - 1]:.2f}"


def wait_until_quiet(read_bytes: Callable[[], int], quiet: float = 0.2, timeout: float = 5.0) -> None:
    """Wait until a byte counter has stopped growing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = read_bytes()
    changed = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = read_bytes()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            return


def run_demo(config: Config, *, err: IO[str] | None = None) -> int:
    """Run the demo; return the exit status (0 on success).

    ``config`` gives the sinks besides stdout (always on) and their settings; its
    inputs are replaced by a temporary unix socket.
    """
    from .config import Listener
    from .errors import VaultObserveError
    from .pipeline import Daemon
    from .sinks.factory import build_checked_sinks

    err = err or sys.stderr
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vault-observe-demo-"))
    socket_path = tmp / "audit.sock"
    demo_config = dataclasses.replace(
        config, listeners=[Listener("unix", str(socket_path))], input=None, stdout=True
    )
    try:
        server = DevServer()
    except BaoNotFound as exc:
        err.write(f"vault-observe demo: {exc}\n")
        shutil.rmtree(tmp, ignore_errors=True)
        return 1
    daemon: Daemon | None = None
    try:
        server.start(timeout=30)
        version = (server.request("GET", "sys/health", token=None).json() or {}).get("version", "?")
        table = SpanTable()
        daemon = Daemon(demo_config, [*build_checked_sinks(demo_config), table])
        daemon.start()
        server.enable_socket_audit(socket_path)
        workload = run_workload(server)
        # Audit writes complete before OpenBao answers, so every entry is already on
        # its way; let the reader catch up (stop would drain the connection anyway).
        framing = daemon.framing
        wait_until_quiet(lambda: framing.bytes)
        counters = daemon.stop()
        daemon = None
    except VaultObserveError as exc:
        err.write(f"vault-observe demo: error: {exc}\n")
        return 2
    except (BaoError, OSError) as exc:
        err.write(f"vault-observe demo: failed: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("vault-observe demo: interrupted\n")
        return 130
    finally:
        if daemon is not None:
            daemon.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()
    lost = _summary(err, version, server, workload, counters, time.monotonic() - started, table)
    return 1 if lost else 0


def _summary(
    err: IO[str],
    version: str,
    server: DevServer,
    workload: Workload,
    counters: dict[str, Any],
    seconds: float,
    table: SpanTable | None = None,
) -> int:
    """Write the summary, the table of spans last; return how many audit lines never
    reached the daemon."""
    statuses = ", ".join(f"{status}x{count}" for status, count in sorted(workload.statuses.items()))
    expected_lines = workload.audit_lines + 2  # the device's test entry and the enable call's response
    lines = int(counters.get("lines", 0))
    spans = int(counters.get("spans", 0))
    err.write(
        f"\nvault-observe demo: OpenBao {version} dev server on {server.host}:{server.port}\n"
        f"  workload: {len(workload.calls)} API calls in {workload.seconds:.2f} s ({statuses}), "
        f"{sum(1 for c in workload.calls if c.client)} of them from {workload.clients} concurrent clients\n"
        f"  daemon:   {lines} audit lines received (expected {expected_lines}), {spans} spans: "
        f"{counters.get('paired', 0)} paired, {counters.get('orphans', 0)} orphan, "
        f"{counters.get('unanswered', 0)} unanswered; {counters.get('probes', 0)} test entry skipped\n"
    )
    for name, stats in counters.get("sinks", {}).items():
        err.write(
            f"  sink {name}: {stats.get('delivered', 0)} delivered, {stats.get('failed', 0)} failed, "
            f"{stats.get('dropped_queue_full', 0) + stats.get('dropped_shutdown', 0)} dropped\n"
        )
    err.write(f"  the spans are on stdout above, one JSON object per line; {seconds:.1f} s in all\n")
    lost = max(0, expected_lines - lines)
    if lost:
        err.write(f"  error: {lost} audit lines did not reach the daemon\n")
    if table is not None:
        err.write("\nspans by name (p50/p99: request to response, paired spans only):\n")
        err.write(table.render() + "\n")
    return lost
