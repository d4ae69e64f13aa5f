//! KumoMTA's integration-test shaping file (every action type) applied to records the way
//! tsa-daemon applies it: the frames, their reasons and keys, and the overlay, exactly.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use vigil_processor::actuation::kumomta::{self, SubscriptionItem};
use vigil_processor::actuation::{Decision, RuleSet, Status};
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, ProviderMap};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

fn rules() -> FoldRules {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/kumomta/shaping");
    let text = format!("shaping_files = [{:?}]\n", dir.join("integration_tests_shaping.toml").display().to_string());
    FoldRules::new(RuleSet::from_toml("test", &text, &ProviderMap::bundled()).unwrap())
}

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z").unwrap().into()
}

/// A deferral to `domain` through egress source `ip-1`, for tenant `acme` (and campaign).
fn deferral(id: &str, domain: &str, text: &str, campaign: Option<&str>) -> DeliveryEvent {
    let mut e =
        DeliveryEvent::new(id.into(), SourceKind::Kumomta, EventKind::Deferred, at(), at() + TimeDelta::seconds(1));
    e.recipient_domain = Some(domain.into());
    e.egress_source = Some("ip-1".into());
    e.site = Some(format!("ip-1->mx.{domain}@smtp_client"));
    e.tenant = Some("acme".into());
    e.campaign = campaign.map(Into::into);
    e.smtp_code = Some(450);
    e.enhanced_status = Some("4.0.0".into());
    e.response_text = Some(text.into());
    e
}

fn fold(events: &[DeliveryEvent]) -> (Vec<Decision>, DerivedState) {
    let fold = rules();
    let mut state = DerivedState::new();
    let mut decisions = Vec::new();
    for (i, e) in events.iter().enumerate() {
        state.apply(i as u64, e, &fold, &mut decisions);
    }
    (decisions, state)
}

fn frame_json(d: &Decision) -> Value {
    serde_json::to_value(kumomta::frame(d).unwrap()).unwrap()
}

#[test]
fn every_action_type_acts_as_tsa_does() {
    let (decisions, state) = fold(&[
        deferral("a", "example.com", "you said 450-go-away", None),
        deferral("b", "example.com", "you said 450-suspend-campaign", Some("spring")),
        deferral("c", "example.com", "you said 450-suspend-tenant", Some("spring")),
        deferral("d", "example.com", "you said 550-go-away", Some("spring")),
        deferral("e", "example.com", "you said 550-bounce-campaign", Some("spring")),
        deferral("f", "example.com", "you said 550-bounce-tenant", Some("spring")),
    ]);
    assert!(decisions.iter().all(|d| d.status == Status::Applied));
    let expires = "2026-03-02T11:00:00Z";
    let frames: Vec<Value> =
        decisions.iter().filter_map(kumomta::frame).map(|f| serde_json::to_value(f).unwrap()).collect();
    // Strip the hashes (checked below) to compare the rest exactly.
    let shown: Vec<Value> = frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            let inner = f.as_object_mut().unwrap().values_mut().next().unwrap().as_object_mut().unwrap();
            inner.remove("rule_hash");
            f
        })
        .collect();
    assert_eq!(
        shown,
        [
            json!({"ReadyQSuspension": {"site_name": "ip-1->mx.example.com@smtp_client", "reason": "automation rule: you said 450-go-away", "source": "ip-1", "expires": expires}}),
            json!({"SchedQSuspension": {"tenant": "acme", "domain": "example.com", "campaign": "spring", "reason": "automation rule: you said 450-suspend-campaign tenant=acme domain=example.com campaign=spring", "expires": expires}}),
            json!({"SchedQSuspension": {"tenant": "acme", "domain": "example.com", "campaign": null, "reason": "automation rule: you said 450-suspend-tenant tenant=acme domain=example.com", "expires": expires}}),
            // A plain Bounce keeps the queue's tenant (tsa-daemon's `http_server.rs`), not its campaign.
            json!({"SchedQBounce": {"domain": "example.com", "tenant": "acme", "campaign": null, "reason": "automation rule: you said 550-go-away domain=example.com tenant=acme", "expires": expires}}),
            json!({"SchedQBounce": {"domain": "example.com", "tenant": "acme", "campaign": "spring", "reason": "automation rule: you said 550-bounce-campaign domain=example.com tenant=acme campaign=spring", "expires": expires}}),
            json!({"SchedQBounce": {"domain": "example.com", "tenant": "acme", "campaign": null, "reason": "automation rule: you said 550-bounce-tenant domain=example.com tenant=acme", "expires": expires}}),
        ]
    );
    // TSA's rule_hash: the hash alone for ready queues, `<site>-<hash>` for the others.
    let readyq = frames[0]["ReadyQSuspension"]["rule_hash"].as_str().unwrap();
    assert!(readyq.len() == 64 && readyq.chars().all(|c| c.is_ascii_hexdigit()), "{readyq}");
    let schedq = frames[1]["SchedQSuspension"]["rule_hash"].as_str().unwrap();
    assert!(schedq.starts_with("ip-1->mx.example.com@smtp_client-"), "{schedq}");

    // The go-away rule's two SetConfig actions, rolled up (a `default` rule).
    let overlay = kumomta::overlay(state.actuation.active.in_force(at()));
    assert_eq!(
        overlay,
        "# Generated by Vigil (TSA-compatible)\n# Number of entries: 2\n\
         \n[\"example.com\"]\nmx_rollup = true\n\
         \n[\"example.com\".sources.\"ip-1\"]\n\
         # reason: automation rule: you said 450-go-away\n# expires: 2026-03-02T11:00:00+00:00\n\"max_deliveries_per_connection\" = 1\n\
         # reason: automation rule: you said 450-go-away\n# expires: 2026-03-02T11:00:00+00:00\n\"max_message_rate\" = \"3/m\"\n"
    );
    // Replayed on connect: ready queue, then scheduled suspensions, then bounces.
    let replay: Vec<&str> = kumomta::replay_frames(state.actuation.active.in_force(at()))
        .iter()
        .map(|f| match f {
            SubscriptionItem::ReadyQSuspension(_) => "readyq",
            SubscriptionItem::SchedQSuspension(_) => "schedq",
            SubscriptionItem::SchedQBounce(_) => "bounce",
        })
        .collect();
    assert_eq!(replay, ["readyq", "schedq", "schedq", "bounce", "bounce", "bounce"]);
}

#[test]
fn tenant_actions_need_a_tenant_and_internal_responses_are_skipped() {
    let mut no_tenant = deferral("a", "example.com", "you said 450-suspend-tenant", None);
    no_tenant.tenant = None;
    let mut internal = deferral("b", "example.com", "KumoMTA internal: you said 450-go-away", None);
    internal.internal = true;
    let (decisions, _) = fold(&[no_tenant, internal]);
    assert_eq!(decisions, [], "TSA logs and skips a tenant action without a tenant");
}

#[test]
fn a_domain_block_without_rollup_matches_only_its_domain_and_actions_expire() {
    let hit = deferral("a", "delivery.mx-sink.wezfurlong.org", "250 OK ids=1", None);
    let miss = deferral("b", "other.example", "250 OK ids=1", None);
    // An event two hours later moves the clock past the expiry.
    let mut later = deferral("c", "other.example", "nothing to see", None);
    later.ingested_at = at() + TimeDelta::hours(2);
    later.occurred_at = later.ingested_at;
    let (decisions, state) = fold(&[hit, miss, later]);
    let statuses: Vec<(Status, Option<String>)> =
        decisions.iter().map(|d| (d.status, d.target.domain.clone())).collect();
    assert_eq!(
        statuses,
        [
            (Status::Applied, Some("delivery.mx-sink.wezfurlong.org".into())),
            (Status::Expired, Some("delivery.mx-sink.wezfurlong.org".into())),
        ]
    );
    assert_eq!(decisions[1].at, at() + TimeDelta::hours(1));
    assert_eq!(state.actuation.active.in_force(at()).count(), 0);
    assert_eq!(
        frame_json(&decisions[0])["ReadyQSuspension"]["site_name"],
        "ip-1->mx.delivery.mx-sink.wezfurlong.org@smtp_client"
    );
}

#[test]
fn a_threshold_counts_within_the_rule_duration_per_egress_path_and_repeats_extend() {
    let text = "[[\"example.com\".automation]]\nregex = \"RL0000\"\naction = \"Suspend\"\ntrigger = {Threshold=\"3/hr\"}\nduration = \"30m\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), text).unwrap();
    let rules = format!("shaping_files = [{:?}]\n", dir.path().join("s.toml").display().to_string());
    let fold_rules = FoldRules::new(RuleSet::from_toml("t", &rules, &ProviderMap::bundled()).unwrap());
    let mut state = DerivedState::new();
    let mut decisions = Vec::new();
    let mut offset = 0;
    let mut play = |minute: i64, source: &str, state: &mut DerivedState, decisions: &mut Vec<Decision>| {
        let mut e = deferral(&format!("e{offset}"), "example.com", "RL0000 rate limited", None);
        e.occurred_at = at() + TimeDelta::minutes(minute);
        e.ingested_at = e.occurred_at;
        e.egress_source = Some(source.into());
        e.site = Some(format!("{source}->mx.example.com@smtp_client"));
        state.apply(offset, &e, &fold_rules, decisions);
        offset += 1;
    };
    // Two on ip-1, one on ip-2: no egress path reached 3.
    play(0, "ip-1", &mut state, &mut decisions);
    play(1, "ip-1", &mut state, &mut decisions);
    play(2, "ip-2", &mut state, &mut decisions);
    assert_eq!(decisions, []);
    // The window is the rule's duration (30 min), not the hour of "3/hr": at minute 32 the
    // responses of minutes 0 and 1 are out of it.
    play(31, "ip-1", &mut state, &mut decisions);
    play(32, "ip-1", &mut state, &mut decisions);
    assert_eq!(decisions, []);
    play(33, "ip-1", &mut state, &mut decisions);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].evidence.count, Some(3));
    assert_eq!(decisions[0].expires, at() + TimeDelta::minutes(63));
    // A repeat a minute later moves the expiry to its own + 30 min, as tsa-daemon does, but
    // quietly: no decision (less than a tenth of the duration, and at least a minute past the
    // expiry last said), only an announcement for live subscribers.
    let key = decisions[0].action_key.clone();
    state.take_announced();
    play(34, "ip-1", &mut state, &mut decisions);
    assert_eq!(decisions.len(), 1);
    assert_eq!(state.actuation.active.get(&key).unwrap().expires, at() + TimeDelta::minutes(64), "in force longer");
    let announced = state.take_announced();
    assert_eq!(announced.len(), 1);
    assert_eq!(
        (announced[0].expires, &announced[0].decision_id),
        (at() + TimeDelta::minutes(64), &decisions[0].decision_id)
    );
    // Quiet extensions do not add up to a said one until the expiry last said is a tenth of
    // the duration behind: at minute 35 it is two minutes behind, still quiet ...
    play(35, "ip-1", &mut state, &mut decisions);
    assert_eq!(decisions.len(), 1);
    // ... and at 37 (four minutes past the expiry said), said again.
    play(37, "ip-1", &mut state, &mut decisions);
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[1].expires, at() + TimeDelta::minutes(67));
    assert_eq!(decisions[1].action_key, key);
}

/// The record: three TSS04 deferrals for one source at 07:38:35, 07:41:47 and
/// 07:44:59. tsa-daemon keeps the source suspended until two hours after the *last* and its
/// overrides until 90 minutes after it; so does Vigil.
#[test]
fn every_repeat_moves_the_expiry_to_the_last_match_as_tsa_daemon_does() {
    let fold_rules = FoldRules::new(
        RuleSet::from_toml(
            "t",
            "shaping_files = [\"builtin:kumomta-shipped\", \"builtin:kumomta-community\"]\n",
            &ProviderMap::bundled(),
        )
        .unwrap(),
    );
    let mut state = DerivedState::new();
    let mut decisions = Vec::new();
    let base: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-12-05T07:38:35Z").unwrap().into();
    for (offset, seconds) in [0_i64, 192, 384].into_iter().enumerate() {
        let when = base + TimeDelta::seconds(seconds);
        let mut e = DeliveryEvent::new(format!("t{offset}"), SourceKind::Kumomta, EventKind::Deferred, when, when);
        e.recipient_domain = Some("yahoo.com".into());
        e.recipient = Some(format!("user{offset}@yahoo.com"));
        e.egress_source = Some("ip-1".into());
        e.site = Some("ip-1->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client".into());
        e.mx_host = Some("mta5.am0.yahoodns.net".into());
        e.provider = Some("yahoo".into());
        e.smtp_code = Some(421);
        e.enhanced_status = Some("4.7.0".into());
        e.response_text = Some("[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes".into());
        state.apply(offset as u64, &e, &fold_rules, &mut decisions);
    }
    let last = base + TimeDelta::seconds(384);
    let in_force: Vec<&Decision> = state.actuation.active.in_force(base).collect();
    let suspensions: Vec<&&Decision> = in_force.iter().filter(|d| d.setting.is_none()).collect();
    let overrides: Vec<&&Decision> = in_force.iter().filter(|d| d.setting.is_some()).collect();
    assert_eq!(suspensions.len(), 2, "{in_force:#?}");
    assert!(suspensions.iter().all(|d| d.expires == last + TimeDelta::hours(2)), "{suspensions:#?}");
    assert!(!overrides.is_empty());
    assert!(overrides.iter().all(|d| d.expires == last + TimeDelta::minutes(90)), "{overrides:#?}");
}

/// An operator's lift is an event of the log: folded, it ends the action with a `lifted`
/// decision that says who and why; folded again (a replay), it decides the same; a lift of an
/// action not in force changes nothing.
#[test]
fn an_operator_lift_in_the_log_ends_the_action_and_replays_the_same() {
    let suspend = deferral("a", "example.com", "you said 450-go-away", None);
    let (applied, _) = fold(std::slice::from_ref(&suspend));
    let action = applied.iter().find(|d| d.status == Status::Applied).unwrap().clone();
    let by = |key: &str| vigil_schemas::OperatorAction {
        action_key: key.into(),
        author: "oncall".into(),
        reason: "the provider cleared us".into(),
    };
    let lifted_at = at() + TimeDelta::minutes(5);
    let lift = vigil_processor::actuation::operator_lift(&action, by(&action.action_key), lifted_at);
    assert_eq!((lift.kind, lift.source), (EventKind::ActionLifted, SourceKind::Operator));
    assert_eq!(lift.egress_source, action.target.egress_source);
    let stray = vigil_processor::actuation::operator_lift(&action, by("no-such-action"), lifted_at);

    let log = [suspend, stray, lift];
    let (decisions, state) = fold(&log);
    let ended: Vec<&Decision> = decisions.iter().filter(|d| d.status == Status::Lifted).collect();
    assert_eq!(ended.len(), 1, "{decisions:#?}");
    assert_eq!(ended[0].action_key, action.action_key);
    assert_eq!(ended[0].reason, "lifted by oncall: the provider cleared us");
    assert_eq!(ended[0].at, lifted_at);
    assert!(state.actuation.active.get(&action.action_key).is_none(), "no longer in force");
    assert_eq!(state.actuation.active.in_force(at()).count(), applied.len() - 1);

    let (again, replayed) = fold(&log);
    assert_eq!(
        again.iter().map(|d| &d.decision_id).collect::<Vec<_>>(),
        decisions.iter().map(|d| &d.decision_id).collect::<Vec<_>>()
    );
    assert_eq!(replayed.actions_digest(), state.actions_digest());
}
