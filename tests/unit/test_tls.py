"""TLS to the network sinks: the settings' checks, and delivery over HTTPS to loopback
receivers that require a client certificate (certificates made by the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.tls_receiver import Pki
from vault_observe.errors import ConfigError
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
