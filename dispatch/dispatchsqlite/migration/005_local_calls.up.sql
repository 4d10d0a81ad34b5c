-- Local calls (issue 24): a parent's plan of the children that run in its
-- owner's process and get a row only once they end (dispatch.Call.Local).
-- While it has a plan, a waiting parent is leased to that process.
ALTER TABLE calls ADD COLUMN plan BLOB;

-- Expired leases and the leases of one owner: of running calls, and of
-- waiting parents that hold a plan.
DROP INDEX calls_leased;
CREATE INDEX calls_leased ON calls (lease_expires) WHERE lease_owner IS NOT NULL;
