"""A throwaway PostgreSQL cluster for tests that stop the database under the server.

The shared PostgreSQL on 127.0.0.1:5432 serves every other test and must never be stopped, so
outage tests start their own cluster with the server's own ``initdb``/``pg_ctl`` (from
/usr/lib/postgresql/*/bin or $PATH), in a temporary directory, on a free port. initdb refuses
to run as root, so as root the cluster runs as the ``postgres`` OS user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.process import free_port


def _bin_dir() -> str | None:
    """The newest installed server's bin directory (one with both initdb and pg_ctl)."""

    def version(path: str) -> float:
        try:
            return float(path.split("/")[-2])
        except ValueError:
            return 0.0

    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for d in dirs:
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(
            os.path.join(d, "pg_ctl"), os.X_OK
        ):
            return d
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and os.path.dirname(initdb) == os.path.dirname(pg_ctl):
        return os.path.dirname(initdb)
    return None


def unavailable_reason() -> str | None:
    """None when a throwaway cluster can be made here; otherwise why not."""
    if _bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@dataclass
class PgCluster:
    data_dir: str
    port: int
    bin_dir: str
    log_path: str

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        # Loopback TCP only, socket in the data directory; fsync off: nothing here is kept.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.data_dir} -c fsync=off "
                   "-c max_connections=50")
        self._run("pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-o", options,
                  "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session and stops; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "-t", "30", "stop")


@contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """initdb a cluster in a new temporary directory, start it, and remove it all at the end."""
    bin_dir = _bin_dir()
    assert bin_dir is not None, unavailable_reason()
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    root = tempfile.mkdtemp(prefix="hs-pgcluster-")
    data_dir = os.path.join(root, "data")
    os.mkdir(data_dir, 0o700)
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, pg.pw_uid, pg.pw_gid)
        os.chown(data_dir, pg.pw_uid, pg.pw_gid)
    cluster = PgCluster(data_dir, free_port(), bin_dir, os.path.join(root, "postgres.log"))
    try:
        cluster._run("initdb", "-D", data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--no-sync", "--no-instructions")
        cluster.start()
        try:
            yield cluster
        finally:
            try:
                cluster.stop("immediate")
            except RuntimeError:
                pass  # already stopped
    finally:
        shutil.rmtree(root, ignore_errors=True)
