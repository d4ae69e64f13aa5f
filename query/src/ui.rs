//! The dashboards: `GET /` and `/ui/*`, the web UI of `dashboards/web/` embedded in the binary
//! (nothing but `cargo build` is needed to serve it). The pages read the same `/api/v1` as any
//! client, with the token the user gives them.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Every asset, by its path under `/ui/`, with its content type.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../dashboards/web/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../dashboards/web/style.css")),
    (
        "vendor/echarts.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboards/web/vendor/echarts.min.js"),
    ),
    (
        "vendor/echarts-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../dashboards/web/vendor/echarts-LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../dashboards/web/index.html");

/// The UI's routes. Outside `/api/v1`, so no token is needed to load the page itself; the data
/// it shows is guarded as any API call is.
pub fn router() -> Router {
    Router::new().route("/", get(index)).route("/ui/{*path}", get(asset))
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let index = std::str::from_utf8(INDEX).unwrap();
        for reference in index.split("\"/ui/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "index.html names /ui/{name}, which is not embedded");
        }
    }
}
