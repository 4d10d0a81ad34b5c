-- Ordered delivery (issue 21): a call's sequence within its key
-- (dispatch.Call.OrderKey; NULL for a call in none), and whether it runs
-- outside its sequence (re-driven, or attached: dispatch.Call.OutOfOrder).
-- Both are NULL in an unordered call's row, which costs it two header bytes.
ALTER TABLE calls ADD COLUMN order_key TEXT;
ALTER TABLE calls ADD COLUMN out_of_order INTEGER;

-- The calls of a sequence that are not final, in id order: its head is the
-- first. Partial: a call in no sequence (order_key NULL), and a final one,
-- has no entry, so that unordered work pays nothing for it.
CREATE INDEX calls_order ON calls (key, order_key, id) WHERE order_key IS NOT NULL AND state IN (0, 1, 2);
