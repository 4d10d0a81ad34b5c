-- Local calls (issue 24): a parent's plan of the children that run in its
-- owner's process and get a row only once they end (dispatch.Call.Local),
-- encoded by storeutil.EncodePlan; plan_total is how many children the
-- plan's gather has in all (planned or stored), the plan being complete
-- once the gather has that many rows. It is also in the plan, but a finish
-- compares it in SQL, which does not decode plans. While it has a plan, a
-- waiting parent is leased to that process (lease_owner, lease_expires).
ALTER TABLE calls ADD COLUMN plan bytea, ADD COLUMN plan_total integer;

-- Expired leases, and the leases of one owner at shutdown: of running
-- calls, and of waiting parents that hold a plan (every row with a lease is
-- one or the other). Queries name lease_owner IS NOT NULL so that the
-- planner can use it.
DROP INDEX calls_leased;
CREATE INDEX calls_leased ON calls (lease_expires) WHERE lease_owner IS NOT NULL;
