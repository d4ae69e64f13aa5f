-- Schema version 4 of the event: what an operator did (kind 'action_lifted', source
-- 'operator'), as the JSON of the event's `operator` field. Rows written before it read ''.
ALTER TABLE events ADD COLUMN operator String;
