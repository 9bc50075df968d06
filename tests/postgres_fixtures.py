"""
Fixtures for tests against a real PostgreSQL: one throwaway server per
test session (started from the machine's binaries), a fresh database per
test.
"""

from __future__ import annotations

import os
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
    if postgres_bin("initdb") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
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
