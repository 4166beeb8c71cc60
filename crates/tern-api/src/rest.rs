//! The controller's resources (`/v1/...`) as typed calls, and the JSON
//! bodies they take: what `tern`'s cluster verbs use, and what the
//! controller's REST router decodes (one definition for both sides).
//!
//! Errors are the API's [`crate::ApiError`] with its HTTP status, so a
//! caller sees the same code the controller (or the agent behind it) gave.

use crate::client::Method;
use crate::cluster::{
    ForecastRow, HostRecord, JobRecord, MigrateRequestOptions, ServerRecord, StatusReply,
};
use crate::{Client, ClientError};
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/servers/{id}/migrate` and `POST /v1/servers/{id}/forecast`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct MigrateBody {
    /// Live migration; default: live when the server runs, cold otherwise.
    pub live: Option<bool>,
    /// The options of `tern server-migrate` / `server-live-migrate`
    /// (prefer_host, auto_start, rescue_mode, skip_cpu_check,
    /// skip_kernel_check, enable_tls, quickly_finish, max_bandwidth_mb,
    /// keep_dest_guest_on_failed).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub options: MigrateRequestOptions,
}

/// Body of `PATCH /v1/hosts/{id}/auto-migrate`: each field given changes
/// that policy; an absent one keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AutoMigrateBody {
    /// Restart the host's servers elsewhere when it dies.
    pub on_host_down: Option<bool>,
    /// Move its running servers away when it shuts down cleanly (needs
    /// `on_host_down`).
    pub on_host_shutdown: Option<bool>,
}

/// `s` as one path segment: every byte but RFC 3986's unreserved ones
/// percent-encoded, so a name cannot reach another resource.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The controller's REST API over one client.
#[derive(Debug, Clone)]
pub struct ControllerApi {
    client: Client,
}

impl ControllerApi {
    /// The API at `client`'s endpoint.
    pub fn new(client: Client) -> ControllerApi {
        ControllerApi { client }
    }

    /// `GET /v1/hosts`.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>, ClientError> {
        self.client.get("/v1/hosts").await
    }

    /// `GET /v1/hosts/{id}`.
    pub async fn host(&self, id: &str) -> Result<HostRecord, ClientError> {
        self.client.get(&format!("/v1/hosts/{}", segment(id))).await
    }

    /// `POST /v1/hosts/{id}/maintenance`: evacuates the host; the jobs queued.
    pub async fn enter_maintenance(&self, id: &str) -> Result<Vec<JobRecord>, ClientError> {
        let path = format!("/v1/hosts/{}/maintenance", segment(id));
        self.client.rest::<(), _>(Method::POST, &path, None).await
    }

    /// `DELETE /v1/hosts/{id}/maintenance`: the host takes servers again.
    pub async fn leave_maintenance(&self, id: &str) -> Result<HostRecord, ClientError> {
        let path = format!("/v1/hosts/{}/maintenance", segment(id));
        self.client.rest::<(), _>(Method::DELETE, &path, None).await
    }

    /// `PATCH /v1/hosts/{id}/auto-migrate`.
    pub async fn auto_migrate(
        &self,
        id: &str,
        body: &AutoMigrateBody,
    ) -> Result<HostRecord, ClientError> {
        let path = format!("/v1/hosts/{}/auto-migrate", segment(id));
        self.client.rest(Method::PATCH, &path, Some(body)).await
    }

    /// `GET /v1/servers`.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>, ClientError> {
        self.client.get("/v1/servers").await
    }

    /// `GET /v1/servers/{id}`.
    pub async fn server(&self, id: &str) -> Result<ServerRecord, ClientError> {
        self.client
            .get(&format!("/v1/servers/{}", segment(id)))
            .await
    }

    /// `POST /v1/servers/{id}/migrate`: the job queued.
    pub async fn migrate(&self, id: &str, body: &MigrateBody) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/servers/{}/migrate", segment(id));
        self.client.rest(Method::POST, &path, Some(body)).await
    }

    /// `POST /v1/servers/{id}/forecast`: which hosts qualify, and why not.
    pub async fn forecast(
        &self,
        id: &str,
        body: &MigrateBody,
    ) -> Result<Vec<ForecastRow>, ClientError> {
        let path = format!("/v1/servers/{}/forecast", segment(id));
        self.client.rest(Method::POST, &path, Some(body)).await
    }

    /// `GET /v1/jobs`.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, ClientError> {
        self.client.get("/v1/jobs").await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<JobRecord, ClientError> {
        self.client.get(&format!("/v1/jobs/{}", segment(id))).await
    }

    /// `POST /v1/jobs/{id}/cancel` (a job id or a server name).
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/jobs/{}/cancel", segment(id));
        self.client.rest::<(), _>(Method::POST, &path, None).await
    }

    /// `GET /v1/status`: this controller and the leader.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.client.get("/v1/status").await
    }

    /// Waits for job `id` to end, on its event stream (`GET
    /// /v1/jobs/{id}/events`, which ends with the job); a stream that ends
    /// early (the controller handed over) is followed again.
    pub async fn wait_job(&self, id: &str) -> Result<JobRecord, ClientError> {
        let path = format!("/v1/jobs/{}/events", segment(id));
        loop {
            let stream = self.client.get_stream(&path).await?;
            if let Some(j) = last_job(&stream).filter(|j| j.state.is_terminal()) {
                return Ok(j);
            }
            let j = self.job(id).await?;
            if j.state.is_terminal() {
                return Ok(j);
            }
            // Not a busy loop against a controller that keeps hanging up.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// The last `data:` record of a job's event stream.
fn last_job(stream: &str) -> Option<JobRecord> {
    stream
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_leave_their_resource() {
        assert_eq!(segment("vm-1.a_b~"), "vm-1.a_b~");
        assert_eq!(segment("../x y?z#"), "..%2Fx%20y%3Fz%23");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn bodies_are_strict() {
        let b: MigrateBody = serde_json::from_str(r#"{"live":true}"#).unwrap();
        assert_eq!(b.live, Some(true));
        assert!(serde_json::from_str::<MigrateBody>(r#"{"options":{"bogus":1}}"#).is_err());
        assert!(serde_json::from_str::<AutoMigrateBody>(r#"{"down":true}"#).is_err());
    }

    #[test]
    fn the_last_record_of_an_event_stream() {
        assert!(last_job(": keep-alive\n\n").is_none());
        let j = r#"{"id":"j1","kind":"migrate","server":"vm","source":"a","dest":null,"state":"succeeded","migration_id":"m","opts":{},"note":null,"created_ms":1,"started_ms":null,"finished_ms":null,"prior_state":"ready"}"#;
        let s = format!(
            "event: job\ndata: {}\n\nevent: job\ndata: {j}\n\n",
            j.replace("succeeded", "running")
        );
        let last = last_job(&s).unwrap();
        assert_eq!((last.id.as_str(), last.state.is_terminal()), ("j1", true));
    }
}
