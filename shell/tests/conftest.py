"""A real OpenSSH server for the SSH tests, one per test session (per xdist worker).

It runs as the current user, listens on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one free port; Linux
routes all of 127/8 to loopback), with its own host key and one authorized user key, all generated
here with ssh-keygen. The ssh config and known_hosts it writes go to the paths the root conftest put
in os.environ (KF_SSH_CONFIG / KF_SSH_KNOWN_HOSTS) before any Celery worker or daphne started, so
those processes see the same hosts as the tests:

- `kf-test` (and `kf-test-2`, a second name on the same Host line) → 127.0.0.1: key in known_hosts
- `kf-test-unknown` → 127.0.0.2: no known_hosts entry for that address (unknown host key)
- `kf-test-changed` → 127.0.0.3: known_hosts holds another key for it (a changed host key)
- `kf-test-nokey` → 127.0.0.1 with an IdentityFile that the server does not accept
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import _free_port, wait_for

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    user: str
    dir: Path
    config_path: Path
    known_hosts_path: Path
    client_key: Path
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: Any) -> Iterator[Sshd]:
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        pytest.fail("the SSH tests need OpenSSH (openssh-server, openssh-client): see .ci/run")
    base = tmp_path_factory.mktemp("sshd")
    base.chmod(0o700)
    for name in ("host_key", "client_key", "other_host_key", "stranger_key"):
        _keygen(base / name, f"kf-tests-{name}")
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    port = _free_port()
    user = getpass.getuser()
    (base / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nListenAddress 127.0.0.2:{port}\nListenAddress 127.0.0.3:{port}\n"
        f"HostKey {base / 'host_key'}\nAuthorizedKeysFile {base / 'authorized_keys'}\n"
        f"PidFile {base / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n")
    # sshd's privilege-separation directory; a fresh container has none.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    config = Path(os.environ["KF_SSH_CONFIG"])
    known_hosts = Path(os.environ["KF_SSH_KNOWN_HOSTS"])
    host_pub = (base / "host_key.pub").read_text().split()[:2]
    other_pub = (base / "other_host_key.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n"
                           f"[127.0.0.3]:{port} {' '.join(other_pub)}\n")
    common = f"  Port {port}\n  User {user}\n"
    config.write_text(
        "# kf test hosts (written by shell/tests/conftest.py)\n"
        "Host kf-test kf-test-2\n  HostName 127.0.0.1\n"
        f"{common}  IdentityFile {base / 'client_key'}\n\n"
        "Host kf-test-unknown\n  HostName 127.0.0.2\n"
        f"{common}  IdentityFile {base / 'client_key'}\n\n"
        "Host kf-test-changed\n  HostName 127.0.0.3\n"
        f"{common}  IdentityFile {base / 'client_key'}\n\n"
        "Host kf-test-nokey\n  HostName 127.0.0.1\n"
        f"{common}  IdentityFile {base / 'stranger_key'}\n\n"
        "Host *.internal !bastion.internal\n  User nobody\n")

    log_path = base / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stdout=log, stderr=log,
                                start_new_session=True)
    server = Sshd(port=port, user=user, dir=base, config_path=config, known_hosts_path=known_hosts,
                  client_key=base / "client_key", log_path=log_path, proc=proc)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {server.log()[-2000:]}")
        return _listening(port)

    try:
        wait_for(up, timeout=20, interval=0.1)
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def ssh_settings(sshd: Sshd, settings: Any) -> Sshd:
    """This process's settings pointed at the session's ssh config and known_hosts."""
    settings.KF_SSH_CONFIG = str(sshd.config_path)
    settings.KF_SSH_KNOWN_HOSTS = str(sshd.known_hosts_path)
    return sshd


@pytest.fixture
def silent_hosts(ssh_settings: Sshd, settings: Any, tmp_path: Path) -> Iterator[dict[str, int]]:
    """Two more aliases, for this process only: `kf-silent` (a port that accepts TCP connections but
    never says a word: the connect timeout) and `kf-closed` (a port nothing listens on)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshakes; nobody ever accepts or answers
    closed_port = _free_port()
    ports = {"kf-silent": silent.getsockname()[1], "kf-closed": closed_port}
    config = tmp_path / "ssh_config"
    config.write_text(f"Include {ssh_settings.config_path}\n" + "".join(
        f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  IdentityFile {ssh_settings.client_key}\n"
        for alias, port in ports.items()))
    settings.KF_SSH_CONFIG = str(config)
    settings.KF_SSH_CONNECT_TIMEOUT_SECONDS = 0.5
    try:
        yield ports
    finally:
        silent.close()
