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
SET input = CAST('{}' AS BLOB)
FROM calls AS p
WHERE p.id = c.parent_id
  AND c.function = 'publishEvent'
  AND length(c.input) > length(p.input) + 10
  AND substr(c.input, length(c.input) - length(p.input) - 9) = CAST(',"event":' || CAST(p.input AS TEXT) || '}' AS BLOB)
  AND json_valid(CAST(c.input AS TEXT))
  AND json_extract(CAST(c.input AS TEXT), '$.event_id') IS p.id
  AND json_extract(CAST(c.input AS TEXT), '$.destination_id') IS c.key;

-- 2. A child's id is its parent's id followed by ".<gather>.<index>", so the
--    primary key finds a call's children (and all its descendants) as a
--    range of ids: the index of children by parent cost every delivery an
--    index entry, on disk and in every commit.
DROP INDEX calls_children;
