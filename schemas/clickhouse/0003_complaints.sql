-- Schema version 2 of the event: what a complaint carries besides its recipient (the person
-- who complained). Rows written before it read '' / NULL.
--
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: each statement adds one column, and
-- `vigil migrate` skips an ADD COLUMN whose column the table already has, so the migration
-- can be applied twice like the others.
ALTER TABLE events ADD COLUMN report_recipient String;
ALTER TABLE events ADD COLUMN feedback_loop String;
ALTER TABLE events ADD COLUMN original_sent_ms Nullable(UInt64);
ALTER TABLE events ADD COLUMN attribution String;
