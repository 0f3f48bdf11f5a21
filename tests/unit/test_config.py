from __future__ import annotations

from pathlib import Path

import pytest

from vault_observe import _core_py
from vault_observe.config import DEFAULT_ZIPKIN_URL, Listener, load_config, parse_listen
from vault_observe.errors import ConfigError


def test_defaults_listen_on_observe_sock() -> None:
    config, _ = load_config([], env={})
    assert config.listeners == [Listener("unix", "observe.sock")]
    assert config.socket_mode == 0o600
    assert config.sink_names() == []
    assert config.ttl == 10.0 and config.max_pending == 40_000 and config.max_line_bytes == 16 * 1024 * 1024
    # the core's own default, which the README's memory figures are measured with
    assert config.pending_attrs_bytes == _core_py.DEFAULT_PENDING_ATTRS_BYTES == 2048


def test_socket_path_and_listen_urls_combine() -> None:
    config, _ = load_config(
        ["--socket-path", "/run/a.sock", "--listen", "tcp://127.0.0.1:9090", "--listen", "udp://[::1]:9091"],
        env={},
    )
    assert config.listeners == [
        Listener("unix", "/run/a.sock"),
        Listener("tcp", "127.0.0.1", 9090),
        Listener("udp", "::1", 9091),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:///run/vault/audit.sock", Listener("unix", "/run/vault/audit.sock")),
        ("unix://relative.sock", Listener("unix", "relative.sock")),
        ("tcp://0.0.0.0:9090", Listener("tcp", "0.0.0.0", 9090)),
    ],
)
def test_parse_listen(text: str, expected: Listener) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["http://x:1", "tcp://nohost", "tcp://h:notaport", "unix://", "udp://:53"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_input_excludes_sockets() -> None:
    config, _ = load_config(["--input", "audit.log"], env={})
    assert config.listeners == [] and config.input == "audit.log"
    with pytest.raises(ConfigError):
        load_config(["--input", "audit.log", "--socket-path", "x.sock"], env={})


def test_zipkin_url_default_and_env() -> None:
    config, _ = load_config(["--zipkin"], env={})
    assert config.zipkin == DEFAULT_ZIPKIN_URL
    config, _ = load_config(["--zipkin"], env={"OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://z:1/api/v2/spans"})
    assert config.zipkin == "http://z:1/api/v2/spans"
    config, _ = load_config(
        ["--zipkin", "http://flag:2/api/v2/spans"], env={"OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://z:1"}
    )
    assert config.zipkin == "http://flag:2/api/v2/spans"


def test_honeycomb_needs_the_key_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="HONEYCOMB_API_KEY"):
        load_config(["--honeycomb"], env={})
    config, _ = load_config(
        ["--honeycomb"],
        env={"HONEYCOMB_API_KEY": "sekrit-key", "HONEYCOMB_DATASET": "ds", "HONEYCOMB_API_HOST": "http://h"},
    )
    assert (config.honeycomb_api_key, config.honeycomb_dataset, config.honeycomb_api_host) == (
        "sekrit-key",
        "ds",
        "http://h",
    )
    assert "sekrit" not in repr(config)  # the key never shows in a repr or a log


def test_otlp_endpoint_from_standard_variables() -> None:
    from vault_observe.sinks.factory import build_sinks

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    config, _ = load_config(["--otlp"], env=env)
    assert config.otlp == "" and config.sink_names() == ["otlp"]
    [sink] = build_sinks(config, environ=env)
    assert sink.endpoint == "http://collector:4318/v1/traces"  # type: ignore[attr-defined]
    config, _ = load_config(["--otlp", "http://flag/v1/traces"], env=env)
    [sink] = build_sinks(config, environ=env)
    assert sink.endpoint == "http://flag/v1/traces"  # type: ignore[attr-defined]


def test_service_name_from_env_and_flag() -> None:
    assert load_config([], env={"OTEL_SERVICE_NAME": "vault-eu"})[0].service_name == "vault-eu"
    assert load_config(["--service-name", "x"], env={"OTEL_SERVICE_NAME": "vault-eu"})[0].service_name == "x"


@pytest.mark.parametrize(
    "argv",
    [
        ["--ttl", "0"],
        ["--max-pending", "0"],
        ["--socket-mode", "999"],
        ["--max-line-bytes", "-1"],
        ["--pending-attrs-bytes", "1"],
        ["--pending-attrs-bytes", "2147483648"],
        ["--pending-attrs-bytes", "1x"],
    ],
)
def test_bad_values_are_config_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match=f"^{argv[0]} '{argv[1]}': "):
        load_config(argv, env={})


def write(tmp_path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "vault-observe.toml"
    path.write_text(text)
    return str(path)


def test_config_file_covers_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(
        tmp_path,
        'listen = ["tcp://127.0.0.1:9090", "udp://127.0.0.1:9091"]\n'
        'ttl = 5\nstdout = true\nzipkin = true\nsocket-mode = "0660"\nmax_pending = 10\n'
        'honeycomb-dataset = "from-file"\nshutdown-timeout = 2.5\n',
    )
    config, _ = load_config(["--config", path], env={})
    assert config.shutdown_timeout == 2.5
    assert load_config(["--config", path, "--shutdown-timeout", "90"], env={})[0].shutdown_timeout == 90
    assert [str(item) for item in config.listeners] == ["tcp://127.0.0.1:9090", "udp://127.0.0.1:9091"]
    assert config.ttl == 5 and config.stdout and config.zipkin == DEFAULT_ZIPKIN_URL
    assert config.socket_mode == 0o660 and config.max_pending == 10
    assert (
        load_config(["--config", write(tmp_path, "pending-attrs-bytes = 300\n")], env={})[
            0
        ].pending_attrs_bytes
        == 300
    )
    assert config.honeycomb_dataset == "from-file"


def test_precedence_flags_over_env_over_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(
        tmp_path,
        'service-name = "file"\nhoneycomb-dataset = "file"\nttl = 5\nlisten = ["tcp://127.0.0.1:1"]\n',
    )
    env = {"OTEL_SERVICE_NAME": "env", "HONEYCOMB_DATASET": "env"}
    config, _ = load_config(
        ["--config", path, "--service-name", "flag", "--listen", "tcp://127.0.0.1:2"], env=env
    )
    assert config.service_name == "flag"  # flag > env > file
    assert config.honeycomb_dataset == "env"  # env > file
    assert config.ttl == 5  # file > default
    assert [str(item) for item in config.listeners] == [
        "tcp://127.0.0.1:2"
    ]  # a flag's list replaces the file's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown option 'bogus'"),
        ("ttl = -1\n", "ttl '-1': must be a number greater than 0"),
        ("stdout = 1\n", "stdout 1: expected true or false"),
        ("ttl = [\n", "not valid TOML"),
        ('log-level = "loud"\n', "log-level 'loud': expected one of debug, info"),
    ],
)
def test_config_file_errors(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", write(tmp_path, text)], env={})


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(["--config", str(tmp_path / "absent.toml")], env={})


def test_check_config_exit_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    good = write(tmp_path, "stdout = true\nttl = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--config", good, "--check-config"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"ttl = 3.0" in result.stdout and b"configuration is valid" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("nope = true\n")
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--config", str(bad), "--check-config"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2 and b"unknown option 'nope'" in result.stderr


def test_queue_bytes_from_flag_env_and_file(tmp_path: Path) -> None:
    config, _ = load_config([], env={})
    assert config.queue_bytes == 64 * 1024 * 1024 and config.queue_size == 200_000
    for text, expected in (("1048576", 1 << 20), ("64MiB", 64 << 20), ("512k", 512 << 10), ("1G", 1 << 30)):
        config, _ = load_config(["--queue-bytes", text], env={})
        assert config.queue_bytes == expected
    config, _ = load_config([], env={"VAULT_OBSERVE_QUEUE_BYTES": "32MiB"})
    assert config.queue_bytes == 32 << 20
    config, _ = load_config(["--queue-bytes", "8M"], env={"VAULT_OBSERVE_QUEUE_BYTES": "32MiB"})
    assert config.queue_bytes == 8 << 20
    path = tmp_path / "vo.toml"
    path.write_text('queue-bytes = "16MiB"\n')
    config, _ = load_config(["--config", str(path)], env={})
    assert config.queue_bytes == 16 << 20
    for bad in ("0", "1.5M", "lots", "-1"):
        with pytest.raises(ConfigError, match="--queue-bytes"):
            load_config(["--queue-bytes", bad], env={})
