-- Each payload stored once (issue 12).
--
-- 1. fanout's deliveries (publishEvent calls) carried a copy of their
--    event: {"event_id":"<parent id>","destination_id":"D","event":<the
--    parent's input, byte for byte>}. They now read the event from their
--    parent (dispatch.ParentInput), the id is the parent's and the
--    destination the call's key: the input becomes {}. A delivery whose
--    "event" is not exactly its parent's input, or whose destination is not
--    its key, keeps its input (publishEvent reads what a message carries).
UPDATE calls AS c
SET input = '\x7b7d'::bytea
FROM calls AS p
WHERE p.id = c.parent_id
  AND c.function = 'publishEvent'
  AND length(c.input) > length(p.input) + 10
  AND substring(c.input FROM length(c.input) - length(p.input) - 8) = convert_to(',"event":', 'UTF8') || p.input || '\x7d'::bytea
  AND (convert_from(c.input, 'UTF8')::jsonb ->> 'event_id') IS NOT DISTINCT FROM p.id
  AND (convert_from(c.input, 'UTF8')::jsonb ->> 'destination_id') IS NOT DISTINCT FROM c.key;

-- 2. A child's id is its parent's id followed by ".<gather>.<index>", so the
--    primary key (ids compare byte by byte, COLLATE "C") finds a call's
--    children, and all its descendants, as a range of ids: the index of
--    children by parent cost every delivery an index entry.
DROP INDEX calls_children;
