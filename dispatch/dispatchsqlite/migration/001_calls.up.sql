-- Calls of durable functions: one row per call, whatever its state.
-- Times are Unix nanoseconds (UTC).
CREATE TABLE calls (
    id            TEXT    PRIMARY KEY,
    function      TEXT    NOT NULL,
    key           TEXT    NOT NULL DEFAULT '',
    input         BLOB    NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 running, 2 waiting, 3 done, 4 failed
    attempt       INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    run_after     INTEGER NOT NULL,
    budget_start  INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_expires INTEGER,
    parent_id     TEXT,
    gather        INTEGER NOT NULL DEFAULT 0,
    idx           INTEGER NOT NULL DEFAULT 0,
    gathers       INTEGER NOT NULL DEFAULT 0,
    waiting       INTEGER NOT NULL DEFAULT 0,
    output        BLOB,
    error         TEXT,
    status        INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Claiming reads runnable calls of one key, oldest first; partial, so that
-- the index holds only the backlog, not the history. Listing the keys that
-- have a backlog skips through it (one probe per key).
CREATE INDEX calls_runnable ON calls (key, run_after) WHERE state = 0;

-- Expired leases, and the leases of one owner at shutdown.
CREATE INDEX calls_leased ON calls (lease_expires) WHERE state = 1;

-- A parent's children, in gather and index order.
CREATE INDEX calls_children ON calls (parent_id, gather, idx) WHERE parent_id IS NOT NULL;

-- Dead letters by key (a destination), in id (time) order.
CREATE INDEX calls_failed ON calls (key, id) WHERE state = 4;

-- No index serves retention: it walks the table in rowid (insertion) order
-- from where its last pass stopped, which costs ingest nothing.

-- The record of every failed attempt (a success is recorded in its call).
CREATE TABLE attempts (
    call_id     TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    error       TEXT    NOT NULL,
    detail      BLOB,
    PRIMARY KEY (call_id, attempt)
) WITHOUT ROWID;

-- Deduplication keys of top-level calls, deleted with their call.
CREATE TABLE dedup (
    key        TEXT    PRIMARY KEY,
    call_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedup_call ON dedup (call_id);

-- Small JSON documents of the application (fanout's destinations).
CREATE TABLE docs (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
