//! Server-side replies of `POST /api/v1/call`, shared by the agent's and
//! the controller's API servers.

use crate::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// A JSON reply with this status.
pub fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error reply: the error as JSON, with its code's HTTP status.
pub fn error_response(e: ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&e).unwrap_or_default();
    json_response(e.code.http_status(), body)
}
