//! The OpenAPI document of the REST API, generated from the handlers'
//! annotations and served at `/v1/openapi.json`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;

/// The document's definition: every annotated route and schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern controller API",
        description = "Hosts, servers and migration jobs of a Tern cluster: what `tern --controller` and the web console use. Agents register and report on the RPC endpoint POST /api/v1/call."
    ),
    paths(
        super::hosts::list_hosts,
        super::hosts::show_host,
        super::hosts::enter_maintenance,
        super::hosts::leave_maintenance,
        super::hosts::auto_migrate,
        super::list_servers,
        super::show_server,
        super::migrate_server,
        super::forecast_server,
        super::status,
        super::list_jobs,
        super::show_job,
        super::cancel_job,
        super::events::job_events,
        document,
    ),
    components(schemas(
        super::ErrorBody,
        tern_api::rest::MigrateBody,
        tern_api::rest::AutoMigrateBody
    )),
    tags(
        (name = "hosts", description = "Hypervisor hosts and their health"),
        (name = "servers", description = "Guests and their migrations"),
        (name = "jobs", description = "Migration jobs"),
        (name = "meta", description = "This controller, and this document"),
    )
)]
pub struct ApiDoc;

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of these routes", body = Object)))]
pub async fn document() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_document_validates_and_covers_every_route() {
        let json = ApiDoc::openapi().to_json().expect("JSON");
        // A typed OpenAPI 3.1 parse: every object where the spec wants it.
        let spec = oas3::from_json(&json).expect("a valid OpenAPI 3.1 document");
        assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, routed, "documented vs routed");
        for (m, p) in &routed {
            let op = &doc["paths"][p][m];
            assert!(
                op["responses"]["200"].is_object() || op["responses"]["202"].is_object(),
                "{m} {p}"
            );
        }
    }
}
