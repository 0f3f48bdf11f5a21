"""Run a shipped systemd unit's ExecStart the way systemd would, without systemd as PID 1.

Meant to run as root in private mount and network namespaces (``unshare --mount --net
--propagation private python -m tests.systemd_exec ...``): /etc is overlaid and /run,
/var/lib and /var/log are fresh tmpfs mounts, so nothing of the host changes. There it

- creates the Vault server's user and group ``vault`` (as Vault's package does) and runs
  ``systemd-sysusers`` on the shipped sysusers file;
- runs the unit's own install comments (``install ...`` lines) from deploy/;
- creates RuntimeDirectory=/StateDirectory= with the unit's modes and owner;
- with ``--socket``, creates the .socket unit's listening socket (SocketUser/Group/Mode,
  DirectoryMode) and passes it as fd 3 (LISTEN_FDS=1, LISTEN_PID the daemon's pid);
- starts ExecStart (its binary replaced by the installed entry point) under the unit's
  User=/Group=/SupplementaryGroups= with ``setpriv`` (no capabilities, no new
  privileges), its UMask= and MemoryDenyWriteExecute= (prctl PR_SET_MDWE), and a
  NOTIFY_SOCKET it listens on;
- receives the spans where the shipped config sends them (its Zipkin host mapped to a
  receiver on 127.0.0.1);
- and prints what it saw as JSON: notifications, the socket's owner and mode, who can
  connect, who can read the config, the exit status after SIGTERM.

What it cannot do: the namespaces, seccomp filter and read-only file system of the
unit's hardening, which only systemd sets up.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import json
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.receivers import ZipkinReceiver

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SAMPLE = REPO / "tests" / "data" / "openbao-sample.jsonl"
PR_SET_MDWE = 65


def read_unit(path: Path) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """Sections of a unit file (every value of a repeated key), and its comment lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    comments: list[str] = []
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            continue
        if not stripped:
            continue
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), {})
            continue
        assert current is not None, line
        key, _, value = stripped.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections, comments


def run(command: list[str], **kw: Any) -> None:
    subprocess.run(command, check=True, **kw)


def private_file_system() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="vo-systemd-"))
    run(["mount", "-t", "tmpfs", "tmpfs", str(scratch)])
    (scratch / "upper").mkdir()
    (scratch / "work").mkdir()
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/etc,upperdir={scratch}/upper,workdir={scratch}/work", "/etc"])  # fmt: skip
    for folder in ("/run", "/var/lib", "/var/log"):
        run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", folder])
    run(["ip", "link", "set", "lo", "up"])  # a private network namespace: its own ports


def zipkin_at(url: str) -> ZipkinReceiver:
    """A Zipkin receiver where the shipped config sends: its host mapped to 127.0.0.1."""
    parts = urlsplit(url)
    with open("/etc/hosts", "a") as hosts:
        hosts.write(f"\n127.0.0.1 {parts.hostname}\n")
    receiver = ZipkinReceiver()
    handler = receiver.server.RequestHandlerClass
    receiver.server.server_close()
    receiver.server = ThreadingHTTPServer(("127.0.0.1", parts.port or 80), handler)
    receiver.server.daemon_threads = True
    receiver.thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    return receiver


def install_as_commented(comments: list[str]) -> list[str]:
    """Run the unit's own install instructions that concern files (not systemctl)."""
    done = []
    for comment in comments:
        if not comment.startswith(("install ", "systemd-sysusers")):
            continue  # prose, or systemctl
        words = shlex.split(comment)
        if words[0] == "systemd-sysusers":
            run(["systemd-sysusers", str(DEPLOY / "vault-observe.sysusers")])
            done.append(comment)
        elif words[0] == "install" and not any(
            w.startswith(("/etc/systemd/", "/usr/lib/sysusers.d")) for w in words
        ):
            run(words, cwd=DEPLOY)
            done.append(comment)
    return done


def make_directory(path: Path, mode: str, user: str, group: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, int(mode, 8))
    os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)


def as_user(user: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python3 -c code`` as ``user`` with only that user's groups."""
    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [entry.pw_gid]
    return subprocess.run(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
         "--groups=" + ",".join(map(str, groups)), "--", sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


CAN_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1]); s.sendall(open(sys.argv[2], "rb").read()); print("yes")
except PermissionError:
    print("EACCES")
"""

CAN_READ = """
import sys
try:
    open(sys.argv[1], "rb").read(); print("yes")
except PermissionError:
    print("EACCES")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("unit")
    parser.add_argument("--entry-point", required=True, help="the installed vault-observe script")
    parser.add_argument("--socket", help="the .socket unit to activate it with")
    args = parser.parse_args()
    private_file_system()
    facts: dict[str, Any] = {}
    # The Vault server's package makes its user and group.
    run(["groupadd", "--system", "vault"])
    run(["useradd", "--system", "-g", "vault", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "vault"])
    sections, comments = read_unit(DEPLOY / args.unit)
    facts["installed"] = install_as_commented(comments)
    service = sections["Service"]

    def one(key: str, default: str = "") -> str:
        return service.get(key, [default])[-1]

    user, group = one("User"), one("Group")
    supplementary = " ".join(service.get("SupplementaryGroups", [])).split()
    for kind, root in (("Runtime", "/run"), ("State", "/var/lib")):
        for name in one(f"{kind}Directory").split():
            make_directory(Path(root) / name, one(f"{kind}DirectoryMode", "0755"), user, group)
    command = shlex.split(one("ExecStart"))
    facts["exec_start"] = command
    command[0] = args.entry_point

    config_path = Path(command[command.index("--config") + 1])
    config = tomllib.loads(config_path.read_text())
    follow_log = Path(config["input"]) if config.get("follow") else None
    if follow_log is not None:
        # Vault's file device with mode=0640, in a folder of its user (follow.toml says how).
        make_directory(follow_log.parent, "0750", "vault", "vault")
        follow_log.write_bytes(SAMPLE.read_bytes())
        os.chmod(follow_log, 0o640)
        os.chown(follow_log, pwd.getpwnam("vault").pw_uid, grp.getgrnam("vault").gr_gid)

    prefix: list[str] = []
    passed: socket.socket | None = None
    if args.socket:
        socket_unit = read_unit(DEPLOY / args.socket)[0]["Socket"]
        listen = Path(socket_unit["ListenStream"][-1])
        make_directory(listen.parent, socket_unit.get("DirectoryMode", ["0755"])[-1], "root", "root")
        passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        passed.bind(str(listen))
        os.chmod(listen, int(socket_unit["SocketMode"][-1], 8))
        os.chown(listen, pwd.getpwnam(socket_unit["SocketUser"][-1]).pw_uid,
                 grp.getgrnam(socket_unit["SocketGroup"][-1]).gr_gid)  # fmt: skip
        passed.listen(int(socket_unit.get("Backlog", ["128"])[-1]))
        prefix = [sys.executable, "-m", "tests.activation", f"{passed.fileno()}=audit", "--"]
        # The service's RuntimeDirectory= takes over the folder when it starts.
        for name in one("RuntimeDirectory").split():
            make_directory(Path("/run") / name, one("RuntimeDirectoryMode", "0755"), user, group)
            os.chown(listen, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)

    notify_address = f"@vault-observe-unit-{uuid.uuid4().hex}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + notify_address[1:])
    entry = pwd.getpwnam(user)
    groups = [grp.getgrnam(group).gr_gid] + [grp.getgrnam(g).gr_gid for g in supplementary]
    groups += [g.gr_gid for g in grp.getgrall() if user in g.gr_mem and g.gr_gid not in groups]
    setpriv = [
        "setpriv", f"--reuid={entry.pw_uid}", f"--regid={grp.getgrnam(group).gr_gid}",
        "--groups=" + ",".join(map(str, groups)), "--inh-caps=-all", "--bounding-set=-all",
    ]  # fmt: skip
    if one("NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": entry.pw_dir, "USER": user, "LOGNAME": user, "SHELL": entry.pw_shell,
        "NOTIFY_SOCKET": notify_address, "PYTHONPATH": str(REPO),
    }  # fmt: skip
    probe = subprocess.run([*setpriv, "--", args.entry_point, "--version"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        # A checkout in a private home folder: the service's user cannot run it.
        print(json.dumps({"skip": f"{user} cannot run {args.entry_point}: {probe.stderr.strip()[-300:]}"}))
        return
    receiver = zipkin_at(config["zipkin"])
    receiver.__enter__()
    umask = int(one("UMask", "0022"), 8)
    mdwe = one("MemoryDenyWriteExecute") == "yes"
    facts["mdwe"] = False

    def preexec() -> None:
        os.umask(umask)
        if mdwe:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_MDWE, 1, 0, 0, 0)  # where the kernel has it (6.3+)

    if mdwe:
        libc = ctypes.CDLL(None, use_errno=True)
        facts["mdwe"] = libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE: known to this kernel
    err_path = Path(tempfile.mkdtemp()) / "daemon.err"
    with open(err_path, "wb") as err:
        daemon = subprocess.Popen(
            [*prefix, *setpriv, "--", *command], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec,
            pass_fds=[passed.fileno()] if passed else [], cwd="/",
        )  # fmt: skip
    if passed is not None:
        passed.close()  # as systemd would keep it; here the daemon's copy is the one
    messages: list[str] = []
    notify.settimeout(1.0)
    end = time.monotonic() + 90
    while time.monotonic() < end and not any("READY=1" in m.split("\n") for m in messages):
        if daemon.poll() is not None:
            break
        try:
            messages.append(notify.recv(4096).decode())
        except TimeoutError:
            pass
    facts["ready"] = any("READY=1" in m.split("\n") for m in messages)
    with open(f"/proc/{daemon.pid}/status") as status:
        for line in status:
            if line.startswith(("Uid:", "Gid:", "Groups:", "CapBnd:", "NoNewPrivs:")):
                facts[line.split(":")[0]] = line.split(":", 1)[1].split()
    facts["names"] = {"vault-observe": [pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid],
                      "vault": [pwd.getpwnam("vault").pw_uid, grp.getgrnam("vault").gr_gid]}  # fmt: skip
    facts["config_mode"] = oct(os.stat(config_path).st_mode & 0o7777)
    facts["config_readable_by_vault"] = as_user("vault", CAN_READ, str(config_path)).stdout.strip()
    if "socket-path" in config and not follow_log:
        path = config["socket-path"]
        st = os.stat(path)
        facts["socket"] = {"uid": st.st_uid, "gid": st.st_gid, "mode": oct(st.st_mode & 0o777)}
        facts["connect_as_vault"] = as_user("vault", CAN_CONNECT, path, str(SAMPLE)).stdout.strip()
        run(["useradd", "--system", "-M", "-s", "/usr/sbin/nologin", "other"])
        facts["connect_as_other"] = as_user("other", CAN_CONNECT, path, str(SAMPLE)).stdout.strip()
    end = time.monotonic() + 30  # until the sample's spans have arrived
    while time.monotonic() < end and len(receiver.spans) < 700:
        time.sleep(0.1)
    daemon.send_signal(signal.SIGTERM)
    try:
        facts["exit"] = daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        facts["exit"] = "killed after 60 s"
    notify.settimeout(0.5)
    try:
        while True:
            messages.append(notify.recv(4096).decode())
    except TimeoutError:
        pass
    facts["notifications"] = messages
    receiver.__exit__(None, None, None)
    facts["spans_received"] = len(receiver.spans)
    facts["stderr"] = err_path.read_text(errors="replace")[-4000:]
    if "socket-path" in config:
        facts["socket_left"] = os.path.exists(config["socket-path"])
    checkpoint = config.get("checkpoint")
    if checkpoint and os.path.exists(checkpoint):
        st = os.stat(checkpoint)
        facts["checkpoint"] = {"uid": st.st_uid, "mode": oct(st.st_mode & 0o777)}
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
