//! The checked-in JSON Schema must be exactly what the Rust types generate.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json/delivery_event.schema.json")
}

#[test]
fn checked_in_json_schema_matches_the_rust_types() {
    let generated = serde_json::to_string_pretty(&vigil_schemas::delivery_event_json_schema()).unwrap() + "\n";
    let path = checked_in_path();
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} drifted from the Rust types; regenerate with `VIGIL_BLESS=1 cargo test -p vigil-schemas`",
        path.display()
    );
}

#[test]
fn a_normalised_event_validates_structurally_against_the_schema() {
    // The schema lists every field the type serialises; an event with all fields set must use
    // only names the schema declares, so the checked-in file documents the real wire format.
    let schema = vigil_schemas::delivery_event_json_schema();
    let properties = schema["properties"].as_object().unwrap();
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let mut event = vigil_schemas::DeliveryEvent::new(
        "id".into(),
        vigil_schemas::SourceKind::Kumomta,
        vigil_schemas::EventKind::Bounced,
        at,
        at,
    );
    event.recipient = Some("a@b".into());
    event.bounce_class = Some(vigil_schemas::BounceClass::InvalidRecipient);
    let json = serde_json::to_value(&event).unwrap();
    for key in json.as_object().unwrap().keys() {
        assert!(properties.contains_key(key), "field {key} missing from the schema");
    }
    for required in schema["required"].as_array().unwrap() {
        assert!(json.get(required.as_str().unwrap()).is_some(), "{required} required but not written");
    }
}
