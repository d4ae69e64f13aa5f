//! Every automation rule of KumoMTA's own shaping files loads unchanged
//! (`testdata/kumomta/shaping/`, see its PROVENANCE.md).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use vigil_processor::shaping::{Action, ConfigValue, ProviderMatch, RuleScope, ShapingRules, Trigger};

fn file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/kumomta/shaping").join(name)
}

#[test]
fn the_community_file_loads_all_47_rules() {
    let rules = ShapingRules::load(&[&file("community_shaping.toml")]).unwrap();
    assert_eq!(rules.rules().len(), 47);
    let tss04 = rules.rules().iter().find(|r| r.patterns.iter().any(|p| p.contains("TSS04"))).unwrap();
    assert!(matches!(&tss04.scope, RuleScope::Provider { name, .. } if name == "yahoo"), "{:?}", tss04.scope);
    assert_eq!(tss04.actions, [Action::Suspend]);
    assert_eq!(tss04.trigger, Trigger::Threshold { count: 2, per: Duration::from_secs(3600) });
    assert_eq!(tss04.duration, Duration::from_secs(2 * 3600));
    assert!(tss04.matches("421 4.7.0 [TSS04] Messages from 10.0.0.1 temporarily deferred", false));
    let gmail = rules.rules().iter().find(|r| r.patterns.iter().any(|p| p.contains("unusual rate"))).unwrap();
    assert_eq!(
        gmail.actions,
        [Action::SetConfig { name: "max_message_rate".into(), value: ConfigValue::Text("10/minute".into()) }]
    );
    let qq = rules
        .rules()
        .iter()
        .find(|r| matches!(&r.scope, RuleScope::Provider { name, .. } if name == "qq.com"))
        .unwrap();
    assert!(
        matches!(&qq.scope, RuleScope::Provider { matchers, .. } if matchers == &[ProviderMatch::MxSuffix(".qq.com".into())])
    );
}

#[test]
fn the_shipped_example_and_the_integration_test_files_load() {
    let example = ShapingRules::load(&[&file("shaping_example.toml")]).unwrap();
    assert_eq!(example.rules().len(), 4, "the fifth `[[...automation]]` in the file is commented out");
    assert!(
        example.rules().iter().any(|r| r.scope == RuleScope::Default && r.patterns.len() > 1),
        "an array of patterns"
    );

    let integration = ShapingRules::load(&[&file("integration_tests_shaping.toml")]).unwrap();
    assert_eq!(integration.rules().len(), 7);
    let actions: Vec<&Action> = integration.rules().iter().flat_map(|r| &r.actions).collect();
    for expected in [
        Action::Suspend,
        Action::SuspendTenant,
        Action::SuspendCampaign,
        Action::Bounce,
        Action::BounceTenant,
        Action::BounceCampaign,
        Action::SetConfig { name: "max_deliveries_per_connection".into(), value: ConfigValue::Integer(1) },
    ] {
        assert!(actions.contains(&&expected), "{expected:?} in {actions:?}");
    }
    assert!(integration.rules().iter().all(|r| r.trigger == Trigger::Immediate), "no trigger means Immediate");
    assert!(
        integration.rules().iter().any(
            |r| matches!(&r.scope, RuleScope::Destination { name, .. } if name == "delivery.mx-sink.wezfurlong.org")
        )
    );

    // All three together, as kumod's extra_files would list them.
    let all = ShapingRules::load(&[
        &file("shaping_example.toml"),
        &file("community_shaping.toml"),
        &file("integration_tests_shaping.toml"),
    ])
    .unwrap();
    assert_eq!(all.rules().len(), 4 + 47 + 7);
}
