-- Every decision of the rules that act and of operators (applied, shadow, lifted, expired), as
-- recorded in the decision outbox, for the Grafana decisions dashboard. A role with ClickHouse
-- inserts each one through a pusher with its own cursor (`clickhouse` in the outbox).
--
-- ReplacingMergeTree on (at, decision_id): a decision is inserted again only after a crash
-- between its insert and its cursor, or by a second `vigil process` instance folding the same
-- log; the copies share the key and collapse. Queries count `uniqExact(decision_id)` or read
-- FINAL. Times are epoch milliseconds as in `events` (18.16 has no DateTime64).
CREATE TABLE IF NOT EXISTS decisions
(
    at_ms UInt64,
    at DateTime('UTC') MATERIALIZED toDateTime(intDiv(at_ms, 1000), 'UTC'),
    decision_id String,
    status String,
    action String,
    rule String,
    egress_source String,
    provider String,
    domain String,
    tenant String,
    campaign String,
    site String,
    setting String,
    value String,
    expires_ms UInt64,
    reason String,
    action_key String,
    evidence_response String,
    evidence_count UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, decision_id);
