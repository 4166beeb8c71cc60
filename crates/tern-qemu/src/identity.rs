//! A guest's stable identity across hosts: the versioned machine type and
//! a named CPU model, resolved against the local QEMU at start.
//!
//! `pc`, `q35` (or no machine) and `host-model` mean "whatever this QEMU
//! and this host offer", which changes with the host a guest lands on. So,
//! as libvirt does, they are pinned at start: the alias becomes the
//! versioned type it stands for (`pc-q35-10.0`), and `host-model` becomes
//! the newest named CPU model the host can run plus the host's extra
//! features, found with `query-cpu-model-expansion`. The pinned definition
//! is what migration sends, so the destination builds the same machine.

use crate::cmdline::Accel;
use crate::probe::ProbeError;
use crate::qmp::Qmp;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The versioned machine type `requested` stands for: an alias (`pc`,
/// `q35`) resolves to its target, no machine to the default `pc`'s target,
/// and a versioned or unknown name is kept as is (preflight refuses it).
pub fn expand_machine(
    machines: &[(String, Option<String>)],
    requested: Option<&str>,
) -> Option<String> {
    let name = requested.unwrap_or("pc");
    let alias = machines
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, target)| target.clone());
    Some(alias.unwrap_or_else(|| name.to_string()))
}

/// `host-model` as a named model plus features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpu {
    /// The newest named model whose features the host CPU all has.
    pub model: String,
    /// Host features beyond the model's, sorted.
    pub features: Vec<String>,
}

/// Picks the named model covering the most host features (all of its own
/// features present on the host), and lists what the host has beyond it.
/// `candidates` are (name, features) of runnable models; plain names win
/// over their `-vN` versions on ties.
pub fn best_model(
    host: &BTreeSet<String>,
    candidates: &[(String, BTreeSet<String>)],
) -> Option<HostCpu> {
    let mut best: Option<&(String, BTreeSet<String>)> = None;
    for c in candidates.iter().filter(|(_, f)| f.is_subset(host)) {
        let better = match best {
            None => true,
            Some((name, f)) => {
                c.1.len() > f.len() || (c.1.len() == f.len() && versioned(name) && !versioned(&c.0))
            }
        };
        if better {
            best = Some(c);
        }
    }
    best.map(|(name, f)| HostCpu {
        model: name.clone(),
        features: host.difference(f).cloned().collect(),
    })
}

fn versioned(name: &str) -> bool {
    name.rsplit_once("-v")
        .is_some_and(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Features a static expansion enables.
fn enabled(expansion: &Value) -> BTreeSet<String> {
    expansion["model"]["props"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Asks `binary` (without a guest: `-machine none`) for the host CPU under
/// `accel` (`host` under KVM, `max` under TCG) as a named model plus features.
pub async fn probe_host_cpu(
    binary: &Path,
    accel: Accel,
    dir: &Path,
) -> Result<HostCpu, ProbeError> {
    let sock = dir.join("cpu-probe.qmp");
    let _ = std::fs::remove_file(&sock);
    let spawn_err = |source| ProbeError::Spawn {
        binary: binary.display().to_string(),
        source,
    };
    let mut child = Command::new(binary)
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .args(["-accel", accel.as_str(), "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let result = async {
        let mut qmp = None;
        for _ in 0..500 {
            if let Ok(q) = Qmp::connect(&sock).await {
                qmp = Some(q);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let qmp = qmp.ok_or_else(|| probe_failed("QEMU did not open its monitor"))?;
        let host_name = if accel == Accel::Kvm { "host" } else { "max" };
        let r = expand(&qmp, host_name).await?;
        let host = enabled(&r);
        let defs = qmp
            .execute("query-cpu-definitions", None)
            .await
            .map_err(|e| probe_failed(&e.to_string()))?;
        let mut candidates = Vec::new();
        for d in defs.as_array().into_iter().flatten() {
            let name = d["name"].as_str().unwrap_or_default();
            let runnable = d["unavailable-features"]
                .as_array()
                .is_some_and(|u| u.is_empty());
            let deprecated = d["deprecated"].as_bool().unwrap_or(false);
            if !runnable || deprecated || matches!(name, "max" | "host" | "base") {
                continue;
            }
            if let Ok(e) = expand(&qmp, name).await {
                candidates.push((name.to_string(), enabled(&e)));
            }
        }
        let _ = qmp.execute("quit", None).await;
        best_model(&host, &candidates).ok_or_else(|| probe_failed("no named CPU model runs here"))
    }
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_file(&sock);
    result
}

async fn expand(qmp: &Qmp, name: &str) -> Result<Value, ProbeError> {
    qmp.execute(
        "query-cpu-model-expansion",
        Some(json!({"type": "static", "model": {"name": name}})),
    )
    .await
    .map_err(|e| probe_failed(&e.to_string()))
}

fn probe_failed(why: &str) -> ProbeError {
    ProbeError::Failed(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(f: &[&str]) -> BTreeSet<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn aliases_expand_to_their_versioned_type() {
        let m = vec![
            ("pc".to_string(), Some("pc-i440fx-10.0".to_string())),
            ("pc-i440fx-10.0".to_string(), None),
            ("q35".to_string(), Some("pc-q35-10.0".to_string())),
            ("pc-q35-7.2".to_string(), None),
        ];
        assert_eq!(expand_machine(&m, None).as_deref(), Some("pc-i440fx-10.0"));
        assert_eq!(
            expand_machine(&m, Some("q35")).as_deref(),
            Some("pc-q35-10.0")
        );
        assert_eq!(
            expand_machine(&m, Some("pc-q35-7.2")).as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(
            expand_machine(&m, Some("pc-i440fx-trusty")).as_deref(),
            Some("pc-i440fx-trusty")
        );
    }

    #[test]
    fn best_model_covers_most_host_features_and_lists_the_rest() {
        let host = set(&["sse2", "sse4.2", "aes", "avx"]);
        let candidates = vec![
            ("qemu64".to_string(), set(&["sse2"])),
            ("Westmere-v1".to_string(), set(&["sse2", "sse4.2", "aes"])),
            ("Westmere".to_string(), set(&["sse2", "sse4.2", "aes"])),
            (
                "Skylake".to_string(),
                set(&["sse2", "sse4.2", "aes", "avx", "avx2"]),
            ),
        ];
        let best = best_model(&host, &candidates).unwrap();
        assert_eq!(best.model, "Westmere");
        assert_eq!(best.features, vec!["avx".to_string()]);
    }
}
