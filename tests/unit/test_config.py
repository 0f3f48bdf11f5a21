from __future__ import annotations

import pytest

from vault_observe.config import DEFAULT_ZIPKIN_URL, Listener, load_config, parse_listen
from vault_observe.errors import ConfigError


def test_defaults_listen_on_observe_sock() -> None:
    config, _ = load_config([], env={})
    assert config.listeners == [Listener("unix", "observe.sock")]
    assert config.socket_mode == 0o600
    assert config.sink_names() == []
    assert (
        config.ttl == 10.0 and config.max_pending == 1_000_000 and config.max_line_bytes == 16 * 1024 * 1024
    )


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
    "argv", [["--ttl", "0"], ["--max-pending", "0"], ["--socket-mode", "999"], ["--max-line-bytes", "-1"]]
)
def test_bad_values_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config(argv, env={})
    assert exc.value.code == 2
