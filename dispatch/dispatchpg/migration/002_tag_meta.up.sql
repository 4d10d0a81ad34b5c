-- An application's label of a call (fanout: the type of an event), for its
-- listings, and its small record that travels with a call and its children
-- (fanout: the trace context of the request that brought an event).
ALTER TABLE calls ADD COLUMN tag text COLLATE "C", ADD COLUMN meta bytea;
