"""TLS to the network sinks: the settings' checks, and delivery over HTTPS to loopback
receivers that require a client certificate (certificates made by the test)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.receivers import HoneycombReceiver, OtlpReceiver, Receiver, ZipkinReceiver
from tests.sinks import CollectingSink
from tests.tls_receiver import Pki, TlsConnectProxy, serve_tls
from vault_observe._core_py import Core
from vault_observe.config import Config, load_config
from vault_observe.errors import ConfigError
from vault_observe.model import SpanRecord
from vault_observe.pipeline import Daemon
from vault_observe.reload import reload
from vault_observe.sinks.factory import build_checked_sinks
from vault_observe.sinks.tls import TlsOptions


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


SETTINGS = {"ca_file": "zipkin_ca_file", "cert_file": "zipkin_client_cert", "key_file": "zipkin_client_key"}


def refusal(**files: str | Path) -> str:
    """The message of the ConfigError ``TlsOptions(**files).check()`` raises."""
    options = TlsOptions(**{name: str(path) for name, path in files.items()}, settings=SETTINGS)
    with pytest.raises(ConfigError) as exc:
        options.check()
    return str(exc.value)


def test_usable_files_pass(pki: Pki) -> None:
    TlsOptions().check()
    TlsOptions(ca_file=str(pki.ca)).check()
    TlsOptions(str(pki.ca), str(pki.client_cert), str(pki.client_key)).check()
    TlsOptions(cert_file=str(pki.client_combined)).check()  # the key in the certificate's file


def test_without_files_nothing_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink without TLS settings (plain http, or the system's CA store) starts without
    making an SSLContext: the first one costs a few milliseconds of start-up."""
    import ssl

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an SSLContext was made")

    monkeypatch.setattr(ssl, "SSLContext", refuse)
    TlsOptions(settings=SETTINGS).check()
    with pytest.raises(AssertionError):
        TlsOptions(ca_file="ca.pem", settings=SETTINGS).check()


def test_missing_and_unreadable_files(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert refusal(ca_file=missing) == (
        f"--zipkin-ca-file '{missing}': cannot read it: No such file or directory"
    )
    assert refusal(cert_file=tmp_path) == (
        f"--zipkin-client-cert '{tmp_path}': cannot read it: Is a directory"
    )
    assert refusal(cert_file=pki.client_cert, key_file=missing).startswith(
        f"--zipkin-client-key '{missing}': cannot read it"
    )


def test_files_that_are_not_pem(pki: Pki, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    assert refusal(ca_file=text) == (
        f"--zipkin-ca-file '{text}': not a PEM file of CA certificates (no BEGIN CERTIFICATE line)"
    )
    assert "not a PEM certificate" in refusal(cert_file=pki.client_key, key_file=pki.client_key)
    assert refusal(cert_file=pki.client_cert, key_file=pki.ca).startswith(
        f"--zipkin-client-key '{pki.ca}': not a PEM private key"
    )
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    assert refusal(ca_file=broken).startswith(f"--zipkin-ca-file '{broken}': not a usable PEM bundle")


def test_key_and_certificate_must_go_together(pki: Pki, tmp_path: Path) -> None:
    assert refusal(key_file=pki.client_key) == (
        f"--zipkin-client-key '{pki.client_key}': a client key needs its client certificate too"
    )
    assert refusal(cert_file=pki.client_cert) == (
        f"--zipkin-client-cert '{pki.client_cert}': no private key in this file, and no client key given"
    )
    other_key = tmp_path / "server.key"
    pki.server.private_key_pem.write_to_path(str(other_key))
    assert refusal(cert_file=pki.client_cert, key_file=other_key) == (
        f"--zipkin-client-key '{other_key}': the private key does not match the client certificate"
    )


def test_an_encrypted_key_is_refused_without_a_prompt(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert refusal(cert_file=pki.client_cert, key_file=encrypted) == (
        f"--zipkin-client-key '{encrypted}': the private key is encrypted; give an unencrypted key"
    )


def test_errors_name_the_setting_as_written(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    config_file = tmp_path / "vault-observe.toml"
    config_file.write_text(f'honeycomb-client-cert = "{pki.client_cert}"\n')
    env = {"HONEYCOMB_API_KEY": "k"}
    config, _ = load_config(["--honeycomb", "--config", str(config_file)], env)
    with pytest.raises(ConfigError, match=f"^{config_file}: honeycomb-client-cert '.*': no private key"):
        build_checked_sinks(config, env)
    config, _ = load_config(["--otlp", "http://127.0.0.1:1/v1/traces", "--otlp-ca-file", missing], {})
    with pytest.raises(ConfigError, match="^--otlp-ca-file '.*missing.pem': cannot read it"):
        build_checked_sinks(config, {})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "{missing}"}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        (
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": "{ca}", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "{missing}"},
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        ),
        ({"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "{missing}"}, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        ({"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "{missing}"}, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"),
    ],
)
def test_otlp_variables_are_checked_and_named(
    pki: Pki, tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    env = {name: value.format(missing=missing, ca=pki.ca) for name, value in env.items()}
    config, _ = load_config(["--otlp", "http://127.0.0.1:1/v1/traces"], env)
    with pytest.raises(ConfigError, match=f"^{variable} '{missing}': "):
        build_checked_sinks(config, env)


def test_an_otlp_flag_overrides_the_variables(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": missing, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": missing}
    config, _ = load_config(["--otlp", "http://127.0.0.1:1/v1/traces", "--otlp-ca-file", str(pki.ca)], env)
    for sink in build_checked_sinks(config, env):
        sink.close()


def test_a_changed_tls_setting_builds_a_new_sink_set_on_reload(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(input=str(tmp_path / "in.log"), zipkin="https://127.0.0.1:1/api/v2/spans")
    daemon = Daemon(config, [CollectingSink()])
    workers = list(daemon.workers)
    unusable = dataclasses.replace(config, zipkin_ca_file=str(pki.client_key))
    daemon.reload_config = lambda: unusable
    with caplog.at_level(logging.INFO, logger="vault_observe"):
        assert reload(daemon) is False  # the new file was checked, and refused
    assert daemon.config is config and daemon.workers == workers
    assert f"--zipkin-ca-file '{pki.client_key}': not a PEM file of CA certificates" in caplog.text


# ---------------------------------------------------------------- delivery over HTTPS


@pytest.fixture(scope="module")
def spans(sample_log: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(sample_log.read_bytes())
    core.flush()
    return core.drain()[:20]


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy from the test runner's environment."""
    import os

    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


@dataclass
class Target:
    """A network sink, its receiver, and how many spans the receiver decoded."""

    receiver: Receiver
    config: Callable[[Receiver, dict[str, str]], Config]  # (receiver, TLS settings) -> Config
    delivered: Callable[[Any], int]


def _zipkin(rx: Receiver, tls: dict[str, str]) -> Config:
    return Config(zipkin=f"{rx.base_url}/api/v2/spans", **{f"zipkin_{k}": v for k, v in tls.items()})


def _honeycomb(rx: Receiver, tls: dict[str, str]) -> Config:
    return Config(
        honeycomb=True,
        honeycomb_api_key="test-key",
        honeycomb_api_host=rx.base_url,
        **{f"honeycomb_{k}": v for k, v in tls.items()},
    )


def _otlp(rx: Receiver, tls: dict[str, str]) -> Config:
    return Config(otlp=f"{rx.base_url}/v1/traces", **{f"otlp_{k}": v for k, v in tls.items()})


TARGETS: dict[str, Callable[[], Target]] = {
    "zipkin": lambda: Target(ZipkinReceiver(), _zipkin, lambda rx: len(rx.spans)),
    "honeycomb": lambda: Target(HoneycombReceiver(), _honeycomb, lambda rx: len(rx.events)),
    "otlp": lambda: Target(OtlpReceiver(), _otlp, lambda rx: len(rx.spans)),
}


def mutual_tls(pki: Pki, **changes: str) -> dict[str, str]:
    return {"ca_file": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)} | changes


def send(config: Config, spans: list[SpanRecord], seconds: float, env: dict[str, str] | None = None) -> list[Any]:
    """Build the sink ``config`` asks for, send ``spans`` twice (each by a deadline
    ``seconds`` away), and return (failed, failed again, its stats)."""
    (sink,) = build_checked_sinks(config, env or {})
    sink.start()
    try:
        first = sink.send(spans, time.monotonic() + seconds)
        second = sink.send(spans, time.monotonic() + seconds)
        return [first, second, sink.stats()]
    finally:
        sink.close()


@pytest.mark.parametrize("kind", TARGETS)
def test_mutual_tls_delivers_in_the_real_wire_format(
    pki: Pki, spans: list[SpanRecord], no_proxy_env: pytest.MonkeyPatch, kind: str
) -> None:
    target = TARGETS[kind]()
    with serve_tls(target.receiver, pki.server_context()) as rx:
        first, second, stats = send(target.config(rx, mutual_tls(pki)), spans, 10.0)
    assert (first, second) == (0, 0)
    assert stats["sent"] == 2 * len(spans) and stats["failed"] == 0
    assert target.delivered(rx) == 2 * len(spans) and rx.errors == [] and rx.handshake_errors == []


@pytest.mark.parametrize("kind", TARGETS)
def test_the_key_in_the_certificate_file_works_too(
    pki: Pki, spans: list[SpanRecord], no_proxy_env: pytest.MonkeyPatch, kind: str
) -> None:
    target = TARGETS[kind]()
    tls = {"ca_file": str(pki.ca), "client_cert": str(pki.client_combined)}
    with serve_tls(target.receiver, pki.server_context()) as rx:
        first, second, _ = send(target.config(rx, tls), spans[:3], 10.0)
    assert (first, second) == (0, 0) and target.delivered(rx) == 6


@pytest.mark.parametrize("kind", TARGETS)
def test_without_the_client_certificate_spans_fail_are_counted_and_logged_once(
    pki: Pki,
    spans: list[SpanRecord],
    no_proxy_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    target = TARGETS[kind]()
    with serve_tls(target.receiver, pki.server_context()) as rx, caplog.at_level(logging.WARNING):
        first, second, stats = send(target.config(rx, {"ca_file": str(pki.ca)}), spans, 1.0)
    assert (first, second) == (len(spans), len(spans))
    assert stats["failed"] == 2 * len(spans) and stats["sent"] == 0
    assert target.delivered(rx) == 0 and rx.handshake_errors  # refused by the receiver
    failures = [r for r in caplog.records if r.getMessage().startswith(f"{kind}: ")]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # rate-limited
    noun = "events" if kind == "honeycomb" else "spans"
    assert f"{len(spans)} {noun} not delivered to {rx.base_url}" in failures[0].getMessage()
    hint = f"; if it requires a client certificate, give one with --{kind}-client-cert"
    assert hint in failures[0].getMessage()
    assert "SSLError: TLS: the receiver ended the connection (" in failures[0].getMessage()


@pytest.mark.parametrize("kind", TARGETS)
def test_an_unknown_ca_is_counted_and_logged_as_a_certificate_problem(
    pki: Pki,
    spans: list[SpanRecord],
    no_proxy_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    target = TARGETS[kind]()
    tls = mutual_tls(pki, ca_file=str(pki.other_ca))
    with serve_tls(target.receiver, pki.server_context()) as rx, caplog.at_level(logging.WARNING):
        first, second, stats = send(target.config(rx, tls), spans, 1.0)
    assert (first, second) == (len(spans), len(spans)) and stats["failed"] == 2 * len(spans)
    assert target.delivered(rx) == 0
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{kind}: ")]
    assert len(failures) == 1, failures
    assert (
        f"TLS: the receiver's certificate was refused (checked against --{kind}-ca-file {pki.other_ca}): "
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    ) in failures[0]


@pytest.mark.parametrize("kind", TARGETS)
def test_an_https_proxy_tunnels_to_the_receiver(
    pki: Pki, spans: list[SpanRecord], no_proxy_env: pytest.MonkeyPatch, kind: str
) -> None:
    target = TARGETS[kind]()
    with (
        serve_tls(target.receiver, pki.server_context()) as rx,
        TlsConnectProxy(pki.server_context(require_client_cert=False)) as proxy,
    ):
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        first, second, _ = send(target.config(rx, mutual_tls(pki)), spans, 10.0)
    assert (first, second) == (0, 0) and target.delivered(rx) == 2 * len(spans)
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{rx.port}"}


def test_otlp_takes_its_files_from_the_exporter_variables(
    pki: Pki, spans: list[SpanRecord], no_proxy_env: pytest.MonkeyPatch
) -> None:
    missing = str(pki.ca) + ".missing"
    env = {
        "OTEL_EXPORTER_OTLP_CERTIFICATE": missing,  # the _TRACES_ one wins
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(pki.ca),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": str(pki.client_key),
    }
    with serve_tls(OtlpReceiver(), pki.server_context()) as rx:
        first, second, _ = send(Config(otlp=rx.url), spans, 10.0, env)
    assert (first, second) == (0, 0) and len(rx.spans) == 2 * len(spans) and rx.handshake_errors == []


def test_a_client_certificate_the_receiver_does_not_trust_is_counted_and_named(
    pki: Pki,
    spans: list[SpanRecord],
    no_proxy_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().issue_cert("stranger.client.test").private_key_and_cert_chain_pem.write_to_path(str(stranger))
    tls = {"ca_file": str(pki.ca), "client_cert": str(stranger)}
    with serve_tls(OtlpReceiver(), pki.server_context()) as rx, caplog.at_level(logging.WARNING):
        first, second, stats = send(_otlp(rx, tls), spans, 1.0)
    assert (first, second) == (len(spans), len(spans)) and stats["failed"] == 2 * len(spans)
    assert len(rx.spans) == 0 and rx.handshake_errors, rx.handshake_errors
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("otlp: ")]
    assert len(failures) == 1, failures
    assert "SSLError: TLS: " in failures[0] and f"(the client certificate {stranger} was offered)" in failures[0]


# ---------------------------------------------------------------- the reference encoders


def _zipkin_sdk_argv(rx: Receiver) -> list[str]:
    return ["--zipkin", f"{rx.base_url}/api/v2/spans", "--zipkin-encoder", "sdk"]


def _honeycomb_libhoney_argv(rx: Receiver) -> list[str]:
    return ["--honeycomb", "--honeycomb-api-host", rx.base_url, "--honeycomb-encoder", "libhoney"]


# (sink, receiver, its command line, how many spans the receiver decoded)
REFERENCE_PATHS: dict[str, tuple[str, Callable[[], Receiver], Callable[[Receiver], list[str]], Callable[[Any], int]]] = {
    "zipkin-sdk": ("zipkin", ZipkinReceiver, _zipkin_sdk_argv, lambda rx: len(rx.spans)),
    "honeycomb-libhoney": ("honeycomb", HoneycombReceiver, _honeycomb_libhoney_argv, lambda rx: len(rx.events)),
}


def tls_argv(sink: str, tls: dict[str, str]) -> list[str]:
    return [arg for name, path in tls.items() for arg in (f"--{sink}-{name.replace('_', '-')}", path)]


def send_and_flush(argv: list[str], spans: list[SpanRecord], seconds: float) -> dict[str, int]:
    """Build the sink the command line asks for, send ``spans`` by a deadline ``seconds``
    away, wait for every outcome (libhoney answers later), and return its stats."""
    env = {"HONEYCOMB_API_KEY": "test-key"}
    config, _ = load_config(argv, env)
    (sink,) = build_checked_sinks(config, env)
    sink.start()
    try:
        sink.send(spans, time.monotonic() + seconds)
        sink.flush(seconds + 10.0)
    finally:
        sink.close()
    return sink.stats()


@pytest.mark.parametrize("path", REFERENCE_PATHS)
def test_the_reference_encoders_deliver_with_mutual_tls(
    pki: Pki, spans: list[SpanRecord], no_proxy_env: pytest.MonkeyPatch, path: str
) -> None:
    sink, receiver, argv, delivered = REFERENCE_PATHS[path]
    # requests would let this override a session's CA bundle: the sink's must win
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca))
    with serve_tls(receiver(), pki.server_context()) as rx:
        stats = send_and_flush(argv(rx) + tls_argv(sink, mutual_tls(pki)), spans, 10.0)
    assert stats["sent"] == len(spans) and stats["failed"] == 0, stats
    assert delivered(rx) == len(spans) and rx.errors == [] and rx.handshake_errors == []


@pytest.mark.parametrize("path", REFERENCE_PATHS)
def test_the_reference_encoders_without_the_client_certificate_fail_and_are_counted(
    pki: Pki,
    spans: list[SpanRecord],
    no_proxy_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    sink, receiver, argv, delivered = REFERENCE_PATHS[path]
    with serve_tls(receiver(), pki.server_context()) as rx, caplog.at_level(logging.WARNING):
        stats = send_and_flush(argv(rx) + tls_argv(sink, {"ca_file": str(pki.ca)}), spans, 1.0)
    assert stats["failed"] == len(spans) and stats["sent"] == 0, stats
    assert delivered(rx) == 0 and rx.handshake_errors  # refused by the receiver
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{sink}: ")]
    assert failures, [r.getMessage() for r in caplog.records]
    assert "SSLError: TLS: the receiver ended the connection (" in failures[0], failures
    assert f"give one with --{sink}-client-cert" in failures[0], failures
