//! `GET /v1/jobs/{id}/events`: a job's record each time it changes, as
//! server-sent events (`event: job`), ending after its terminal state.

use super::{error, find_job, ErrorBody};
use crate::authz::Caller;
use crate::Controller;
use axum::extract::{Extension, Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often the store is read for changes.
const POLL: Duration = Duration::from_millis(250);

/// Streams a job's changes.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "text/event-stream: `event: job` with the job record as JSON data, each time it changes, until it succeeds, fails or is cancelled", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn job_events(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let first = match find_job(&ctl, &caller, &id).await {
        Ok(j) => j,
        Err(e) => return error(e),
    };
    let stream = futures_stream(ctl, caller, id, first);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn futures_stream(
    ctl: Arc<Controller>,
    caller: Arc<Caller>,
    id: String,
    first: tern_api::cluster::JobRecord,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last = None;
        let mut job = Some(first);
        loop {
            if let Some(j) = job.take() {
                if last.as_ref() != Some(&j) {
                    let ev = Event::default()
                        .event("job")
                        .json_data(&j)
                        .unwrap_or_else(|_| Event::default().event("job"));
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    if j.state.is_terminal() {
                        return;
                    }
                    last = Some(j);
                }
            }
            tokio::time::sleep(POLL).await;
            match find_job(&ctl, &caller, &id).await {
                Ok(j) => job = Some(j),
                // The job was removed: the stream ends.
                Err(_) => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
