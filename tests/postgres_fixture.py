"""A throw-away PostgreSQL server for tests: initdb in a temporary folder, listening on 127.0.0.1 only.

Import the fixture into a test module (`from postgres_fixture import postgres_url`). If no server
binaries are found under /usr/lib/postgresql/*/bin or on PATH, Debian's `postgresql` package is
installed with apt-get (as root); without root or apt-get the tests are skipped. The server runs
as an unprivileged user when the tests run as root (PostgreSQL refuses root), and is always stopped
and its folder removed at the end of the session.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE_USER = "tune_test"
START_TIMEOUT_SECONDS = 60


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl (newest Debian version first), or None."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda path: _version_key(path.parent.parent.name), reverse=True)
    if candidates:
        return candidates[0].parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def install_postgres() -> None:
    """apt-get install postgresql (Debian's package); skips the tests if that is not possible here."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("PostgreSQL is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root, and neither a 'postgres' nor a 'nobody' user exists to run the server")


def as_user(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL server (trust auth, loopback only) for this session."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        install_postgres()
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            pytest.fail("apt-get installed postgresql, but no initdb was found under /usr/lib/postgresql/*/bin")
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix="tune-pg-"))  # not pytest's tmp: that is private to our user
    if user is not None:
        record = pwd.getpwnam(user)
        os.chown(root, record.pw_uid, record.pw_gid)
    data, log = root / "data", root / "server.log"
    port = free_port()
    started = False
    try:
        _run(as_user(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", DATABASE_USER, "--auth=trust",
                            "-E", "UTF8", "--no-sync"]), "initdb")
        server_options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        _run(as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", server_options,
                            "-w", "-t", str(START_TIMEOUT_SECONDS), "start"]), "pg_ctl start", log)
        started = True
        yield f"postgresql+psycopg2://{DATABASE_USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(as_user(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        server_log = log.read_text()[-2000:] if log is not None and log.exists() else ""
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n"
                    f"{server_log}")
