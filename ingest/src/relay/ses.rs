//! Amazon SES: identity notifications (`notificationType`) and configuration-set event
//! publishing (`eventType`), inside an SNS envelope (the `Message` string), an EventBridge
//! envelope (`detail`), or bare (Firehose, a saved record).
//!
//! Bounces, complaints, deliveries and delays name their recipients; sends, rejects, opens,
//! clicks and subscription changes only have the message's `mail.destination`, which is then
//! the only recipient list there is.

use chrono::{DateTime, Utc};
use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, Normalised, RelayError, event, set_reply, set_sender, set_tags, text, time_of};

/// SES's own message tag for the IP that sent the message (event publishing only).
const OUTGOING_IP_TAG: &str = "ses:outgoing-ip";
/// The configuration set the message was sent with: the nearest thing SES has to a pool.
const CONFIGURATION_SET_TAG: &str = "ses:configuration-set";

pub(super) fn normalise(ctx: &Context<'_>, value: &Value, out: &mut Normalised) -> Result<(), RelayError> {
    let shape = |reason: &str| RelayError::Shape { provider: "ses", reason: reason.to_owned() };
    // SNS: the SES record is a JSON string in `Message`.
    if let Some(kind) = text(value, "Type") {
        if kind != "Notification" {
            // Subscription and unsubscribe confirmations are handled by the receiver.
            out.ignored += 1;
            return Ok(());
        }
        let message = text(value, "Message").ok_or_else(|| shape("an SNS notification without `Message`"))?;
        let Ok(inner) = serde_json::from_str::<Value>(message) else {
            // "Successfully validated SNS topic for Amazon SES event publishing." and other
            // plain-text notifications.
            out.ignored += 1;
            return Ok(());
        };
        // SES's own identity of the event, so one event reaching Vigil through two topics (or
        // EventBridge as well) is stored once; SNS's message id (stable across its retries)
        // when the record has none.
        let key = match own_key(&inner) {
            Some(key) => key,
            None => {
                text(value, "MessageId").ok_or_else(|| shape("an SNS notification without `MessageId`"))?.to_owned()
            }
        };
        return record(ctx, &inner, &key, value, out);
    }
    // EventBridge: the record is `detail`.
    if let (Some(detail), Some(id)) = (value.get("detail"), text(value, "id")) {
        let key = own_key(detail).unwrap_or_else(|| id.to_owned());
        return record(ctx, detail, &key, value, out);
    }
    let key = own_key(value).ok_or_else(|| shape("neither an SNS envelope nor an SES record with `mail.messageId`"))?;
    record(ctx, value, &key, value, out)
}

/// A bare record's identity: the message, the type and the sub-record's own id or time.
fn own_key(record: &Value) -> Option<String> {
    let message = text(record.get("mail")?, "messageId")?;
    let kind = text(record, "eventType").or_else(|| text(record, "notificationType")).unwrap_or("");
    let detail = ["bounce", "complaint"]
        .iter()
        .find_map(|k| record.get(*k).and_then(|v| text(v, "feedbackId")))
        .or_else(|| {
            ["delivery", "deliveryDelay", "open", "click", "subscription"]
                .iter()
                .find_map(|k| record.get(*k).and_then(|v| text(v, "timestamp")))
        })
        .unwrap_or("");
    Some(format!("{message}/{kind}/{detail}"))
}

fn record(ctx: &Context<'_>, record: &Value, key: &str, raw: &Value, out: &mut Normalised) -> Result<(), RelayError> {
    let shape = |reason: String| RelayError::Shape { provider: "ses", reason };
    let kind = text(record, "eventType")
        .or_else(|| text(record, "notificationType"))
        .ok_or_else(|| shape("no `eventType` or `notificationType`".into()))?;
    let mail = record.get("mail").ok_or_else(|| shape(format!("a {kind} record without `mail`")))?;
    let sent_at = time_of(mail, &["timestamp"]);
    let destination = || -> Vec<&str> {
        mail.get("destination")
            .and_then(Value::as_array)
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let build = |kind: EventKind, at: Option<DateTime<Utc>>, recipient: Option<&str>| {
        let mut e = event(ctx, key, kind, at.or(sent_at).unwrap_or(ctx.ingested_at), recipient, raw);
        e.source_type = text(record, "eventType").or_else(|| text(record, "notificationType")).map(str::to_owned);
        e.message_id = text(mail, "messageId").map(str::to_owned);
        set_sender(&mut e, text(mail, "source"));
        let tags = mail.get("tags").and_then(Value::as_object);
        set_tags(&mut e, ctx.tags, tags);
        e.sending_ip = tags.and_then(|t| t.get(OUTGOING_IP_TAG)).and_then(super::scalar);
        e.egress_source.clone_from(&e.sending_ip);
        e.egress_pool = tags.and_then(|t| t.get(CONFIGURATION_SET_TAG)).and_then(super::scalar);
        e
    };
    let per_recipient = |object: &Value, list: &str| -> Vec<Value> {
        object.get(list).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    match kind {
        "Bounce" => {
            let bounce = record.get("bounce").ok_or_else(|| shape("a Bounce without `bounce`".into()))?;
            let bounce_type = text(bounce, "bounceType").unwrap_or("Undetermined");
            let sub_type = text(bounce, "bounceSubType").unwrap_or("Undetermined");
            // SES never tried: the address is on a suppression list.
            let suppressed = matches!(sub_type, "Suppressed" | "OnAccountSuppressionList");
            let kind = if suppressed { EventKind::Dropped } else { EventKind::Bounced };
            let at = time_of(bounce, &["timestamp"]);
            for recipient in per_recipient(bounce, "bouncedRecipients") {
                let mut e = build(kind, at, text(&recipient, "emailAddress"));
                e.provider_class = Some(format!("{bounce_type}/{sub_type}"));
                if let Some(diagnostic) = text(&recipient, "diagnosticCode") {
                    set_reply(&mut e, diagnostic);
                }
                if let Some(status) = text(&recipient, "status") {
                    e.enhanced_status = Some(status.to_owned());
                }
                e.mx_ip = text(bounce, "remoteMtaIp").map(str::to_owned);
                out.events.push(e);
            }
        }
        "Complaint" => {
            let complaint = record.get("complaint").ok_or_else(|| shape("a Complaint without `complaint`".into()))?;
            let suppressed = text(complaint, "complaintSubType") == Some("OnAccountSuppressionList");
            let kind = if suppressed { EventKind::Dropped } else { EventKind::Complaint };
            let at = time_of(complaint, &["timestamp"]);
            let user_agent = text(complaint, "userAgent");
            for recipient in per_recipient(complaint, "complainedRecipients") {
                let mut e = build(kind, at, text(&recipient, "emailAddress"));
                e.provider_class = text(complaint, "complaintFeedbackType").map(str::to_owned);
                // SES tells which message was complained about: its stream is the event's own.
                e.attribution = Some(Attribution::Trace);
                e.original_sent_at = time_of(complaint, &["arrivalDate"]).or(sent_at);
                e.feedback_loop = crate::feedback_loop::recognise(user_agent, std::iter::empty()).map(str::to_owned);
                out.events.push(e);
            }
        }
        "Delivery" => {
            let delivery = record.get("delivery").ok_or_else(|| shape("a Delivery without `delivery`".into()))?;
            let at = time_of(delivery, &["timestamp"]);
            for recipient in per_recipient(delivery, "recipients") {
                let mut e = build(EventKind::Delivered, at, recipient.as_str());
                if let Some(response) = text(delivery, "smtpResponse") {
                    set_reply(&mut e, response);
                }
                e.mx_ip = text(delivery, "remoteMtaIp").map(str::to_owned);
                out.events.push(e);
            }
        }
        "DeliveryDelay" => {
            let delay =
                record.get("deliveryDelay").ok_or_else(|| shape("a DeliveryDelay without `deliveryDelay`".into()))?;
            let at = time_of(delay, &["timestamp"]);
            for recipient in per_recipient(delay, "delayedRecipients") {
                let mut e = build(EventKind::Deferred, at, text(&recipient, "emailAddress"));
                e.provider_class =
                    Some(format!("DeliveryDelay/{}", text(delay, "delayType").unwrap_or("Undetermined")));
                if let Some(diagnostic) = text(&recipient, "diagnosticCode") {
                    set_reply(&mut e, diagnostic);
                }
                if let Some(status) = text(&recipient, "status") {
                    e.enhanced_status = Some(status.to_owned());
                }
                out.events.push(e);
            }
        }
        "Send" | "Reject" | "Rendering Failure" | "Open" | "Click" | "Subscription" => {
            let (kind, object) = match kind {
                "Send" => (EventKind::Reception, "send"),
                "Reject" => (EventKind::Rejected, "reject"),
                "Rendering Failure" => (EventKind::Rejected, "failure"),
                "Open" => (EventKind::Open, "open"),
                "Click" => (EventKind::Click, "click"),
                _ => (EventKind::Unsubscribe, "subscription"),
            };
            let detail = record.get(object).unwrap_or(&Value::Null);
            if kind == EventKind::Unsubscribe && !unsubscribed(detail) {
                out.ignored += 1;
                return Ok(());
            }
            let at = time_of(detail, &["timestamp"]);
            for recipient in destination() {
                let mut e = build(kind, at, Some(recipient));
                e.response_text = text(detail, "reason").or_else(|| text(detail, "errorMessage")).map(str::to_owned);
                out.events.push(e);
            }
        }
        // Inbound mail, and types SES may add: nothing to count.
        "Received" | "AmazonSnsSubscriptionSucceeded" => out.ignored += 1,
        other => return Err(shape(format!("unknown SES event type `{other}`"))),
    }
    Ok(())
}

/// A subscription change that opts the recipient out of everything or of a topic.
fn unsubscribed(subscription: &Value) -> bool {
    let Some(new) = subscription.get("newTopicPreferences") else { return false };
    new.get("unsubscribeAll").and_then(Value::as_bool).unwrap_or(false)
        || new
            .get("topicSubscriptionStatus")
            .and_then(Value::as_array)
            .is_some_and(|topics| topics.iter().any(|t| text(t, "subscriptionStatus") == Some("OptOut")))
}
