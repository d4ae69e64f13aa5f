//! `POST /publish_log_v1`: kumod's TSA publisher (`shaping:setup_with_automation{publish=...}`)
//! posts one log record per request here. It is the log hook's own receiver
//! (`vigil_ingest::kumomta::receiver`, the same as `POST /ingest/kumomta`): the same
//! normaliser, the same durable append before the 2xx, the same 503 when the log cannot take
//! it; the answer is [`vigil_schemas::api::ingest::IngestResponse`].

pub const PATH: &str = "/publish_log_v1";
