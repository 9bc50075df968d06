"""
Fixtures for tests against a real PostgreSQL: one throwaway server per
test session (started from the machine's binaries), a fresh database per
test.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from postgres_server import ThrowawayPostgres, postgres_bin


@pytest.fixture(scope="session")
def postgres():
    """
    The session's throwaway PostgreSQL (a L{ThrowawayPostgres}).
    """
    from conftest import need_program

    need_program(postgres_bin("initdb"), "postgresql", "postgresql")
    folder = Path(tempfile.mkdtemp(prefix="medimage-pg-"))
    server = ThrowawayPostgres(folder).init().start()
    yield server
    server.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres):
    """
    The URL of a fresh, empty database on the session's PostgreSQL.
    """
    return postgres.new_database()
