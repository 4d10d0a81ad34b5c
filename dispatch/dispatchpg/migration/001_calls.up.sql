-- Calls of durable functions: one row per call, whatever its state.
-- Times are Unix nanoseconds (UTC) in bigint: the runtime compares them
-- exactly, and timestamptz keeps only microseconds. Ids and keys compare
-- byte by byte (COLLATE "C"), as in SQLite, whatever the database's locale:
-- listings are ordered by id, and keys are walked in index order.
CREATE TABLE calls (
    id            text COLLATE "C" PRIMARY KEY,
    function      text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL DEFAULT '',
    input         bytea    NOT NULL,
    state         smallint NOT NULL DEFAULT 0, -- 0 pending, 1 running, 2 waiting, 3 done, 4 failed
    attempt       integer  NOT NULL DEFAULT 0,
    failures      integer  NOT NULL DEFAULT 0,
    run_after     bigint   NOT NULL,
    budget_start  bigint   NOT NULL,
    lease_owner   text,
    lease_expires bigint,
    parent_id     text COLLATE "C",
    gather        integer  NOT NULL DEFAULT 0,
    idx           integer  NOT NULL DEFAULT 0,
    gathers       integer  NOT NULL DEFAULT 0,
    waiting       integer  NOT NULL DEFAULT 0,
    output        bytea,
    error         text,
    status        smallint NOT NULL DEFAULT 0,
    created_at    bigint   NOT NULL,
    updated_at    bigint   NOT NULL,
    -- Insertion order, for retention (SQLite's rowid).
    seq           bigint   GENERATED ALWAYS AS IDENTITY
) WITH (fillfactor = 80);
-- Room on each page lets updates that change no indexed column (a parent
-- counting its children off, a lease renewal) stay on the page (HOT) and
-- skip the indexes.

-- Claiming reads runnable calls of one key, oldest first; partial, so that
-- the index holds only the backlog, not the history. Listing the keys that
-- have a backlog skips through it (a recursive CTE, one probe per key).
CREATE INDEX calls_runnable ON calls (key, run_after) WHERE state = 0;

-- Expired leases, and the leases of one owner at shutdown.
CREATE INDEX calls_leased ON calls (lease_expires) WHERE state = 1;

-- A parent's children, in gather and index order.
CREATE INDEX calls_children ON calls (parent_id, gather, idx) WHERE parent_id IS NOT NULL;

-- Dead letters by key (a destination), in id (time) order.
CREATE INDEX calls_failed ON calls (key, id) WHERE state = 4;

-- Retention walks top-level calls in insertion order from where its last
-- pass stopped, as the SQLite store walks rowids: one small index entry
-- per event, appended at the right end.
CREATE INDEX calls_roots ON calls (seq) WHERE parent_id IS NULL;

-- The record of every failed attempt (a success is recorded in its call).
CREATE TABLE attempts (
    call_id     text COLLATE "C" NOT NULL,
    attempt     integer  NOT NULL,
    started_at  bigint   NOT NULL,
    duration_ns bigint   NOT NULL,
    status      smallint NOT NULL,
    error       text     NOT NULL,
    detail      bytea,
    PRIMARY KEY (call_id, attempt)
);

-- Deduplication keys of top-level calls, deleted with their call.
CREATE TABLE dedup (
    key        text COLLATE "C" PRIMARY KEY,
    call_id    text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX dedup_call ON dedup (call_id);

-- Small JSON documents of the application (fanout's destinations).
CREATE TABLE docs (
    kind       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    data       bytea  NOT NULL,
    version    bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
