//! The Grafana dashboard in docs/grafana: valid JSON whose queries name
//! only metric families the agent or the controller registers.

use std::collections::BTreeSet;
use tern_testkit::workspace_root;

#[test]
fn dashboard_queries_name_registered_metrics() {
    let root = workspace_root();
    let text =
        std::fs::read_to_string(root.join("docs/grafana/tern-dashboard.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let sources = [
        "crates/tern-agent/src/metrics.rs",
        "crates/tern-controller/src/metrics.rs",
    ]
    .map(|p| std::fs::read_to_string(root.join(p)).expect("metrics source"))
    .join("\n");
    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {}",
            p["id"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for w in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if w.starts_with("tern_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| w.strip_suffix(s))
                        .unwrap_or(w);
                    names.insert(base.to_string());
                }
            }
        }
    }
    assert!(names.len() > 10, "{names:?}");
    for n in &names {
        assert!(
            sources.contains(&format!("\"{n}\"")),
            "the dashboard queries {n}, which no daemon registers"
        );
    }
}
