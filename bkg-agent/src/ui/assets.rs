//! The UI's stylesheet, script and icon, built into the binary: nothing is fetched from elsewhere.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON_SVG, "image/svg+xml"),
        // The UI's page, as for any address it does not have (was: an empty 404).
        _ => return super::view::error_page(None, StatusCode::NOT_FOUND, "There is no such page."),
    };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
