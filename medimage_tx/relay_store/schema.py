"""
The PostgreSQL relay store's schema, versioned: each entry of L{STEPS}
upgrades the database by one version.  A server creates or upgrades the
schema itself at start, under an advisory lock so that nodes starting
together do it once; it refuses a database from a newer version.

Times are seconds since the epoch from the nodes' clocks (kept in step by
NTP, as any cluster's are).
"""

from __future__ import annotations

#: An arbitrary number: the advisory lock the schema upgrade holds.
SCHEMA_LOCK = 0x6D656469  # "medi"

STEPS: list[tuple[str, ...]] = [
    # Version 1: the queue with its leases and photo bytes; pairing codes
    # and failed redemptions.
    (
        """
        CREATE TABLE relay_photos (
            id bigserial PRIMARY KEY,
            paired_id text NOT NULL,
            relative text NOT NULL UNIQUE,
            size bigint NOT NULL,
            sha256 bytea NOT NULL,
            body bytea NOT NULL,
            queued_at double precision NOT NULL,
            receipt text,
            leased_until double precision
        )
        """,
        # Photos are already compressed: store them as they are.
        "ALTER TABLE relay_photos ALTER COLUMN body SET STORAGE EXTERNAL",
        "CREATE INDEX relay_photos_queue ON relay_photos (paired_id, id)",
        "CREATE INDEX relay_photos_leases ON relay_photos (leased_until) WHERE leased_until IS NOT NULL",
        """
        CREATE TABLE pairing_codes (
            code text PRIMARY KEY,
            paired_id text NOT NULL,
            proxy_server text NOT NULL,
            country text NOT NULL,
            expires double precision NOT NULL
        )
        """,
        """
        CREATE TABLE pairing_failures (
            id bigserial PRIMARY KEY,
            address text NOT NULL,
            at double precision NOT NULL
        )
        """,
        "CREATE INDEX pairing_failures_at ON pairing_failures (at)",
        "CREATE INDEX pairing_failures_address ON pairing_failures (address, at)",
    ),
    # Version 2: codes issued, for the issuing limits; photos by age.
    (
        """
        CREATE TABLE pairing_issues (
            id bigserial PRIMARY KEY,
            address text NOT NULL,
            at double precision NOT NULL
        )
        """,
        "CREATE INDEX pairing_issues_at ON pairing_issues (at)",
        "CREATE INDEX pairing_issues_address ON pairing_issues (address, at)",
        # For the expiry of photos nobody collected.
        "CREATE INDEX relay_photos_age ON relay_photos (queued_at)",
    ),
    # Version 3: photos under one name found by digest (finding 19.1: the
    # duplicate check asked once per photo under the name).  Each row keeps
    # the name it was sent under (number 0) and its number under it;
    # earlier rows count as sent under their own name.
    (
        "ALTER TABLE relay_photos ADD COLUMN first_name text",
        "ALTER TABLE relay_photos ADD COLUMN name_number integer NOT NULL DEFAULT 0",
        "UPDATE relay_photos SET first_name = relative",
        "ALTER TABLE relay_photos ALTER COLUMN first_name SET NOT NULL",
        "CREATE INDEX relay_photos_by_digest ON relay_photos (first_name, sha256)",
        "CREATE INDEX relay_photos_by_number ON relay_photos (first_name, name_number)",
    ),
    # Version 4: the ids a clinic is known to read (issue 19 finding 1),
    # with the address that made each known and when it was last read.
    (
        """
        CREATE TABLE relay_known_ids (
            paired_id text PRIMARY KEY,
            address text NOT NULL,
            last_read double precision NOT NULL
        )
        """,
        "CREATE INDEX relay_known_ids_address ON relay_known_ids (address, last_read)",
        "CREATE INDEX relay_known_ids_last_read ON relay_known_ids (last_read)",
    ),
]

VERSION = len(STEPS)


class SchemaTooNew(Exception):
    pass


def upgrade(conn) -> tuple[int, int]:
    """
    Bring the schema to L{VERSION} in one transaction; returns the versions
    before and after.

    @raise SchemaTooNew: the database was upgraded by a newer medimage_tx.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS medimage_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM medimage_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO medimage_schema (version) VALUES (0)")
            before = 0
        else:
            before = row[0]
        if before > VERSION:
            raise SchemaTooNew(
                f"the database has schema version {before}, newer than this medimage_tx knows "
                f"({VERSION}): upgrade medimage_tx on this node")
        for statements in STEPS[before:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("UPDATE medimage_schema SET version = %s", (VERSION,))
    return before, VERSION
