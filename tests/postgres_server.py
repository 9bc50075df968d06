"""
A throwaway PostgreSQL for tests and benchmarks, started from the
machine's own binaries (Debian's postgresql package; .ci/run installs it).

PostgreSQL refuses to run as root, so when we are root the server runs as
the C{postgres} user the package creates.  It listens on 127.0.0.1 only,
on a free port, with trust authentication: nothing outside the machine can
reach it, and it is deleted with its temporary folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Optional


def postgres_bin(name: str) -> Optional[str]:
    """
    A PostgreSQL server program (Debian keeps them off the PATH).
    """
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """
    One PostgreSQL server in C{folder}: L{start}, L{stop} (fast shutdown),
    L{kill} (as a crash would), and a fresh database per L{new_database}.
    """

    def __init__(self, folder: Path, *, fsync: bool = False, extra: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.port = free_port()
        self.fsync = fsync
        self.extra = extra
        self._databases = 0
        self._started = False
        self._user = "postgres" if os.geteuid() == 0 else None
        for program in ("initdb", "pg_ctl", "postgres"):
            if postgres_bin(program) is None:
                raise RuntimeError(f"PostgreSQL's {program} is not installed (apt-get install postgresql)")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = list(argv)
        kwargs = {}
        if self._user is not None:
            entry = pwd.getpwnam(self._user)

            def drop_root() -> None:
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)

            kwargs["preexec_fn"] = drop_root
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120,
                              cwd="/", **kwargs)

    def init(self) -> "ThrowawayPostgres":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            # The folders above must be passable for that user (a fresh
            # folder in /tmp is).
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--locale=C")
        return self

    @property
    def options(self) -> str:
        settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={self.folder}",
                    "max_connections=200", f"fsync={'on' if self.fsync else 'off'}",
                    "full_page_writes=" + ("on" if self.fsync else "off"), *self.extra]
        return f"-p {self.port} " + " ".join(f"-c {s}" for s in settings)

    def start(self) -> "ThrowawayPostgres":
        """
        Start the server.  At the first start, a port that another program
        took after L{free_port} found it free is left for another one;
        later starts keep the port (the stores' URLs name it).
        """
        log = self.folder / "server.log"
        for _ in range(5):
            seen = log.stat().st_size if log.exists() else 0
            started = self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-o", self.options, "-w",
                                "-t", "60", "-l", str(log), "start", check=False)
            if started.returncode == 0:
                self._started = True
                return self
            with open(log, "rb") as f:
                f.seek(seen)
                taken = b"could not bind" in f.read()
            if self._started or not taken:
                started.check_returncode()
            self.port = free_port()
        started.check_returncode()
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop", check=False)

    def kill(self) -> None:
        """
        Stop as a crash would (no shutdown checkpoint).
        """
        self.stop("immediate")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """
        A fresh, empty database; returns its URL.
        """
        import psycopg

        self._databases += 1
        name = f"medimage_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
