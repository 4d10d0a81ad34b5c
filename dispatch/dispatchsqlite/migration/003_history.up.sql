-- Listing events by type (GET /v1/events?type=): top-level calls by tag,
-- newest first within a tag. Partial: children (deliveries) are not in it,
-- and a call without a tag neither.
CREATE INDEX calls_roots_tag ON calls (tag, id) WHERE parent_id IS NULL AND tag IS NOT NULL;
