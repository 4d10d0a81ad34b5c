-- Token buckets of throttled keys (issue 21, dispatch.Buckets), kept so that
-- a restart does not hand out a fresh burst: tokens held now, stamp the unix
-- nanoseconds of the last take (it never goes back), taken what that take
-- took (the upsert returns it). One row per throttled key.
CREATE TABLE buckets (
	key    TEXT PRIMARY KEY,
	tokens REAL NOT NULL,
	stamp  INTEGER NOT NULL,
	taken  INTEGER NOT NULL
) WITHOUT ROWID;
