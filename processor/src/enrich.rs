//! Enrichment: the pure step that turns a normalised event into an enriched one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

use crate::classify::Classifier;
use crate::providers::ProviderMap;

fn relay_of(source: SourceKind) -> Option<crate::classify::relay::Relay> {
    use crate::classify::relay::Relay;
    Some(match source {
        SourceKind::Ses => Relay::Ses,
        SourceKind::Sendgrid => Relay::Sendgrid,
        SourceKind::Mailgun => Relay::Mailgun,
        SourceKind::Postmark => Relay::Postmark,
        SourceKind::Sparkpost => Relay::Sparkpost,
        SourceKind::Powermta => Relay::Powermta,
        SourceKind::Brevo => Relay::Brevo,
        SourceKind::Mailjet => Relay::Mailjet,
        SourceKind::Postal => Relay::Postal,
        SourceKind::Elasticemail => Relay::Elasticemail,
        _ => return None,
    })
}

/// Classifies and maps events. Cheap to clone; clones share the classifier, so
/// [`Enricher::replace_classifier`] on one is seen by all (hot reload).
#[derive(Debug, Clone)]
pub struct Enricher {
    classifier: Arc<ArcSwap<Classifier>>,
    providers: Arc<ProviderMap>,
}

impl Enricher {
    #[must_use]
    pub fn new(classifier: Arc<Classifier>, providers: Arc<ProviderMap>) -> Self {
        Self { classifier: Arc::new(ArcSwap::new(classifier)), providers }
    }

    /// Swaps in a newly built classifier; events enriched after this use it. The old one is
    /// dropped when the last in-flight classification finishes with it.
    pub fn replace_classifier(&self, classifier: Arc<Classifier>) {
        self.classifier.store(classifier);
    }

    /// Vigil's bundled rules and provider map.
    #[must_use]
    pub fn bundled() -> Self {
        Self::new(Arc::new(Classifier::bundled()), Arc::new(ProviderMap::bundled()))
    }

    /// Fills `provider`, and for failures `bounce_class` and `classifier_rule`.
    ///
    /// Responses our own MTA generated (`internal`) are not matched against the rule files:
    /// an administrative bounce's `551 5.7.1` or a suspended queue's `451 4.4.4` would
    /// otherwise read as an authentication failure or a routing error at the receiver.
    pub fn enrich(&self, event: &mut DeliveryEvent) {
        if matches!(event.source, SourceKind::Operator | SourceKind::Dns) {
            // A person's action names its target (the action's provider) itself; a block
            // list's verdict is about our IP or domain, not a recipient's provider.
            return;
        }
        event.provider = Some(self.providers.provider_of(event));
        if !event.kind.is_bounce_classifiable() {
            return;
        }
        // A relay's own taxonomy (SES bounce type, SparkPost class, ...) speaks in its own
        // labels; map them so the fallback is a Vigil class.
        let relay_class = relay_of(event.source)
            .zip(event.provider_class.as_deref())
            .and_then(|(relay, label)| crate::classify::relay::classify_relay(relay, label))
            .map(|c| c.class.to_string());
        let source_class = relay_class.as_deref().or(event.provider_class.as_deref());
        if event.internal {
            let class = match source_class {
                Some(label) if label != "Uncategorized" => BounceClass::from_label(label),
                _ if event.kind == EventKind::Expired => BounceClass::MessageExpired,
                _ => BounceClass::Uncategorized,
            };
            event.bounce_class = Some(class);
            event.classifier_rule = Some("internal".into());
            return;
        }
        if event.kind == EventKind::Complaint {
            // A feedback report is not an SMTP response: it is counted by kind, and its
            // feedback type stays in `provider_class`.
            return;
        }
        // Without a reply code (a connection failure, an MTA's own words) the text alone.
        let line = event.response_line().or_else(|| event.response_text.clone()).unwrap_or_default();
        // The line already carries the enhanced code.
        let found = self.classifier.load().classify(&line, None, source_class);
        event.bounce_class = Some(found.class);
        event.classifier_rule = Some(found.rule.to_string());
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use vigil_schemas::SourceKind;

    use super::*;
    use crate::ClassifierBuilder;

    #[test]
    fn a_replaced_classifier_applies_to_every_clone() {
        let enricher = Enricher::bundled();
        let clone = enricher.clone();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut event = DeliveryEvent::new("id".into(), SourceKind::Kumomta, EventKind::Deferred, at, at);
        event.smtp_code = Some(451);
        event.response_text = Some("greylisted, come back later".into());
        clone.enrich(&mut event);
        assert_ne!(event.bounce_class.as_ref().map(|c| c.as_str()), Some("Greylisted"));

        let mut rules = ClassifierBuilder::new();
        rules.add_toml("mine.toml", "[rules]\nGreylisted = ['greylisted']\n").unwrap();
        enricher.replace_classifier(Arc::new(rules.with_bundled_rules().build().unwrap()));
        clone.enrich(&mut event);
        assert_eq!(event.bounce_class.as_ref().map(|c| c.as_str()), Some("Greylisted"));
        assert_eq!(event.classifier_rule.as_deref(), Some("mine.toml:Greylisted#0"));
    }
}
