"""The shipped Grafana dashboard, Prometheus rules and the README's PromQL, evaluated by a
real Prometheus scraping a real daemon.

One daemon process reads the corpus over its unix socket (paced over several scrapes,
as Vault writes it) with faults injected: a Honeycomb backend that answers 503, a
malformed, an invalid and a truncated line, a small ``--queue-size`` (so the failing
sink drops spans) and a small ``--max-pending`` filled with requests that never get a
response. A Prometheus server scrapes it every second and loads the rules file. Then
every query of every dashboard panel, every alert expression and every PromQL example
of the README goes through Prometheus's HTTP API: each must parse, and each returns at
least one series where the fed data should make one (alerts that must stay quiet
return nothing).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, REPO, SHARED_CORPUS
from tests.deploy.prometheus import PrometheusServer, import_yaml, require_tool
from tests.deploy.prometheus import metrics_url as daemon_metrics_url
from tests.integration.harness import API_KEY, ObserveProcess
from tests.receivers import HoneycombReceiver, ZipkinReceiver

yaml = import_yaml()

RULES = REPO / "deploy" / "prometheus" / "vault-observe-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "vault-observe.json"
README = REPO / "README.md"

# Alerts the injected faults must fire, and alerts that must stay quiet. A rule that is
# in neither set fails test_every_rule_is_expected.
FIRING = {
    "VaultObserveSinkDown",  # the Honeycomb backend answers 503
    "VaultObserveSpansDropped",  # ... so its queue fills and spans are dropped
    "VaultObserveSkippedLines",  # a malformed, an invalid and a truncated line
    "VaultObservePendingNearLimit",  # requests without a response fill --max-pending
    "VaultObservePendingEvictions",  # ... and push older ones out
    "VaultObserveSinkQueueNearFull",  # the failing sink's queue
}
QUIET = {
    "VaultObserveNoAuditLines",  # lines arrived in the last minutes (fires before the feed: see below)
    "VaultObserveMemoryHigh",  # the daemon is far under 200 MiB
}
# Metrics that other parts of the daemon export; a query on one the scrape lacks is
# skipped with the reason, any other missing metric is a failure.
OPTIONAL_METRICS = {
    "vault_observe_sink_queue_bytes": "the per-sink queue bytes gauge",
    "process_resident_memory_bytes": "prometheus_client's process collector",
}
# Grafana's variables, as a dashboard with every job, instance and mount selected sees them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "5m",
    "$__interval": "15s",
    "$job": ".*",
    "$instance": ".*",
    "$mount": ".*",
}
MAX_PENDING = 40
UNANSWERED = 60  # requests fed without a response: over MAX_PENDING, so some are evicted
QUEUE_SIZE = 200


def corpus() -> Path:
    return SHARED_CORPUS if SHARED_CORPUS.is_file() else DATA / "openbao-sample.jsonl"


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.panel}/{self.ref}"


def dashboard_queries() -> list[PanelQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(PanelQuery(panel["title"], target["refId"], target["expr"], target.get("instant", False)))
    return found


def readme_examples() -> list[str]:
    """Every expression in the README's ```promql blocks (expressions are separated by a blank line)."""
    blocks = re.findall(r"```promql\n(.*?)```", README.read_text(), re.DOTALL)
    return [expr.strip() for block in blocks for expr in re.split(r"\n\s*\n", block) if expr.strip()]


def substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):  # $__range before $__rate...
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


# ---------------------------------------------------------------- the running stack


@dataclass
class Stack:
    prometheus: PrometheusServer
    daemon: ObserveProcess
    metrics_url: str
    quiet_time: float  # the daemon was up and had read nothing yet
    scraped_metrics: set[str]
    mounts: set[str]


def feed(path: str, data: bytes) -> int:
    """The corpus over one connection in 30 paced chunks (so Prometheus scrapes it while
    it grows), then the faults; returns the number of whole lines sent."""
    lines = data.splitlines(keepends=True)
    template = next(
        json.loads(line)
        for line in lines
        if b'"type":"request"' in line and b"sys/audit/test" not in line and b'"id":' in line
    )
    unanswered = []
    for _ in range(UNANSWERED):
        template["request"]["id"] = str(uuid.uuid4())
        unanswered.append(json.dumps(template, separators=(",", ":")).encode() + b"\n")
    step = max(1, len(lines) // 30)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        for start in range(0, len(lines), step):
            conn.sendall(b"".join(lines[start : start + step]))
            time.sleep(0.2)
        conn.sendall(b"this is not json\n")  # malformed
        conn.sendall(b"[1, 2, 3]\n")  # invalid: not an object
        conn.sendall(b"".join(unanswered))
    # A connection that ends mid-line, as after a Vault write timeout: truncated.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(b'{"time":"2026-11-27T08:07:17.352864571Z","type":"request","req')
    return len(lines) + 2 + UNANSWERED


def metric_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            names.add(name)
            names.add(re.sub(r"_(bucket|count|sum|total)$", "", name))
    return names


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_tool("prometheus", "VAULT_OBSERVE_PROMETHEUS")
    workdir = tmp_path_factory.mktemp("prometheus")
    short = Path(tempfile.mkdtemp(prefix="vo-"))  # unix socket paths are short
    socket_path = short / "audit.sock"
    zipkin = ZipkinReceiver()
    honeycomb = HoneycombReceiver(api_key=API_KEY)
    honeycomb.fail_with = 503
    daemon = ObserveProcess(
        [
            "--socket-path", str(socket_path),
            "--metrics-address", "127.0.0.1:0",
            "--zipkin", zipkin.url,
            "--honeycomb", "--honeycomb-api-host", honeycomb.base_url,
            "--queue-size", str(QUEUE_SIZE),
            "--max-pending", str(MAX_PENDING),
            "--ttl", "600",
            "--flush-interval", "0.1",
            # Each of the failing sink's two senders gives up on a batch of 2 spans every 4 s
            # (then sink_up is 0): its queue stays nearly full for minutes.
            "--batch-size", "2",
            "--retry-window", "4",
            "--shutdown-timeout", "1",
        ],
        workdir,
    )  # fmt: skip
    prometheus: PrometheusServer | None = None
    with zipkin, honeycomb:
        try:
            daemon.start(socket_path)
            metrics_url = daemon_metrics_url(daemon)
            prometheus = PrometheusServer(
                binary, workdir, [metrics_url.removeprefix("http://")], [RULES]
            ).start()
            # A few scrapes of the idle daemon first: counters start from their zeros.
            prometheus.wait_for(
                "count_over_time(vault_observe_lines_total[1m]) >= 3", bool, timeout=60
            )
            quiet_time = time.time()
            time.sleep(1.5)
            sent = feed(str(socket_path), corpus().read_bytes())
            prometheus.wait_for(f"vault_observe_lines_total >= {sent}", bool, timeout=120)
            prometheus.wait_for('vault_observe_skipped_lines_total{reason="truncated"} >= 1', bool)
            prometheus.wait_for('vault_observe_spans_total{pairing="evicted"} > 0', bool)
            time.sleep(3)  # scrapes and rule evaluations after the last line
            with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=30) as reply:
                scraped = metric_names(reply.read().decode())
            mounts = {
                series["metric"].get("mount", "")
                for series in prometheus.query("sum by (mount) (vault_request_duration_seconds_count)")
            }
            yield Stack(prometheus, daemon, metrics_url, quiet_time, scraped, mounts)
        finally:
            if prometheus is not None:
                prometheus.stop()
            daemon.kill()
            shutil.rmtree(short, ignore_errors=True)


def skip_unless_exported(stack: Stack, expr: str) -> None:
    for name, what in OPTIONAL_METRICS.items():
        if name in expr and name not in stack.scraped_metrics:
            pytest.skip(f"{name} is not exported yet ({what}); the query parses: checked by the caller")


# ---------------------------------------------------------------- promtool


def test_rules_file_passes_promtool() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_scrape_passes_promtool_check_metrics(stack: Stack) -> None:
    promtool = require_tool("promtool")
    with urllib.request.urlopen(f"{stack.metrics_url}/metrics", timeout=30) as reply:
        text = reply.read()
    assert b"vault_request_duration_seconds_bucket" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# ---------------------------------------------------------------- alerting rules


def test_every_rule_is_expected() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert set(names) == FIRING | QUIET
    for rule in rules():
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]


def test_prometheus_loaded_and_evaluates_every_rule(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == FIRING | QUIET
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        # Alerts with a `for` are pending until it has passed; the others fire at once.
        if name in FIRING:
            assert rule["state"] in ("pending", "firing"), (name, rule["state"])
        else:
            assert rule["state"] == "inactive", (name, rule["state"], rule["alerts"])


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_alert_expression(stack: Stack, rule: dict[str, Any]) -> None:
    result = stack.prometheus.query(rule["expr"])
    if rule["alert"] in FIRING:
        assert result, f"{rule['alert']} should fire on the injected faults: {rule['expr']}"
        for series in result:  # alerts say which daemon
            assert series["metric"].get("instance"), series
    else:
        assert result == [], f"{rule['alert']} should not fire: {result}"


def test_no_audit_lines_fires_while_the_daemon_is_up_and_idle(stack: Stack) -> None:
    expr = next(rule["expr"] for rule in rules() if rule["alert"] == "VaultObserveNoAuditLines")
    before_feed = stack.prometheus.query(expr, at=stack.quiet_time)
    assert [series["metric"]["job"] for series in before_feed] == ["vault-observe"]


# ---------------------------------------------------------------- the Grafana dashboard


@pytest.mark.parametrize("query", dashboard_queries(), ids=str)
def test_dashboard_query(stack: Stack, query: PanelQuery) -> None:
    expr = substitute(query.expr)
    result = stack.prometheus.query(expr)  # parses, or fails with Prometheus's error
    skip_unless_exported(stack, expr)
    assert result, f"panel {query.panel!r} shows nothing: {expr}"


def test_dashboard_variables_have_values(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"job", "instance", "mount"}
    for variable in variables:
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        selector, label = substitute(found.group(1)), found.group(2)
        values = stack.prometheus.api(f"label/{label}/values", **{"match[]": selector})
        assert values, f"variable {variable['name']} has no value: {variable['definition']}"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
    text = "\n".join(query.expr for query in dashboard_queries())
    # What the operator opens it for: Vault latency and errors, and the daemon's health.
    for needed in (
        "vault_request_duration_seconds_bucket",
        'error="true"',
        "vault_observe_lines_total",
        "vault_observe_skipped_lines_total",
        "vault_observe_spans_total",
        "vault_observe_sink_spans_delivered_total",
        "vault_observe_sink_spans_dropped_total",
        "vault_observe_sink_queue_depth",
        "vault_observe_sink_queue_bytes",
        "process_resident_memory_bytes",
    ):
        assert needed in text, needed


# ---------------------------------------------------------------- the README's PromQL


@pytest.mark.parametrize("expr", readme_examples())
def test_readme_example(stack: Stack, expr: str) -> None:
    result = stack.prometheus.query(expr)
    assert result, f"the README's example returns nothing on data that should give a series: {expr}"


def test_readme_error_ratio_gives_zero_for_mounts_without_errors(stack: Stack) -> None:
    expr = next(e for e in readme_examples() if 'error="true"' in e)
    # The ratio's logic, not the scrape timing: a mount whose lines all came before
    # Prometheus's first scrape has a rate of 0 in every window, so 0/0 (NaN) there. With
    # each rate() read as the counter itself, every mount has a total and a ratio.
    expr = re.sub(r"rate\((vault_request_duration_seconds_count(?:\{[^}]*\})?)\[5m\]\)", r"\1", expr)
    assert "rate(" not in expr, expr
    ratios = {series["metric"].get("mount", ""): float(series["value"][1]) for series in stack.prometheus.query(expr)}
    with_errors = {
        series["metric"].get("mount", "")
        for series in stack.prometheus.query('sum by (mount) (vault_request_duration_seconds_count{error="true"})')
    }
    assert with_errors and stack.mounts - with_errors, "the corpus has mounts with and without errors"
    assert set(ratios) == stack.mounts
    without_errors = stack.mounts - with_errors
    assert all(ratios[mount] == 0 for mount in without_errors), ratios
    assert all(0 < ratios[mount] <= 1 for mount in with_errors), ratios

