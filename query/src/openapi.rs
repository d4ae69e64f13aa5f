//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the API, generated from the
//! handlers' own parameter and answer types (their `JsonSchema` derives, doc comments
//! included), so it cannot drift from what the handlers parse and send.
//!
//! Each endpoint is one [`Endpoint`] row: its path, what it is for, the parameter structs it
//! extracts and the type it answers. Query parameters come from the parameter structs'
//! properties; answers are described as they serialize.

use std::sync::LazyLock;

use axum::Json;
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};
use vigil_schemas::api::{StateResponse, SummaryResponse};

use crate::analytics::DimensionFilters;
use crate::analytics::bounces::{BouncesParams, BouncesResponse};
use crate::analytics::events::{EventsPage, EventsParams};
use crate::analytics::reputation::RangeReputation;
use crate::analytics::summary::SummaryParams;
use crate::live::{
    ReputationParams, ReputationResponse, SuppressionPage, SuppressionParams, TimeseriesParams, TimeseriesResponse,
};
use vigil_schemas::api::deadletters::{DeadLetterParams, DeadLetterResponse};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// One `GET` endpoint of the document.
struct Endpoint {
    path: &'static str,
    summary: &'static str,
    /// The parameter structs the handler extracts.
    params: &'static [SchemaFn],
    /// The answers it may give (several when the parameters choose the shape).
    answers: &'static [SchemaFn],
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The action endpoints answer documents built from the rule engine's records; described as
/// objects until those types carry schemas.
fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "object" })
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/api/v1/summary",
        summary: "Outcome counts grouped by dimensions over the events' own times (analytics store)",
        params: &[schema::<SummaryParams>, schema::<DimensionFilters>],
        answers: &[schema::<SummaryResponse>],
    },
    Endpoint {
        path: "/api/v1/reputation",
        summary: "Counts, rates and score per scope: a live window, or any range with `from` (analytics store)",
        params: &[schema::<ReputationParams>, schema::<DimensionFilters>],
        answers: &[schema::<ReputationResponse>, schema::<RangeReputation>],
    },
    Endpoint {
        path: "/api/v1/timeseries",
        summary: "One metric per time step and scope: the last 24 h live, or any range with `from` (analytics store)",
        params: &[schema::<TimeseriesParams>, schema::<DimensionFilters>],
        answers: &[schema::<TimeseriesResponse>],
    },
    Endpoint {
        path: "/api/v1/bounces",
        summary: "Deferrals and bounces per bounce class, with the latest failures as samples (analytics store)",
        params: &[schema::<BouncesParams>, schema::<DimensionFilters>],
        answers: &[schema::<BouncesResponse>],
    },
    Endpoint {
        path: "/api/v1/events",
        summary: "Events by recipient, message id, time and any dimension, newest first, with a cursor",
        params: &[schema::<EventsParams>, schema::<DimensionFilters>],
        answers: &[schema::<EventsPage>],
    },
    Endpoint {
        path: "/api/v1/dmarc",
        summary: "DMARC aggregate report rows in messages, by sending domain, source IP, reporter, disposition; unknown source IPs marked (analytics store)",
        params: &[schema::<crate::analytics::dmarc::DmarcParams>],
        answers: &[schema::<vigil_schemas::api::dmarc::DmarcResponse>],
    },
    Endpoint {
        path: "/api/v1/providers",
        summary: "The mailbox provider a recipient domain is counted under, and how it was decided (the provider data file, or the domain's MX from DNS)",
        params: &[schema::<vigil_schemas::api::providers::ProvidersParams>],
        answers: &[schema::<vigil_schemas::api::providers::ProvidersResponse>],
    },
    Endpoint {
        path: "/api/v1/blocklists",
        summary: "What the DNS block lists say of our sending IPs and domains now (listed, clear, refused, failed), with since when",
        params: &[],
        answers: &[schema::<vigil_schemas::api::blocklists::BlocklistsResponse>],
    },
    Endpoint {
        path: "/api/v1/domains",
        summary: "Our sending domains' SPF (lookups against the limit of 10, coverage of our IPs), DKIM, DMARC, MTA-STS and TLS-RPT, as findings with a severity and a fix",
        params: &[],
        answers: &[schema::<vigil_schemas::api::domains::DomainsResponse>],
    },
    Endpoint {
        path: "/api/v1/suppressions",
        summary: "Suppressed recipients (JSON, or CSV with `format=csv` or `format=listmonk`); POST /api/v1/suppressions/remove with `recipient`, `author` and `reason` takes one off (operator, on vigil run; docs/privacy.md), and DELETE /api/v1/admin/recipients/{address} erases a person everywhere (admin)",
        params: &[schema::<SuppressionParams>],
        answers: &[schema::<SuppressionPage>],
    },
    Endpoint {
        path: "/api/v1/state",
        summary: "The derived state's log offset and digests",
        params: &[],
        answers: &[schema::<StateResponse>],
    },
    Endpoint {
        path: "/api/v1/decisions",
        summary: "What the rules that act decided, newest first, with their evidence",
        params: &[schema::<crate::actions::DecisionsParams>],
        answers: &[object],
    },
    Endpoint {
        path: "/api/v1/alerts",
        summary: "Alerts pending and firing now (with the silences muting them) and the recent firings and resolves",
        params: &[schema::<crate::alerts::AlertsParams>],
        answers: &[schema::<crate::alerts::AlertsResponse>],
    },
    Endpoint {
        path: "/api/v1/silences",
        summary: "Silences kept (active, pending, expired); POST adds one, DELETE /api/v1/silences/{id} ends one (operator)",
        params: &[],
        answers: &[schema::<crate::alerts::SilencesResponse>],
    },
    Endpoint {
        path: "/api/v1/throttles",
        summary: "The actions in force now; POST /api/v1/actions/lift with `action_key`, `author` and `reason` takes one back (operator, on vigil run)",
        params: &[],
        answers: &[object],
    },
    Endpoint { path: "/api/v1/warmup", summary: "Each warm-up plan's progress", params: &[], answers: &[object] },
    Endpoint {
        path: "/api/v1/deadletters",
        summary: "Rejected input with the reason",
        params: &[schema::<DeadLetterParams>],
        answers: &[schema::<DeadLetterResponse>],
    },
];

/// A property schema as a query parameter's: a query string has no null, only absence.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let kept: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        schema["type"] = if kept.len() == 1 { kept[0].clone() } else { Value::Array(kept) };
    }
    schema
}

/// The query parameters of a parameter struct, from its inlined schema's properties.
fn parameters(params: &[SchemaFn]) -> Vec<Value> {
    let mut generator = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    let mut out = Vec::new();
    for params in params {
        let schema = params(&mut generator).to_value();
        let required: Vec<&str> =
            schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        for (name, property) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let mut property = property.clone();
            let description = property.as_object_mut().and_then(|p| p.remove("description"));
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": without_null(property),
            });
            if let Some(description) = description {
                parameter["description"] = description;
            }
            out.push(parameter);
        }
    }
    out
}

fn error_answer(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = Contract::Serialize;
        })
        .into_generator();
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let answers: Vec<Value> = endpoint.answers.iter().map(|answer| answer(&mut generator).to_value()).collect();
        let schema = if answers.len() == 1 { answers[0].clone() } else { json!({ "oneOf": answers }) };
        let operation = json!({
            "summary": endpoint.summary,
            "operationId": endpoint.path.trim_start_matches("/api/v1/").replace('/', "_"),
            "parameters": parameters(endpoint.params),
            "responses": {
                "200": { "description": "The answer", "content": { "application/json": { "schema": schema } } },
                "400": error_answer("The request is wrong; `error` says how"),
                "401": error_answer("A bearer token is needed (tokens are configured)"),
                "403": error_answer("The token's role is too low"),
                "503": error_answer("Starting, a dependency is down, or the request took too long"),
            },
        });
        paths.insert(endpoint.path.to_owned(), json!({ "get": operation }));
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"] }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Vigil",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Deliverability analytics, reputation and the actions taken at the MTA. Times are RFC 3339; \
                ranges are `from` (inclusive) to `to` (exclusive). With API tokens configured, send \
                `Authorization: Bearer <token>`: viewer reads, operator also changes, admin also administers.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
        // A token when the server has tokens configured; none when it listens on loopback only.
        "security": [{ "bearer": [] }, {}],
    })
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

/// The document.
#[must_use]
pub fn document() -> &'static Value {
    &DOCUMENT
}

pub(crate) async fn handler() -> Json<&'static Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_described_with_its_parameters_and_answer() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ENDPOINTS.len());
        let summary = &paths["/api/v1/summary"]["get"];
        let names: Vec<&str> =
            summary["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        for name in ["group_by", "from", "to", "provider", "egress_source", "sending_domain"] {
            assert!(names.contains(&name), "summary lacks `{name}`: {names:?}");
        }
        let events = &paths["/api/v1/events"]["get"]["parameters"];
        let limit = events.as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["type"], "integer", "{limit}");
        // Every reference resolves to a component.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref to {name}");
        }
        assert!(doc["components"]["schemas"].get("SummaryRow").is_some());
    }
}
