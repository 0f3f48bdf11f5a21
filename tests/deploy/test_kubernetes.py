"""deploy/kubernetes: Helm values for HashiCorp's Vault chart and OpenBao's chart, checked
offline (no cluster, no helm binary here).

- Only keys that exist in the charts' values.yaml are set (CHART_KEYS, read from
  hashicorp/vault-helm 0.34.1 and openbao/openbao-helm 0.29.2; the merged values were also
  validated against each chart's values.schema.json when these files were written).
- The containers and volumes the values add go into a Pod together with what the chart
  adds itself (its main container's mounts, the auditStorage claim, the pod's
  securityContext), and the Pod is validated with kubernetes-validate against pinned
  Kubernetes versions, strictly (unknown fields are errors).
- Paths and flags agree: the socket folder is one volume mounted by both containers, the
  device's address is the daemon's --socket-path, the followed file is the file device's
  path on the audit volume, the grace period outlasts --shutdown-timeout, and the daemon
  accepts the sidecar's flags (--check-config).
- OpenBao's declared audit stanzas are started for real: a real OpenBao server with those
  stanzas and a daemon with the sidecar's flags (paths moved into a temporary folder).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.deploy.prometheus import REQUIRE, import_yaml
from tests.implementations import PACKAGE_PATH
from tests.integration.harness import ObserveProcess
from vault_observe.config import build_parser
from vault_observe.openbao import DevServer

yaml = import_yaml()

KUBERNETES = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes with native sidecars on by default (the OpenBao values need them),
# and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
# Value paths of both charts' values.yaml that these files may set.
CHART_KEYS = {
    "server",
    "server.volumes",
    "server.volumeMounts",
    "server.extraContainers",
    "server.extraInitContainers",
    "server.auditStorage",
    "server.auditStorage.enabled",
    "server.auditStorage.mountPath",
    "server.standalone",
    "server.standalone.config",
    "server.terminationGracePeriodSeconds",
}


@dataclass(frozen=True)
class Chart:
    """What a chart's server StatefulSet template adds on its own."""

    container: str  # the server container's name
    image: str
    audit_mount: str  # auditStorage.mountPath's default
    pre_stop_sleep: int  # preStopSleepSeconds' default: the server's SIGTERM comes this late
    uid: int = 100
    gid: int = 1000


VAULT = Chart("vault", "hashicorp/vault:2.0.4", "/vault/audit", 5)
OPENBAO = Chart("openbao", "quay.io/openbao/openbao:2.6.2", "/openbao/audit", 5)
FILES = {
    "vault-helm-values.yaml": VAULT,
    "vault-helm-values-follow.yaml": VAULT,
    "openbao-helm-values.yaml": OPENBAO,
    "openbao-helm-values-follow.yaml": OPENBAO,
}


def values(name: str) -> dict[str, Any]:
    document = yaml.safe_load((KUBERNETES / name).read_text())
    assert isinstance(document, dict)
    return document


def sidecar(name: str) -> tuple[dict[str, Any], bool]:
    """The vault-observe container of a values file, and whether it is a native sidecar."""
    server = values(name)["server"]
    for key, native in (("extraContainers", False), ("extraInitContainers", True)):
        for container in server.get(key) or []:
            if container["name"] == "vault-observe":
                return container, native
    raise AssertionError(f"{name}: no vault-observe container")


def flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def audit_mount_path(name: str) -> str:
    storage = values(name)["server"]["auditStorage"]
    assert storage["enabled"] is True
    return str(storage.get("mountPath", FILES[name].audit_mount))


def audit_stanzas(config: str) -> list[str]:
    """The ``audit "type" "path" { ... }`` blocks of an HCL server config."""
    blocks = []
    for match in re.finditer(r'^\s*audit "\w+" "[^"]+" \{', config, re.MULTILINE):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(config)):
            depth += {"{": 1, "}": -1}.get(config[end], 0)
            if depth == 0:
                break
        blocks.append(config[match.start() : end + 1].strip())
    return blocks


def hcl_option(block: str, key: str) -> str:
    found = re.search(rf'\b{key}\s*=\s*"([^"]*)"', block)
    assert found, (key, block)
    return found.group(1)


def key_paths(document: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in document.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict):
            yield from key_paths(value, path)


# ---------------------------------------------------------------- chart keys and schemas


@pytest.mark.parametrize("name", FILES)
def test_values_set_only_chart_keys(name: str) -> None:
    used = set(key_paths(values(name)))
    assert used <= CHART_KEYS, used - CHART_KEYS


def pod(name: str) -> dict[str, Any]:
    """The values' containers and volumes in a Pod, with what the chart adds itself."""
    chart = FILES[name]
    server = copy.deepcopy(values(name)["server"])
    volumes = list(server.get("volumes") or [])
    main_mounts = list(server.get("volumeMounts") or [])
    storage = server.get("auditStorage") or {}
    if storage.get("enabled"):
        volumes.append({"name": "audit", "persistentVolumeClaim": {"claimName": f"audit-{chart.container}-0"}})
        main_mounts.append({"name": "audit", "mountPath": audit_mount_path(name)})
    main = {"name": chart.container, "image": chart.image, "volumeMounts": main_mounts}
    spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": chart.uid,
            "runAsGroup": chart.gid,
            "fsGroup": chart.gid,
        },
        "containers": [main, *(server.get("extraContainers") or [])],
        "volumes": volumes,
        "terminationGracePeriodSeconds": server.get("terminationGracePeriodSeconds", 10),
    }
    if server.get("extraInitContainers"):
        spec["initContainers"] = server["extraInitContainers"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{chart.container}-0"}, "spec": spec}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", FILES)
def test_pod_validates_against_the_kubernetes_schema(name: str, version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get(REQUIRE) == "1":
            raise
        pytest.skip("kubernetes-validate is not installed (test extras)")
    manifest = pod(name)
    kubernetes_validate.validate(manifest, version, strict=True)  # raises ValidationError
    # Every mount names a volume of the pod.
    names = {volume["name"] for volume in manifest["spec"]["volumes"]}
    containers = manifest["spec"]["containers"] + manifest["spec"].get("initContainers", [])
    for container in containers:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in names, (container["name"], mount)


def test_schema_validation_catches_a_mistake() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    manifest = pod("vault-helm-values.yaml")
    manifest["spec"]["containers"][1]["volumeMount"] = manifest["spec"]["containers"][1].pop("volumeMounts")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- paths, flags, timing


@pytest.mark.parametrize("name", FILES)
def test_sidecar_flags_are_valid_daemon_settings(name: str) -> None:
    container, _ = sidecar(name)
    assert "command" not in container, "the image's entrypoint is vault-observe"
    image, _, tag = container["image"].rpartition(":")
    assert image and re.fullmatch(r"\d+\.\d+\.\d+", tag), container["image"]
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--check-config", *container["args"]],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PACKAGE_PATH},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    port = flag(container["args"], "--metrics-address").rsplit(":", 1)[1]  # type: ignore[union-attr]
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]


@pytest.mark.parametrize("name", FILES)
def test_grace_period_outlasts_the_shutdown(name: str) -> None:
    container, native = sidecar(name)
    configured = flag(container["args"], "--shutdown-timeout")
    shutdown = float(configured or build_parser({}).get_default("shutdown_timeout"))
    grace = values(name)["server"]["terminationGracePeriodSeconds"]
    # A native sidecar gets SIGTERM once the server has stopped (after its preStop sleep).
    before = FILES[name].pre_stop_sleep + 5 if native else 0
    assert grace >= before + shutdown + 5, (grace, before, shutdown)


SOCKET_FILES = ["vault-helm-values.yaml", "openbao-helm-values.yaml"]
FOLLOW_FILES = ["vault-helm-values-follow.yaml", "openbao-helm-values-follow.yaml"]


def declared_devices(name: str) -> dict[str, str]:
    """type -> the stanza, from the values' server config (OpenBao), or from the enable
    commands in the file's header (Vault has no declared devices)."""
    server = values(name)["server"]
    if "standalone" in server:
        stanzas = audit_stanzas(server["standalone"]["config"])
        return {re.match(r'audit "(\w+)"', s).group(1): s for s in stanzas}  # type: ignore[union-attr]
    header = (KUBERNETES / name).read_text()
    commands = re.findall(r"vault audit enable (?:-path=\S+ )?(\w+) ((?:\\\n#|[^\n])+)", header)
    return {kind: options.replace("\\\n#", " ") for kind, options in commands}


def device_option(device: str, key: str) -> str:
    if device.startswith("audit "):
        return hcl_option(device, key)
    found = re.search(rf"\b{key}=(\S+)", device)
    assert found, (key, device)
    return found.group(1)


@pytest.mark.parametrize("name", SOCKET_FILES)
def test_the_server_and_the_sidecar_share_the_socket(name: str) -> None:
    server = values(name)["server"]
    container, native = sidecar(name)
    socket_path = flag(container["args"], "--socket-path")
    assert socket_path
    folder = os.path.dirname(socket_path)
    shared = {volume["name"] for volume in server["volumes"] if "emptyDir" in volume}
    [mine] = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    [theirs] = [m for m in server["volumeMounts"] if m["mountPath"] == folder]
    assert mine["name"] == theirs["name"] and mine["name"] in shared
    devices = declared_devices(name)
    assert device_option(devices["socket"], "address") == socket_path
    assert device_option(devices["socket"], "socket_type") == "unix"
    # Never the only device; the file device writes on the audit volume.
    assert device_option(devices["file"], "file_path").startswith(audit_mount_path(name) + "/")
    if name.startswith("openbao"):
        # A declared socket device is tested at start: the daemon must be listening first.
        assert native and container["restartPolicy"] == "Always" and "startupProbe" in container
        assert socket_path in " ".join(container["startupProbe"]["exec"]["command"])


@pytest.mark.parametrize("name", FOLLOW_FILES)
def test_the_sidecar_follows_the_file_device_on_the_audit_volume(name: str) -> None:
    container, _ = sidecar(name)
    args = container["args"]
    mount = audit_mount_path(name)
    assert "--follow" in args
    followed = flag(args, "--input")
    checkpoint = flag(args, "--checkpoint")
    assert followed and checkpoint
    assert os.path.dirname(followed) == mount and os.path.dirname(checkpoint) == mount
    assert {"name": "audit", "mountPath": mount} in container["volumeMounts"]
    assert device_option(declared_devices(name)["file"], "file_path") == followed
    assert "socket" not in declared_devices(name)


# ---------------------------------------------------------------- OpenBao, for real


def moved(text: str, moves: dict[str, Path]) -> str:
    for old, new in moves.items():
        text = text.replace(old, f"{new}/")
    return text


@pytest.mark.integration
@pytest.mark.parametrize("name", ["openbao-helm-values.yaml", "openbao-helm-values-follow.yaml"])
def test_openbao_starts_with_the_declared_devices_and_the_sidecar(
    name: str, bao_binary: str, short_tmp: Path, tmp_path: Path
) -> None:
    container, _ = sidecar(name)
    audit_folder = tmp_path / "audit"
    audit_folder.mkdir()
    moves = {"/run/vault-observe/": short_tmp, audit_mount_path(name) + "/": audit_folder}
    stanzas = "\n".join(audit_stanzas(values(name)["server"]["standalone"]["config"]))
    # The sidecar's flags, with its paths moved and stdout instead of the cluster's Zipkin.
    args = [moved(arg, moves) for arg in container["args"] if not arg.startswith("--zipkin")]
    args = [arg if not arg.startswith("--metrics-address") else "--metrics-address=127.0.0.1:0" for arg in args]
    daemon = ObserveProcess([*args, "--stdout", "--flush-interval=0.05"], tmp_path)
    bao = DevServer(bao_binary, workdir=tmp_path / "bao", extra_config=moved(stanzas, moves))
    try:
        socket_path = flag(args, "--socket-path")
        if socket_path:
            # OpenBao starts once the startupProbe passes: run it as the kubelet would.
            probe = [moved(arg, moves) for arg in container["startupProbe"]["exec"]["command"]]
            assert probe[0] == "python3"
            assert subprocess.run([sys.executable, *probe[1:]], capture_output=True).returncode != 0
            daemon.start(Path(socket_path))
            deadline = time.monotonic() + 30
            while subprocess.run([sys.executable, *probe[1:]], capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, f"the startupProbe never passed:\n{daemon.stderr()}"
                time.sleep(0.2)
        else:
            _start_follower(daemon)
        bao.start()  # fails when a declared device cannot be reached (the error has OpenBao's log)
        for i in range(5):
            bao.api("POST", f"secret/data/deploy/{i}", {"data": {"i": i}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.stdout().count("secret/data/deploy/") < 5:
            time.sleep(0.1)
        assert daemon.stdout().count('"secret/data/deploy/') >= 5, daemon.stderr() + bao.log_tail()
        assert (audit_folder / "audit.log").stat().st_size > 0  # the file device writes on the audit volume
    finally:
        bao.stop()
        if daemon.process is not None and daemon.process.poll() is None:
            assert daemon.terminate() == 0, daemon.stderr()
    checkpoint = flag(args, "--checkpoint")
    if checkpoint:
        assert Path(checkpoint).stat().st_size > 0


def _start_follower(daemon: ObserveProcess, timeout: float = 30.0) -> None:
    """Start a --follow daemon: it has no socket to wait for; wait for its metrics line."""
    with open(daemon.stdout_path, "wb") as out, open(daemon.stderr_path, "wb") as err:
        daemon.process = subprocess.Popen(
            [sys.executable, "-m", "vault_observe", *daemon.args],
            cwd=daemon.workdir,
            env=daemon.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.stderr()
        if "serving /metrics" in daemon.stderr():
            return
        time.sleep(0.05)
    raise AssertionError(f"the follower did not start:\n{daemon.stderr()}")
