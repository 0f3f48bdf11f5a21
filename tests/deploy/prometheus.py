"""A real Prometheus server for the deployment tests: on loopback, with a temporary
config and data folder, started and always stopped by the test.

The binary comes from Debian's ``prometheus`` package (``.ci/run`` installs it), or
``$VAULT_OBSERVE_PROMETHEUS``. Without it the tests skip, unless
``VAULT_OBSERVE_REQUIRE_DEPLOY_TOOLS=1`` (set in CI), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.integration.harness import ObserveProcess

REQUIRE = "VAULT_OBSERVE_REQUIRE_DEPLOY_TOOLS"


def require_tool(name: str, env: str | None = None) -> str:
    """The path of a command-line tool, or a skip (a failure when CI requires the tools)."""
    explicit = os.environ.get(env, "") if env else ""
    found = explicit if explicit and os.access(explicit, os.X_OK) else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (Debian package prometheus; .ci/run installs it)"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} and {REQUIRE}=1")
    pytest.skip(reason)


def import_yaml() -> Any:
    """PyYAML (test extras); a module-level skip in a venv installed before it was added."""
    try:
        import yaml
    except ImportError:
        if os.environ.get(REQUIRE) == "1":
            raise
        pytest.skip("PyYAML is not installed: pip install -e '.[test]'", allow_module_level=True)
    return yaml


def metrics_url(daemon: ObserveProcess, timeout: float = 30.0) -> str:
    """The daemon's /metrics base URL, from its log (``--metrics-address HOST:0`` picks a port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving /metrics and /healthz on (http://[^\s\"]+)", daemon.stderr())
        if found:
            return found.group(1)
        assert daemon.process is None or daemon.process.poll() is None, daemon.stderr()
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not say where /metrics is:\n{daemon.stderr()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusServer:
    """``prometheus`` scraping ``targets`` every second and evaluating ``rule_files``."""

    def __init__(self, binary: str, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        scrape = {
            "job_name": "vault-observe",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [{"targets": targets}],
        }
        document = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [scrape],
        }
        # JSON is YAML: no YAML writer needed.
        self.config.write_text(json.dumps(document, indent=2))
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, else an AssertionError naming the error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                document = json.load(reply)
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution error
            document = json.load(exc)
        if document.get("status") != "success":
            raise AssertionError(f"{params}: {document.get('errorType')}: {document.get('error')}")
        return document["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: its result as a list of {"metric": labels, "value": [t, "v"]}."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        assert isinstance(result, list)
        return result

    def wait_for(self, expr: str, predicate: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.2)
        raise AssertionError(f"{expr}: still {result} after {timeout} s\n{self.log()}")
