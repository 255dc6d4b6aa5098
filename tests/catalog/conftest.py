"""A throwaway PostgreSQL cluster on 127.0.0.1 and a Tiled server whose catalog (and tabular
storage) is in it: what a facility runs instead of the embedded SQLite catalog.

The cluster is made with the PostgreSQL server binaries (``initdb``, ``pg_ctl``,
``pg_isready``, ``createdb``; found on ``PATH`` or under ``/usr/lib/postgresql/*/bin``, or in
``$SYMDENOISE_PG_BIN``); the tests skip, saying so, when they are missing. ``initdb`` refuses
to run as root, so as root the cluster belongs to the ``postgres`` system user. Trust
authentication, loopback only, a private socket directory; stopped and removed at the end.
"""

from __future__ import annotations

import glob
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The database holding Tiled's catalog (nodes, data sources, assets).
CATALOG_DB = "symdenoise_catalog"
#: The database holding the event tables TiledWriter appends to.
TABLES_DB = "symdenoise_tables"


def _postgres_bin() -> Path | None:
    candidates = [os.environ.get("SYMDENOISE_PG_BIN", "")]
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in filter(None, candidates):
        folder = Path(candidate)
        if all((folder / tool).is_file() for tool in
               ("initdb", "pg_ctl", "pg_isready", "createdb", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(ready, what: str, timeout: float, proc: subprocess.Popen | None = None,
                log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what} was not ready within {timeout:.0f} s:\n{tail}")
        time.sleep(0.1)


@dataclass
class PostgresCluster:
    bindir: Path
    directory: Path
    port: int
    owner: str | None  # the system user the server runs as (None: the current user)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def as_owner(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self.owner is not None:
            runuser = shutil.which("runuser")
            command = ([runuser, "-u", self.owner, "--", *command] if runuser else
                       ["su", self.owner, "-s", "/bin/sh", "-c", shlex.join(command)])
        return subprocess.run(command, capture_output=True, text=True, check=check,
                              timeout=120)

    def is_ready(self) -> bool:
        return subprocess.run(
            [self.bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True, timeout=30).returncode == 0

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.directory} -c fsync=off")
        self.as_owner(self.bindir / "initdb", "-D", self.data, "--auth=trust", "-U",
                      "postgres", "-E", "UTF8", "--no-sync")
        self.as_owner(self.bindir / "pg_ctl", "start", "-W", "-D", self.data, "-l", self.log,
                      "-o", options)
        _wait_until(self.is_ready, "PostgreSQL", 60, log=self.log)

    def create_database(self, name: str) -> None:
        subprocess.run([self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.data.exists():
            self.as_owner(self.bindir / "pg_ctl", "stop", "-D", self.data, "-m", "fast",
                          check=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster on 127.0.0.1 (trust auth, user ``postgres``)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, pg_isready) not found; "
                    "install postgresql or set SYMDENOISE_PG_BIN to their folder")
    pytest.importorskip("asyncpg", reason="asyncpg is needed for a PostgreSQL Tiled catalog")
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user for initdb "
                        "(which refuses to run as root)")
        owner = "postgres"
    # Not under pytest's tmp_path: its parents are private to root, the server's user must
    # reach its data and socket directory.
    directory = Path(tempfile.mkdtemp(prefix="symdenoise-pg-"))
    if owner is not None:
        shutil.chown(directory, user=owner, group=None)
    cluster = PostgresCluster(bindir, directory, _free_port(), owner)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """``postgresql+asyncpg://postgres@127.0.0.1:PORT/symdenoise_catalog``: an empty database
    for a Tiled catalog."""
    postgres_cluster.create_database(CATALOG_DB)
    return postgres_cluster.url(CATALOG_DB)


def _tiled_command() -> list[str]:
    script = Path(sys.executable).with_name("tiled")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tiled"]


def _answers(uri: str) -> bool:
    import httpx

    try:
        return httpx.get(uri, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def postgres_tiled(postgres_cluster, postgres_url, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(uri, api key) of ``tiled serve catalog`` on the PostgreSQL catalog: arrays written to
    a directory, event tables to a second PostgreSQL database."""
    postgres_cluster.create_database(TABLES_DB)
    tiled = _tiled_command()
    init = subprocess.run([*tiled, "catalog", "init", postgres_url], capture_output=True,
                          text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    data = tmp_path_factory.mktemp("tiled-data")
    log = data.parent / "tiled-server.log"
    port, api_key = _free_port(), secrets.token_hex(16)
    command = [*tiled, "serve", "catalog", postgres_url,
               "-w", str(data), "-w", postgres_cluster.url(TABLES_DB, driver="postgresql"),
               "--api-key", api_key, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait_until(lambda: _answers(uri), "tiled serve catalog", 90, proc=server, log=log)
        yield f"http://127.0.0.1:{port}", api_key
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
