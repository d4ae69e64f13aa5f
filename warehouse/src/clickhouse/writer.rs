//! Writing enriched events into ClickHouse so that a replay never counts anything twice.
//!
//! The rollups are materialized views, which count every row inserted: a copy of an event
//! inserted twice would be counted twice there, even though `events` itself collapses it
//! (ReplacingMergeTree, read with FINAL). So the sink makes sure it never inserts a log
//! position twice:
//!
//! - After a batch's events, it records the batch in `sink_batches` (log partition, first and
//!   last offset). At open, everything up to the highest recorded offset is *stored*; a replay
//!   of the log (the same sink after a restart, or `vigil replay` writing again from offset 0)
//!   skips those positions.
//! - A crash between the events and the record leaves rows past the record. At open, the sink
//!   reads the offsets present past it (at most one batch) and skips those too, so the batch
//!   is completed, not repeated. This holds row by row: an insert that spans several days is
//!   written as one part per day and may have been cut between them.
//!
//! Log positions are `(log_partition, log_offset)`: the embedded log is partition 0; on Kafka,
//! the partition and offset of the record in `vigil.enriched`.

use std::collections::HashSet;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use vigil_schemas::DeliveryEvent;

use super::{ClickHouseConfig, ClickHouseError};

/// One row of `events`, in the column order of `schemas/clickhouse/0001_events.sql` (RowBinary
/// is positional; names are listed in the INSERT). Absent text is `''`.
#[derive(Debug, clickhouse::Row, Serialize)]
struct EventRow<'a> {
    log_partition: u32,
    log_offset: u64,
    event_id: &'a str,
    schema_version: u16,
    source: &'a str,
    source_node: &'a str,
    source_type: &'a str,
    occurred_ms: u64,
    ingested_ms: u64,
    kind: &'a str,
    message_id: &'a str,
    queue_id: &'a str,
    sender: &'a str,
    sender_domain: &'a str,
    recipient: &'a str,
    recipient_domain: &'a str,
    tenant: &'a str,
    campaign: &'a str,
    size_bytes: Option<u64>,
    attempt: Option<u32>,
    egress_pool: &'a str,
    egress_source: &'a str,
    sending_ip: &'a str,
    mx_host: &'a str,
    mx_ip: &'a str,
    site: &'a str,
    provider: &'a str,
    smtp_code: Option<u16>,
    enhanced_status: &'a str,
    response_text: &'a str,
    smtp_command: &'a str,
    internal: u8,
    bounce_class: &'a str,
    provider_class: &'a str,
    classifier_rule: &'a str,
    report_recipient: &'a str,
    feedback_loop: &'a str,
    original_sent_ms: Option<u64>,
    attribution: &'a str,
    message_count: Option<u64>,
    dmarc_disposition: &'a str,
    dmarc_dkim: &'a str,
    dmarc_spf: &'a str,
    report_id: &'a str,
    operator: String,
}

use super::epoch_millis as millis;

impl<'a> EventRow<'a> {
    fn new(log_partition: u32, log_offset: u64, e: &'a DeliveryEvent) -> Self {
        let text = |value: &'a Option<String>| value.as_deref().unwrap_or("");
        Self {
            log_partition,
            log_offset,
            event_id: &e.event_id,
            schema_version: e.schema_version,
            source: e.source.as_str(),
            source_node: text(&e.source_node),
            source_type: text(&e.source_type),
            occurred_ms: millis(e.occurred_at),
            ingested_ms: millis(e.ingested_at),
            kind: e.kind.as_str(),
            message_id: text(&e.message_id),
            queue_id: text(&e.queue_id),
            sender: text(&e.sender),
            sender_domain: text(&e.sender_domain),
            recipient: text(&e.recipient),
            recipient_domain: text(&e.recipient_domain),
            tenant: text(&e.tenant),
            campaign: text(&e.campaign),
            size_bytes: e.size_bytes,
            attempt: e.attempt,
            egress_pool: text(&e.egress_pool),
            egress_source: text(&e.egress_source),
            sending_ip: text(&e.sending_ip),
            mx_host: text(&e.mx_host),
            mx_ip: text(&e.mx_ip),
            site: text(&e.site),
            provider: text(&e.provider),
            smtp_code: e.smtp_code,
            enhanced_status: text(&e.enhanced_status),
            response_text: text(&e.response_text),
            smtp_command: text(&e.smtp_command),
            internal: u8::from(e.internal),
            bounce_class: e.bounce_class.as_ref().map_or("", |c| c.as_str()),
            provider_class: text(&e.provider_class),
            classifier_rule: text(&e.classifier_rule),
            report_recipient: text(&e.report_recipient),
            feedback_loop: text(&e.feedback_loop),
            original_sent_ms: e.original_sent_at.map(millis),
            attribution: e.attribution.map_or("", |a| a.as_str()),
            message_count: e.message_count,
            dmarc_disposition: text(&e.dmarc_disposition),
            dmarc_dkim: text(&e.dmarc_dkim),
            dmarc_spf: text(&e.dmarc_spf),
            report_id: text(&e.report_id),
            operator: e.operator.as_ref().map(crate::schema::operator_json).unwrap_or_default(),
        }
    }
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct BatchRow {
    log_partition: u32,
    first_offset: u64,
    last_offset: u64,
    events: u64,
    stored_at: u32,
}

/// What [`ClickHouseWriter::write_batch`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Events inserted now.
    pub inserted: usize,
    /// Events skipped: their log positions were already stored.
    pub skipped: usize,
}

/// Inserts enriched events of one log partition into ClickHouse, each log position once.
pub struct ClickHouseWriter {
    client: Client,
    url: String,
    partition: u32,
    /// Every offset below this is stored.
    stored_until: u64,
    /// Offsets at or past `stored_until` already present (a batch cut short by a crash).
    present: HashSet<u64>,
}

impl std::fmt::Debug for ClickHouseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseWriter")
            .field("url", &self.url)
            .field("partition", &self.partition)
            .field("stored_until", &self.stored_until)
            .finish_non_exhaustive()
    }
}

impl ClickHouseWriter {
    /// Opens the sink for `log_partition`: reads how far it has stored (see the module
    /// documentation). The schema must be migrated.
    ///
    /// # Errors
    /// When ClickHouse cannot be reached or the schema is missing.
    pub async fn open(config: &ClickHouseConfig, log_partition: u32) -> Result<Self, ClickHouseError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Last {
            batches: u64,
            last: u64,
        }
        #[derive(clickhouse::Row, Deserialize)]
        struct Offset {
            log_offset: u64,
        }
        let client = config.client()?;
        let last = client
            .query("SELECT count() AS batches, max(last_offset) AS last FROM sink_batches WHERE log_partition = ?")
            .bind(log_partition)
            .fetch_one::<Last>()
            .await
            .map_err(ClickHouseError::at(&config.url))?;
        let stored_until = if last.batches == 0 { 0 } else { last.last + 1 };
        let present = client
            .query("SELECT log_offset FROM events WHERE log_partition = ? AND log_offset >= ?")
            .bind(log_partition)
            .bind(stored_until)
            .fetch_all::<Offset>()
            .await
            .map_err(ClickHouseError::at(&config.url))?
            .into_iter()
            .map(|o| o.log_offset)
            .collect();
        Ok(Self { client, url: config.url.clone(), partition: log_partition, stored_until, present })
    }

    /// The event ids of the last `count` stored positions of the partition, oldest first: what
    /// a sink that drops copies by event id must remember when it takes the partition over.
    /// (Reads `log_partition` and `log_offset` of the whole table: a partition's takeover is
    /// rare.)
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached.
    pub async fn recent_event_ids(&self, count: u64) -> Result<Vec<String>, ClickHouseError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Id {
            event_id: String,
        }
        let mut ids: Vec<String> = self
            .client
            .query(
                "SELECT event_id FROM events WHERE log_partition = ? AND log_offset >= ? AND log_offset < ? \
                 ORDER BY log_offset DESC LIMIT ?",
            )
            .bind(self.partition)
            .bind(self.stored_until.saturating_sub(count))
            .bind(self.stored_until)
            .bind(count)
            .fetch_all::<Id>()
            .await
            .map_err(ClickHouseError::at(&self.url))?
            .into_iter()
            .map(|id| id.event_id)
            .collect();
        ids.reverse();
        Ok(ids)
    }

    /// The first log offset not known to be stored.
    #[must_use]
    pub fn stored_until(&self) -> u64 {
        self.stored_until
    }

    /// Inserts the events of `batch` (`(log offset, event)`, offsets ascending) whose positions
    /// are not stored yet, then records the batch. Idempotent: writing the same batch again, or
    /// any earlier part of the log, inserts nothing.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached; nothing is recorded then, and writing the
    /// batch again completes it.
    pub async fn write_batch(&mut self, batch: &[(u64, &DeliveryEvent)]) -> Result<Written, ClickHouseError> {
        debug_assert!(batch.windows(2).all(|w| w[0].0 < w[1].0), "a batch is in log order");
        // Offsets ascend: what is not stored yet is a suffix of the batch.
        let unstored = &batch[batch.partition_point(|(offset, _)| *offset < self.stored_until)..];
        let (Some(&(first, _)), Some(&(last, _))) = (unstored.first(), unstored.last()) else {
            return Ok(Written { inserted: 0, skipped: batch.len() });
        };
        let fresh: Vec<(u64, &DeliveryEvent)> =
            unstored.iter().copied().filter(|(offset, _)| !self.present.contains(offset)).collect();
        let skipped = batch.len() - fresh.len();
        let started = std::time::Instant::now();
        if !fresh.is_empty() {
            self.insert_events(&fresh).await?;
        }
        self.record(first, last, fresh.len()).await?;
        crate::metrics::insert_seconds().observe(started.elapsed().as_secs_f64());
        tracing::debug!(partition = self.partition, first, last, inserted = fresh.len(), "batch stored in ClickHouse");
        self.stored_until = last + 1;
        self.present.retain(|offset| *offset > last);
        Ok(Written { inserted: fresh.len(), skipped })
    }

    /// The first half of [`write_batch`](Self::write_batch): the rows, without the record that
    /// marks them stored. Public so tests can cut a batch short the way a crash would.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached.
    pub async fn insert_events(&self, events: &[(u64, &DeliveryEvent)]) -> Result<(), ClickHouseError> {
        let mut insert = self.client.insert::<EventRow<'_>>("events").await.map_err(ClickHouseError::at(&self.url))?;
        for (offset, event) in events {
            insert
                .write(&EventRow::new(self.partition, *offset, event))
                .await
                .map_err(ClickHouseError::at(&self.url))?;
        }
        insert.end().await.map_err(ClickHouseError::at(&self.url))
    }

    async fn record(&self, first: u64, last: u64, events: usize) -> Result<(), ClickHouseError> {
        let row = BatchRow {
            log_partition: self.partition,
            first_offset: first,
            last_offset: last,
            events: events as u64,
            stored_at: u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX),
        };
        let mut insert =
            self.client.insert::<BatchRow>("sink_batches").await.map_err(ClickHouseError::at(&self.url))?;
        insert.write(&row).await.map_err(ClickHouseError::at(&self.url))?;
        insert.end().await.map_err(ClickHouseError::at(&self.url))
    }
}
