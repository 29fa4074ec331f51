"""The ``postgres_url`` fixture: a real, throwaway PostgreSQL server for the tests of shared study storage.

It starts one server for the test session from PostgreSQL's own binaries (Debian's
``postgresql`` package keeps them in /usr/lib/postgresql/<version>/bin), in a temporary folder,
on a free loopback port, with a password user and a database of its own, and stops it at the end;
the system's PostgreSQL service need not run. Without the server installed, the tests that need
it fail, saying how to install it; ``LIT_NNOPT_SKIP_POSTGRES=1`` skips them instead.
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

USER = "lit_nnopt"
PASSWORD = "tune-test-pw"
DATABASE = "studies"
SKIP_VARIABLE = "LIT_NNOPT_SKIP_POSTGRES"
# PostgreSQL refuses to run as root; Debian's package creates this system user to run it.
SERVER_USER = "postgres"
_INSTALL_HINT = (
    "Install it with `sudo apt-get install postgresql` (Debian or Ubuntu; the tests start a throwaway server of "
    f"their own, the system's service need not run), or set {SKIP_VARIABLE}=1 to skip the tests that need it."
)


def server_binaries() -> Path | None:
    """The bin folder of the newest installed PostgreSQL server, or None.

    Debian's layout first: its /usr/bin holds only wrappers of the client programs. Elsewhere,
    the folder of the ``initdb`` found on PATH.
    """
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda initdb: int(initdb.parts[-3]) if initdb.parts[-3].isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user() -> list[str]:
    """The command prefix that runs a server program as a user other than root (none when not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"the tests run as root, which PostgreSQL refuses, and there is no `{SERVER_USER}` user to run the "
            f"server as. {_INSTALL_HINT}"
        )
    return ["runuser", "-u", SERVER_USER, "--"]


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
        pytest.fail(f"{what} failed (exit {done.returncode}): {done.stdout}{done.stderr}{server_log}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE`` of a PostgreSQL server started for this session."""
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get(SKIP_VARIABLE) == "1":
            pytest.skip(f"PostgreSQL's server is not installed, and {SKIP_VARIABLE}=1 asks to skip the tests of it")
        pytest.fail(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH). "
            + _INSTALL_HINT
        )
    as_server = _as_server_user()
    # Not under pytest's base folder: that is private to the user running the tests, and the
    # server's user must reach its own data and socket folder.
    folder = Path(tempfile.mkdtemp(prefix="lit_nnopt-postgres-"))
    if as_server:
        shutil.chown(folder, SERVER_USER, SERVER_USER)
    data, log, port = folder / "data", folder / "server.log", _free_port()
    pg_ctl = [*as_server, str(binaries / "pg_ctl"), "--pgdata", str(data), "--log", str(log)]
    try:
        _run(
            [
                *as_server,
                str(binaries / "initdb"),
                *("--pgdata", str(data), "--username", "postgres", "--encoding", "UTF8"),
                # The superuser connects through the socket folder only; every TCP client gives a password.
                *("--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync", "--no-instructions"),
            ],
            "initdb",
        )
        # fsync off: the server and its data are thrown away at the end of the session.
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        _run([*pg_ctl, "--options", options, "--wait", "--timeout", "60", "start"], "starting PostgreSQL", log)
        psql = [str(binaries / "psql"), "--host", str(folder), "--port", str(port), "--username", "postgres"]
        _run(
            [
                *(*psql, "--dbname", "postgres", "--set", "ON_ERROR_STOP=1"),
                *("--command", f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
                *("--command", f"CREATE DATABASE {DATABASE} OWNER {USER}"),
            ],
            "creating the test user and database",
        )
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if (data / "postmaster.pid").is_file():
            subprocess.run([*pg_ctl, "--mode", "immediate", "--wait", "stop"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)
