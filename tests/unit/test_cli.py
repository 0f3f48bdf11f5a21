"""The command line's edges: every bad setting is one line and exit 2, through the same
checks for --check-config and for a start; --check-config prints TOML that --config
reads back."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from tests.tls_receiver import Pki
from vault_observe.cli import main
from vault_observe.config import load_config

# (flags, environment, config file text, what the one error line must name)
BAD_SETTINGS = [
    (["--zipkin", "ftp://x"], {}, None, "--zipkin 'ftp://x': not an http(s) URL"),
    ([], {}, 'zipkin = "not a url"\n', "{file}: zipkin 'not a url': not an http(s) URL"),
    (["--ttl", "abc"], {}, None, "--ttl 'abc': expected a number greater than 0"),
    ([], {}, 'ttl = "abc"\n', "{file}: ttl 'abc': expected a number greater than 0"),
    ([], {}, "ttl = 0\n", "{file}: ttl '0': must be a number greater than 0"),
    ([], {"VAULT_OBSERVE_LOG_LEVEL": "loud"}, None, "VAULT_OBSERVE_LOG_LEVEL 'loud': expected one of"),
    (["--zipkin-encoder", "thrift"], {}, None, "--zipkin-encoder 'thrift': expected one of native, sdk"),
    (["--socket-mode", "999"], {}, None, "--socket-mode '999': expected an octal file mode"),
    (["--listen", "http://x:1"], {}, None, "--listen 'http://x:1': the scheme must be"),
    ([], {}, 'listen = ["tcp://nohost"]\n', "{file}: listen 'tcp://nohost': expected tcp://HOST:PORT"),
    (["--metrics-address", "x"], {}, None, "--metrics-address 'x': expected HOST:PORT"),
    (["--zipkin"], {"OTEL_EXPORTER_ZIPKIN_ENDPOINT": "zipkin:9411"}, None, "OTEL_EXPORTER_ZIPKIN_ENDPOINT"),
    (
        ["--honeycomb", "--honeycomb-api-host", "api.honeycomb.io"],
        {"HONEYCOMB_API_KEY": "k"},
        None,
        "--honeycomb-api-host 'api.honeycomb.io': not an http(s) URL",
    ),
    (
        ["--honeycomb"],
        {"HONEYCOMB_API_KEY": "k", "HONEYCOMB_API_HOST": "api.eu1.honeycomb.io"},
        None,
        "HONEYCOMB_API_HOST 'api.eu1.honeycomb.io': not an http(s) URL",
    ),
    (["--otlp"], {"OTEL_EXPORTER_OTLP_HEADERS": "sekrit-token"}, None, "OTEL_EXPORTER_OTLP_HEADERS: "),
    (["--otlp"], {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, None, "OTEL_EXPORTER_OTLP_TIMEOUT 'soon'"),
    (["--otlp"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"}, None, "OTEL_EXPORTER_OTLP_ENDPOINT 'c:4318'"),
    (["--otlp"], {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None, "OTEL_EXPORTER_OTLP_PROTOCOL 'grpc'"),
    (
        ["--otlp"],
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
        None,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL 'http/protobuf'",
    ),
    (["--otlp"], {"OTEL_EXPORTER_OTLP_INSECURE": "true"}, None, "OTEL_EXPORTER_OTLP_INSECURE 'true': applies"),
    (
        ["--otlp"],
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem"},
        None,
        "OTEL_EXPORTER_OTLP_CERTIFICATE '/etc/ca.pem': cannot read it: No such file",
    ),
    (
        ["--otlp"],
        {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "vault.conf"},
        None,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY 'vault.conf': a client key needs its client certificate",
    ),
    (["--zipkin", "--zipkin-ca-file", "ca.pem"], {}, None, "--zipkin-ca-file 'ca.pem': cannot read it"),
    (
        ["--zipkin", "--zipkin-encoder", "sdk"],
        {},
        'zipkin-client-cert = "vault.conf"\n',
        "{file}: zipkin-client-cert 'vault.conf': not a PEM certificate",
    ),
    (
        ["--honeycomb"],
        {"HONEYCOMB_API_KEY": "k"},
        'honeycomb-client-cert = "vault.conf"\n',
        "{file}: honeycomb-client-cert 'vault.conf': not a PEM certificate",
    ),
    (["--bogus"], {}, None, "unrecognized arguments: --bogus"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting from the test runner's environment; run in an empty folder."""
    import os

    for name in list(os.environ):
        if name.startswith(("OTEL_", "HONEYCOMB_", "VAULT_OBSERVE_LOG")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
@pytest.mark.parametrize(("argv", "env", "file_text", "expected"), BAD_SETTINGS)
def test_every_bad_setting_is_one_line_and_exit_2(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    check: bool,
    argv: list[str],
    env: dict[str, str],
    file_text: str | None,
    expected: str,
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    argv = list(argv)
    if file_text is not None:
        path = tmp_path / "vault-observe.toml"
        path.write_text(file_text)
        argv += ["--config", str(path)]
        expected = expected.format(file=path)
    # A start that wrongly got past the checks replays an empty file and ends at once.
    (tmp_path / "empty.log").write_bytes(b"")
    (tmp_path / "vault.conf").write_text('storage "raft" {}\n')  # a file that is no PEM
    if check:
        argv.append("--check-config")
    elif not any(a.startswith("--listen") for a in argv) and "listen" not in (file_text or ""):
        argv += ["--input", str(tmp_path / "empty.log")]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("vault-observe: error: "), err
    assert expected in err, err
    assert "sekrit" not in err  # a malformed header entry may be a credential


def test_check_config_prints_toml_that_config_reads_back(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20sekrit-otlp")
    clean_env.setenv("HONEYCOMB_API_KEY", "sekrit-honeycomb")
    pki = Pki.make(tmp_path)
    clean_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
    tls_flags = [
        *("--zipkin-ca-file", str(pki.ca), "--zipkin-client-cert", str(pki.client_combined)),
        *("--honeycomb-ca-file", str(pki.ca), "--honeycomb-client-cert", str(pki.client_cert)),
        *("--honeycomb-client-key", str(pki.client_key), "--otlp-client-cert", str(pki.client_cert)),
        *("--otlp-client-key", str(pki.client_key)),
    ]
    argv = [
        *tls_flags,
        "--listen",
        "tcp://127.0.0.1:9090",
        "--socket-path",
        "/run/vault/audit.sock",
        "--socket-mode",
        "0660",
        "--stdout",
        "--zipkin",
        "http://zipkin:9411/api/v2/spans",
        "--honeycomb",
        "--honeycomb-dataset",
        'a "quoted"\tname',
        "--otlp",
        "--ttl",
        "2.5",
        "--include",
        "request.*",
        "--exclude",
        "response.data.*",
        "--sample-rate",
        "4",
        "--no-trace-context",
        "--send-timeout",
        "3",
        "--log-level",
        "debug",
    ]
    assert main([*argv, "--check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "sekrit" not in out  # no secret is printed
    assert "None" not in out and "False" not in out  # TOML, not Python values
    data = tomllib.loads(out)  # the whole output is valid TOML
    assert data["otlp"] == "http://collector:4318/v1/traces"  # resolved from the environment
    assert data["socket-mode"] == "0660" and data["no-trace-context"] is True
    assert "OTEL_EXPORTER_OTLP_HEADERS=authorization=(redacted)" in out
    assert f"OTEL_EXPORTER_OTLP_CERTIFICATE={pki.ca} (from the environment)" in out
    assert data["zipkin-client-cert"] == str(pki.client_combined) and data["otlp-client-key"] == str(pki.client_key)
    assert "zipkin-client-key" in out.split("# not set (their defaults apply): ")[1].split("\n")[0]
    path = tmp_path / "effective.toml"
    path.write_text(out)
    expected, _ = load_config(argv)
    again, _ = load_config(["--config", str(path)])
    # The same settings, but the OTLP endpoint now written out instead of taken from the variable.
    assert again == dataclasses.replace(expected, otlp="http://collector:4318/v1/traces")
    # ... and printing it again gives the same text
    assert main(["--config", str(path), "--check-config"]) == 0
    assert capsys.readouterr().out == out


def test_check_config_of_an_input_replay_reads_back(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--input", "audit.log", "--capture", "c.log", "--metrics-address", "127.0.0.1:0"]
    assert main([*argv, "--check-config"]) == 0
    path = tmp_path / "effective.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(["--config", str(path)])[0] == load_config(argv)[0]


def test_otlp_protocol_http_json_is_accepted(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert main(["--otlp", "--check-config"]) == 0


def test_demo_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vault-observe demo") and "OpenBao dev server" in out
    assert "--socket-path" not in out and "--input FILE" not in out  # the demo reads no input
    assert "--zipkin" in out
