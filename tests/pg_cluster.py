"""A real, throw-away PostgreSQL server on loopback for the tests, drills and the ledger benchmark.

``shared_server()`` starts one server per process (on first use) from the machine's PostgreSQL binaries
(``/usr/lib/postgresql/<major>/bin``, or ``$DPRDM_PG_BIN``): ``initdb`` into a fresh temporary directory (as the
``postgres`` user when running as root, since initdb refuses root), then ``pg_ctl start`` listening on
127.0.0.1 at a free port and on a unix socket in that directory, with ``fsync=on`` and ``synchronous_commit=on``
(the durability a ledger needs). It is stopped (``pg_ctl stop -m fast``) and its directory removed at exit.
Every test gets its own ledger as a fresh schema of that server (``?schema=t_<hex>``).

Returns None (callers skip with :data:`SKIP_REASON`) only when no PostgreSQL binaries exist.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

SKIP_REASON = (
    "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); install them with "
    "'apt-get install postgresql' (CI does, see .ci/run)"
)


@dataclass(frozen=True)
class PgServer:
    """A running server: its base URL (superuser ``postgres``, database ``postgres``) and where it lives."""

    url: str
    port: int
    directory: Path
    bin_dir: Path

    def ledger_url(self, tag: str = "t") -> str:
        """A URL naming a fresh, not yet existing ledger schema."""
        return f"{self.url}?schema={tag}_{uuid.uuid4().hex[:12]}"


def bin_dir() -> Path | None:
    """The directory holding initdb/pg_ctl, newest major version first; None if there is none."""
    explicit = os.environ.get("DPRDM_PG_BIN")
    candidates = (
        [explicit]
        if explicit
        else sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
        )
    )
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    """Run as the postgres user when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_server(*, max_connections: int = 120) -> PgServer | None:
    """Start a fresh server (see the module docstring); None when no binaries exist."""
    binaries = bin_dir()
    if binaries is None:
        return None
    try:
        return _start(binaries, max_connections)
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode(errors="replace").strip()
        raise RuntimeError(f"could not start a PostgreSQL test server with {binaries}: {detail}") from err


def _start(binaries: Path, max_connections: int) -> PgServer:
    directory = Path(tempfile.mkdtemp(prefix="dprdm-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    subprocess.run(
        _as_owner([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=on -c synchronous_commit=on "
        f"-c max_connections={max_connections} -c shared_buffers=64MB"
    )
    subprocess.run(
        _as_owner(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(directory / "log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = PgServer(
        url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        port=port,
        directory=directory,
        bin_dir=binaries,
    )
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and stop_server(server))  # never from a forked child
    return server


def stop_server(server: PgServer) -> None:
    """Stop the server and remove its directory (idempotent)."""
    if (server.directory / "data" / "postmaster.pid").exists():
        subprocess.run(
            _as_owner(
                [str(server.bin_dir / "pg_ctl"), "-D", str(server.directory / "data"), "-m", "fast", "stop"]
            ),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    shutil.rmtree(server.directory, ignore_errors=True)


_SHARED: list[PgServer | None] = []


def shared_server() -> PgServer | None:
    """The one server of this process (started on first call); None when no binaries exist."""
    if not _SHARED:
        _SHARED.append(start_server())
    return _SHARED[0]
