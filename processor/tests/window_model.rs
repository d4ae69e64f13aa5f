//! The window store against a naive model: a list of every event, summed by brute force.
//! Random streams with late events, senders' clocks ahead, clock jumps both ways and
//! evictions at random points must give the same totals for every scope and window.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use vigil_processor::reputation::store::{HORIZON_MINUTES, minute_of};
use vigil_processor::reputation::{Metric, ReputationStore, Scope, Totals};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

const BASE: i64 = 29_000_000;

#[derive(Debug, Clone)]
struct Step {
    kind: EventKind,
    /// Minutes the event happened before (positive) or after (negative) its ingest.
    lag: i64,
    /// Minutes the ingest clock moves since the previous event (a jump if large or negative).
    clock: i64,
    source: u8,
    provider: u8,
    evict: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let kind = prop::sample::select(vec![
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Expired,
        EventKind::Complaint,
        EventKind::Open,
        EventKind::Reception,
    ]);
    let lag = prop_oneof![8 => 0i64..3, 1 => 3i64..2000, 1 => -30i64..0];
    let clock = prop_oneof![10 => 0i64..3, 1 => 3i64..1600, 1 => -120i64..0];
    (kind, lag, clock, 0u8..3, 0u8..3, prop::bool::weighted(0.05))
        .prop_map(|(kind, lag, clock, source, provider, evict)| Step { kind, lag, clock, source, provider, evict })
}

fn at_minute(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(minute * 60 + 17, 0).unwrap()
}

/// The model: (scope values, minute, kind) of every counted event, and the final watermark.
struct Model {
    counted: Vec<(String, String, u32, EventKind)>,
    watermark: u32,
}

impl Model {
    fn totals(&self, scope: Scope, minutes: u32, as_of: u32) -> BTreeMap<String, Totals> {
        let first = as_of.saturating_sub(minutes - 1).max(self.watermark.saturating_sub(HORIZON_MINUTES - 1));
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for (source, provider, minute, kind) in &self.counted {
            if *minute < first || *minute > as_of {
                continue;
            }
            let key = match scope {
                Scope::EgressSource => source.clone(),
                Scope::Provider => provider.clone(),
                _ => format!("{source}|{provider}"),
            };
            let metric = match kind {
                EventKind::Delivered => Metric::Delivered,
                EventKind::Deferred => Metric::Deferred,
                EventKind::Bounced => Metric::Bounced,
                EventKind::Expired => Metric::Expired,
                EventKind::Complaint => Metric::Complaints,
                _ => Metric::Opens,
            };
            let totals = out.entry(key).or_default();
            totals.0[metric as usize] += 1;
            if *kind == EventKind::Bounced {
                totals.0[Metric::HardBounces as usize] += 1;
            }
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_store_equals_the_naive_model(steps in prop::collection::vec(step(), 1..300)) {
        let mut store = ReputationStore::new();
        let mut model = Model { counted: Vec::new(), watermark: 0 };
        let mut clock = BASE;
        let mut watermark: Option<u32> = None;
        for (i, s) in steps.iter().enumerate() {
            clock += s.clock;
            let received = at_minute(clock);
            let mut e = DeliveryEvent::new(format!("{i}"), SourceKind::Kumomta, s.kind, at_minute(clock - s.lag), received);
            e.egress_source = Some(format!("ip-{}", s.source));
            e.provider = Some(format!("p-{}", s.provider));
            e.bounce_class = Some(BounceClass::InvalidRecipient);
            store.record(&e, None);
            let w = watermark.map_or(minute_of(received), |w| w.max(minute_of(received)));
            watermark = Some(w);
            let minute = minute_of(e.occurred_at).min(minute_of(received));
            if s.kind != EventKind::Reception && minute >= w.saturating_sub(HORIZON_MINUTES - 1) {
                model.counted.push((format!("ip-{}", s.source), format!("p-{}", s.provider), minute, s.kind));
            }
            if s.evict {
                store.evict();
            }
        }
        model.watermark = watermark.unwrap();
        for scope in [Scope::EgressSource, Scope::Provider, Scope::EgressSourceProvider] {
            for minutes in [1, 5, 60, HORIZON_MINUTES] {
                for as_of in [model.watermark, model.watermark.saturating_sub(7), model.watermark + 3] {
                    let got: BTreeMap<String, Totals> = store
                        .window(scope, minutes, at_minute(i64::from(as_of)))
                        .into_iter()
                        .map(|row| (row.key.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("|"), row.totals))
                        .collect();
                    prop_assert_eq!(got, model.totals(scope, minutes, as_of), "{:?} {} at {}", scope, minutes, as_of);
                }
            }
        }
    }
}
