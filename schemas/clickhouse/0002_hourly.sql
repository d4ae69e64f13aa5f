-- Per hour x egress source x pool x provider x kind x bounce class x internal: what 30-day
-- views and reputation (which leaves out the MTA's own `internal` events) read. The same grain
-- and keys as the embedded hourly rollup (warehouse/hourly/). Portable as 0001 is.
CREATE TABLE IF NOT EXISTS events_per_hour
(
    hour DateTime('UTC'),
    egress_source String,
    egress_pool String,
    provider String,
    kind String,
    bounce_class String,
    internal UInt8,
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, egress_source, egress_pool, provider, kind, bounce_class, internal);

-- The events stored before this migration, counted once: only while the rollup is empty, so a
-- migration cut short and applied again does not count them twice. Vigil applies migrations
-- at start, before its sink runs, so nothing is inserted between this and the view below.
INSERT INTO events_per_hour
SELECT
    toStartOfHour(occurred_at) AS hour,
    egress_source,
    egress_pool,
    provider,
    kind,
    bounce_class,
    internal,
    count() AS events
FROM events
WHERE (SELECT count() FROM events_per_hour) = 0
GROUP BY hour, egress_source, egress_pool, provider, kind, bounce_class, internal;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_hour_mv TO events_per_hour AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    egress_source,
    egress_pool,
    provider,
    kind,
    bounce_class,
    internal,
    count() AS events
FROM events
GROUP BY hour, egress_source, egress_pool, provider, kind, bounce_class, internal;
