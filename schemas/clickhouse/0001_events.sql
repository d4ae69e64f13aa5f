-- Enriched delivery events, one row per event (DESIGN §4 without `raw`, which stays in the log).
--
-- Portable to ClickHouse 18.16 (Debian, CI) and current releases: no DateTime64 (times are
-- epoch milliseconds, with a UTC DateTime derived for partitioning and grouping), no
-- LowCardinality, no Nullable in keys (absent text is ''), ENGINE syntax with PARTITION BY /
-- ORDER BY (18.x and later).
--
-- ReplacingMergeTree: rows with the same sorting key collapse at merge time, and every key
-- column is a function of the event, so two copies of one event (inserted by something other
-- than Vigil's sink) share a key and FINAL shows one. A materialized view counts every row
-- inserted, copies included, so the rollups stay exact only if the sink never inserts an event
-- twice: it skips log positions `sink_batches` says are stored. The table then holds each
-- event once, and counts read it as the rollups do, without FINAL.
CREATE TABLE IF NOT EXISTS events
(
    log_partition UInt32,
    log_offset UInt64,
    event_id String,
    schema_version UInt16,
    source String,
    source_node String,
    source_type String,
    occurred_ms UInt64,
    occurred_at DateTime('UTC') MATERIALIZED toDateTime(intDiv(occurred_ms, 1000), 'UTC'),
    ingested_ms UInt64,
    kind String,
    message_id String,
    queue_id String,
    sender String,
    sender_domain String,
    recipient String,
    recipient_domain String,
    tenant String,
    campaign String,
    size_bytes Nullable(UInt64),
    attempt Nullable(UInt32),
    egress_pool String,
    egress_source String,
    sending_ip String,
    mx_host String,
    mx_ip String,
    site String,
    provider String,
    smtp_code Nullable(UInt16),
    enhanced_status String,
    response_text String,
    smtp_command String,
    internal UInt8,
    bounce_class String,
    provider_class String,
    classifier_rule String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (egress_source, provider, occurred_at, event_id);

-- Per minute x egress source x provider x kind x bounce class; what dashboards read.
CREATE TABLE IF NOT EXISTS events_per_minute
(
    minute DateTime('UTC'),
    egress_source String,
    provider String,
    kind String,
    bounce_class String,
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, egress_source, provider, kind, bounce_class);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_minute_mv TO events_per_minute AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    egress_source,
    provider,
    kind,
    bounce_class,
    count() AS events
FROM events
GROUP BY minute, egress_source, provider, kind, bounce_class;

-- Per day, with the sending side's dimensions too, for the 30-day views.
CREATE TABLE IF NOT EXISTS events_per_day
(
    day Date,
    egress_source String,
    provider String,
    kind String,
    bounce_class String,
    tenant String,
    campaign String,
    sender_domain String,
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, egress_source, provider, kind, bounce_class, tenant, campaign, sender_domain);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_day_mv TO events_per_day AS
SELECT
    toDate(occurred_at) AS day,
    egress_source,
    provider,
    kind,
    bounce_class,
    tenant,
    campaign,
    sender_domain,
    count() AS events
FROM events
GROUP BY day, egress_source, provider, kind, bounce_class, tenant, campaign, sender_domain;

-- What the sink has stored: one row per insert, written after its events. A replay skips
-- every log position at or below the highest stored one, so the rollups count each event once.
CREATE TABLE IF NOT EXISTS sink_batches
(
    log_partition UInt32,
    first_offset UInt64,
    last_offset UInt64,
    events UInt64,
    stored_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (log_partition, first_offset);
