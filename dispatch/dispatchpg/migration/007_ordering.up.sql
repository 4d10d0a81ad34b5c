-- Ordered delivery (issue 21): a call's sequence within its key
-- (dispatch.Call.OrderKey; NULL for a call in none), and whether it runs
-- outside its sequence (re-driven, or attached: dispatch.Call.OutOfOrder).
-- Both NULL in an unordered call's row. Adding a column without a default
-- rewrites no row.
ALTER TABLE calls ADD COLUMN order_key text, ADD COLUMN out_of_order boolean;

-- The calls of a sequence that are not final, in id order: its head is the
-- first. Partial: unordered and final calls have no entry, so that
-- unordered work pays nothing for it.
CREATE INDEX calls_order ON calls (key, order_key, id) WHERE order_key IS NOT NULL AND state IN (0, 1, 2);
