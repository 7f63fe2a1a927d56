"""The ledger's tables, in SQL that SQLite and PostgreSQL both run.

A new ledger is made the way an old one is brought up to date: the version 1
tables, then every migration in order. Both backends run the same statements,
so a schema change is written once. The one difference is the id column
(`{id}`): SQLite's rowid alias or PostgreSQL's identity column. Times are
seconds since the epoch in DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes: too
coarse for a timestamp); SQLite reads the same names with the same meaning.
"""

from __future__ import annotations

SCHEMA_VERSION = 6

# Version 1: seen files (the stat cache that lets rescans skip unchanged files
# without rehashing) and jobs, one per (content sha256, output profile).
BASE_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE jobs (
    id {id},
    sha256 TEXT NOT NULL,
    profile TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    source TEXT NOT NULL,
    owner_input BIGINT,
    output_dir TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    UNIQUE (sha256, profile))""",
    "CREATE INDEX jobs_by_state ON jobs (state, not_before)",
    """CREATE TABLE inputs (
    id {id},
    path TEXT NOT NULL,
    relative TEXT NOT NULL,
    dev BIGINT NOT NULL,
    ino BIGINT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    job_id BIGINT REFERENCES jobs (id),
    output_dir TEXT,
    error TEXT,
    disposed INTEGER NOT NULL DEFAULT 0,
    detected_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (path, dev, ino, size, mtime_ns))""",
    "CREATE INDEX inputs_by_state ON inputs (state)",
    "CREATE INDEX inputs_by_job ON inputs (job_id)",
]

# Each step takes a ledger from version N (the key) to N + 1, in one transaction.
MIGRATIONS: dict[int, list[str]] = {
    # 2: inputs remember where they came from (the inbox, or an HTTP upload)
    1: ["ALTER TABLE inputs ADD COLUMN origin TEXT NOT NULL DEFAULT 'inbox'"],
    # 3: several workers and hosts share one ledger. Running jobs are leased
    # (the database's clock) and fenced by a claim counter; each daemon is a
    # node that reports itself (status shows every host and worker), registers
    # inputs (inputs.node: the host that is to hash it), and alone can read its uploads. A
    # shared share's device number differs per host: it is stored as 0 there.
    2: [
        "ALTER TABLE jobs ADD COLUMN claim INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION",
        "ALTER TABLE jobs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN pinned TEXT",
        "ALTER TABLE inputs ADD COLUMN node TEXT",
        """CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,
    settling INTEGER NOT NULL DEFAULT 0,
    workers TEXT NOT NULL DEFAULT '[]')""",
    ],
    # 4: a failed job says whose fault it was: 'input' (the file cannot be separated:
    # corrupt, too long, not audio; the same bytes fail again) or 'stemd' (it gave up
    # after its attempts). /predict answers the first 422, the second 500.
    3: ["ALTER TABLE jobs ADD COLUMN fault TEXT"],
    # 5: an input may ask to be called back when its job ends (`callback_url`, from
    # the jobs API, /predict or a rule). An end of the job is named by its
    # finished_at: `callback_end` is the last end posted (or given up on), and
    # `callback_claim` the node posting `callback_claim_end` now, so each end is
    # posted once per input, by one host, and again by another if that one is gone.
    4: [
        "ALTER TABLE inputs ADD COLUMN callback_url TEXT",
        "ALTER TABLE inputs ADD COLUMN callback_end DOUBLE PRECISION",
        "ALTER TABLE inputs ADD COLUMN callback_claim TEXT",
        "ALTER TABLE inputs ADD COLUMN callback_claim_end DOUBLE PRECISION",
        "CREATE INDEX inputs_with_callback ON inputs (job_id) WHERE callback_url IS NOT NULL",
    ],
    # 6: choices per job (stemd.choices). A job keeps the parameters its profile
    # key fingerprints (JSON), so any worker of the same separation (the model's
    # part of them, `separation`) renders it as its key says; an upload keeps the
    # choices it was sent with (JSON), so new output defaults key it anew.
    5: [
        "ALTER TABLE jobs ADD COLUMN params TEXT",
        "ALTER TABLE jobs ADD COLUMN separation TEXT",
        "ALTER TABLE inputs ADD COLUMN choices TEXT",
    ],
}
