-- Token buckets of throttled keys (issue 21, dispatch.Buckets), shared by
-- every replica: tokens held now, stamp the unix nanoseconds of the last
-- take (it never goes back), taken what that take took (the upsert returns
-- it, as RETURNING sees only the new row). One row per throttled key.
CREATE TABLE buckets (
	key    text PRIMARY KEY,
	tokens double precision NOT NULL,
	stamp  bigint NOT NULL,
	taken  integer NOT NULL
);
