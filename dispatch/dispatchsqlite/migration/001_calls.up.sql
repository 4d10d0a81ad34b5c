-- Calls of durable functions: one row per call, whatever its state.
-- Times are Unix nanoseconds (UTC).
CREATE TABLE calls (
    id            TEXT    PRIMARY KEY,
    function      TEXT    NOT NULL,
    input         BLOB    NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 running, 2 waiting, 3 done, 4 failed
    attempt       INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    run_after     INTEGER NOT NULL,
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

-- Claiming reads runnable calls oldest first; partial, so that the index holds
-- only the backlog, not the history.
CREATE INDEX calls_runnable ON calls (run_after) WHERE state = 0;

-- Expired leases, and the leases of one owner at shutdown.
CREATE INDEX calls_leased ON calls (lease_expires) WHERE state = 1;

-- A parent's children, in gather and index order.
CREATE INDEX calls_children ON calls (parent_id, gather, idx) WHERE parent_id IS NOT NULL;

-- No index serves retention: it walks the table in rowid (insertion) order
-- from where its last pass stopped, which costs ingest nothing.
