//! The Arrow schema of an enriched event in the warehouse, and the conversion to it.
//!
//! Every field of [`DeliveryEvent`] except `raw` (which stays in the log) is a column, plus
//! `log_offset`, the event's offset in the log of record. Times are UTC milliseconds.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use vigil_schemas::DeliveryEvent;

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("log_offset", DataType::UInt64, false),
        Field::new("schema_version", DataType::UInt16, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        text("source_node"),
        text("source_type"),
        Field::new("occurred_at", timestamp(), false),
        Field::new("ingested_at", timestamp(), false),
        Field::new("kind", DataType::Utf8, false),
        text("message_id"),
        text("queue_id"),
        text("sender"),
        text("sender_domain"),
        text("recipient"),
        text("recipient_domain"),
        text("tenant"),
        text("campaign"),
        Field::new("size_bytes", DataType::UInt64, true),
        Field::new("attempt", DataType::UInt32, true),
        text("egress_pool"),
        text("egress_source"),
        text("sending_ip"),
        text("mx_host"),
        text("mx_ip"),
        text("site"),
        text("provider"),
        Field::new("smtp_code", DataType::UInt16, true),
        text("enhanced_status"),
        text("response_text"),
        text("smtp_command"),
        Field::new("internal", DataType::Boolean, false),
        text("bounce_class"),
        text("provider_class"),
        text("classifier_rule"),
        // schema version 2; files written before it read these as null
        text("report_recipient"),
        text("feedback_loop"),
        Field::new("original_sent_at", timestamp(), true),
        text("attribution"),
        // schema version 3 (DMARC rows); files written before it read these as null
        Field::new("message_count", DataType::UInt64, true),
        text("dmarc_disposition"),
        text("dmarc_dkim"),
        text("dmarc_spf"),
        text("report_id"),
        // schema version 4 (operator actions, as JSON); files written before it read null
        text("operator"),
    ]))
});

/// An operator action as the warehouse keeps it: its JSON (a rare, small record; one text
/// column rather than a column per field).
#[must_use]
pub fn operator_json(action: &vigil_schemas::OperatorAction) -> String {
    serde_json::to_string(action).unwrap_or_default()
}

/// The warehouse schema.
#[must_use]
pub fn event_schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// Converts `(log offset, event)` pairs into one record batch of [`event_schema`].
///
/// # Errors
/// Only on a schema mismatch, which would be a bug.
pub fn to_record_batch(events: &[(u64, &DeliveryEvent)]) -> Result<RecordBatch, ArrowError> {
    fn text<'a>(events: &'a [(u64, &DeliveryEvent)], f: impl Fn(&'a DeliveryEvent) -> Option<&'a str>) -> ArrayRef {
        Arc::new(events.iter().map(|(_, e)| f(e)).collect::<StringArray>())
    }
    let millis = |f: fn(&DeliveryEvent) -> i64| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter_values(events.iter().map(|(_, e)| f(e))).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(events.iter().map(|(o, _)| *o))),
        Arc::new(UInt16Array::from_iter_values(events.iter().map(|(_, e)| e.schema_version))),
        text(events, |e| Some(&e.event_id)),
        text(events, |e| Some(e.source.as_str())),
        text(events, |e| e.source_node.as_deref()),
        text(events, |e| e.source_type.as_deref()),
        millis(|e| e.occurred_at.timestamp_millis()),
        millis(|e| e.ingested_at.timestamp_millis()),
        text(events, |e| Some(e.kind.as_str())),
        text(events, |e| e.message_id.as_deref()),
        text(events, |e| e.queue_id.as_deref()),
        text(events, |e| e.sender.as_deref()),
        text(events, |e| e.sender_domain.as_deref()),
        text(events, |e| e.recipient.as_deref()),
        text(events, |e| e.recipient_domain.as_deref()),
        text(events, |e| e.tenant.as_deref()),
        text(events, |e| e.campaign.as_deref()),
        Arc::new(events.iter().map(|(_, e)| e.size_bytes).collect::<UInt64Array>()),
        Arc::new(events.iter().map(|(_, e)| e.attempt).collect::<UInt32Array>()),
        text(events, |e| e.egress_pool.as_deref()),
        text(events, |e| e.egress_source.as_deref()),
        text(events, |e| e.sending_ip.as_deref()),
        text(events, |e| e.mx_host.as_deref()),
        text(events, |e| e.mx_ip.as_deref()),
        text(events, |e| e.site.as_deref()),
        text(events, |e| e.provider.as_deref()),
        Arc::new(events.iter().map(|(_, e)| e.smtp_code).collect::<UInt16Array>()),
        text(events, |e| e.enhanced_status.as_deref()),
        text(events, |e| e.response_text.as_deref()),
        text(events, |e| e.smtp_command.as_deref()),
        Arc::new(events.iter().map(|(_, e)| Some(e.internal)).collect::<BooleanArray>()),
        text(events, |e| e.bounce_class.as_ref().map(|c| c.as_str())),
        text(events, |e| e.provider_class.as_deref()),
        text(events, |e| e.classifier_rule.as_deref()),
        text(events, |e| e.report_recipient.as_deref()),
        text(events, |e| e.feedback_loop.as_deref()),
        Arc::new(
            events
                .iter()
                .map(|(_, e)| e.original_sent_at.map(|at| at.timestamp_millis()))
                .collect::<TimestampMillisecondArray>()
                .with_timezone("UTC"),
        ),
        text(events, |e| e.attribution.map(|a| a.as_str())),
        Arc::new(events.iter().map(|(_, e)| e.message_count).collect::<UInt64Array>()),
        text(events, |e| e.dmarc_disposition.as_deref()),
        text(events, |e| e.dmarc_dkim.as_deref()),
        text(events, |e| e.dmarc_spf.as_deref()),
        text(events, |e| e.report_id.as_deref()),
        Arc::new(events.iter().map(|(_, e)| e.operator.as_ref().map(operator_json)).collect::<StringArray>()),
    ];
    RecordBatch::try_new(event_schema(), columns)
}

/// The text columns the hourly rollup keeps, in column order after `hour`.
pub const HOURLY_TEXT: [&str; 5] = ["egress_source", "egress_pool", "provider", "kind", "bounce_class"];

static HOURLY: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![Field::new("hour", timestamp(), false)];
    fields.extend(HOURLY_TEXT.iter().map(|name| Field::new(*name, DataType::Utf8, *name != "kind")));
    fields.push(Field::new("internal", DataType::Boolean, false));
    fields.push(Field::new("events", DataType::UInt64, false));
    Arc::new(Schema::new(fields))
});

/// The schema of the hourly rollup (`hourly/`).
#[must_use]
pub fn hourly_schema() -> SchemaRef {
    Arc::clone(&HOURLY)
}

/// Counts `events` per hour of `occurred_at` and the rollup's columns: one record batch of
/// [`hourly_schema`], rows in key order.
///
/// # Errors
/// Only on a schema mismatch, which would be a bug.
pub fn to_hourly_batch(events: &[(u64, &DeliveryEvent)]) -> Result<RecordBatch, ArrowError> {
    type Key<'a> = (i64, [Option<&'a str>; 5], bool);
    let mut counts: std::collections::BTreeMap<Key<'_>, u64> = std::collections::BTreeMap::new();
    for (_, e) in events {
        let hour = e.occurred_at.timestamp_millis().div_euclid(3_600_000) * 3_600_000;
        let text = [
            e.egress_source.as_deref(),
            e.egress_pool.as_deref(),
            e.provider.as_deref(),
            Some(e.kind.as_str()),
            e.bounce_class.as_ref().map(|c| c.as_str()),
        ];
        *counts.entry((hour, text, e.internal)).or_default() += 1;
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(
        TimestampMillisecondArray::from_iter_values(counts.keys().map(|(hour, _, _)| *hour)).with_timezone("UTC"),
    )];
    for k in 0..HOURLY_TEXT.len() {
        columns.push(Arc::new(counts.keys().map(|(_, text, _)| text[k]).collect::<StringArray>()));
    }
    columns.push(Arc::new(counts.keys().map(|(_, _, internal)| Some(*internal)).collect::<BooleanArray>()));
    columns.push(Arc::new(UInt64Array::from_iter_values(counts.values().copied())));
    RecordBatch::try_new(hourly_schema(), columns)
}
