-- Schema version 3 of the event: the rows of DMARC aggregate reports (kind 'dmarc_report').
-- Rows written before it read NULL / ''.
--
-- One column per statement, skipped by `vigil migrate` when the table already has it (see
-- 0003_complaints.sql).
ALTER TABLE events ADD COLUMN message_count Nullable(UInt64);
ALTER TABLE events ADD COLUMN dmarc_disposition String;
ALTER TABLE events ADD COLUMN dmarc_dkim String;
ALTER TABLE events ADD COLUMN dmarc_spf String;
ALTER TABLE events ADD COLUMN report_id String;
