//! `migrate-forecast` / `migrate --dry-run`: sample the guest and the link,
//! then run the convergence model forward before anything moves.
//!
//! Three samples: the guest's dirty rate (QEMU's `calc-dirty-rate`, one
//! second), how much of its memory is zero (zero pages cost QEMU almost
//! nothing to send; a few hundred random pages are read with `pmemsave`),
//! and the link's speed (a short TCP stream into a sink the destination
//! opens), capped by `--bandwidth` and by the pace this agent's past
//! migrations achieved.

use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_migrate::policy::{predict, predict_with_policy, Forecast};
use tern_migrate::MigrateOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much cheaper a zero page is to send than a normal one (QEMU sends a
/// flag instead of 4 KiB; the cost left is scanning it).
const ZERO_PAGE_COST: f64 = 0.08;

/// Samples the guest and predicts.
pub async fn forecast(
    agent: &Arc<Agent>,
    name: &str,
    dest_uri: Option<&str>,
    o: &MigrateOptions,
) -> Result<Forecast> {
    let slot = agent.domains.find(name)?;
    let (qmp, memory) = {
        let e = slot.inner.lock().await;
        let run = e.run.as_ref().ok_or_else(|| {
            AgentError::Conflict(format!(
                "domain '{name}' is not running; nothing to forecast"
            ))
        })?;
        (run.qmp.clone(), run.live.memory_kib * 1024)
    };
    let dirty_rate = sample_dirty_rate(&qmp).await?;
    let zero_fraction = sample_zero_fraction(agent, &qmp, name, memory).await;
    let (mut bandwidth, mut source) = match dest_uri {
        Some(u) => match probe_link(agent, u).await {
            Ok(b) => (b, "measured to the destination".to_string()),
            Err(e) => (1 << 30, format!("assumed 1 GiB/s (probe failed: {e})")),
        },
        None => (1 << 30, "assumed 1 GiB/s (no destination given)".into()),
    };
    if let Some(pace) = agent.jobs.pace() {
        if pace < bandwidth {
            bandwidth = pace;
            source = "past migrations' pace on this host".into();
        }
    }
    if let Some(m) = o.bandwidth_mib.filter(|m| *m > 0) {
        if (m << 20) < bandwidth {
            bandwidth = m << 20;
            source = "--bandwidth".into();
        }
    }
    let downtime = o.initial_downtime_ms();
    let effective =
        (memory as f64 * ((1.0 - zero_fraction) + zero_fraction * ZERO_PAGE_COST)) as u64;
    let alone = predict(effective, bandwidth, dirty_rate, downtime, 30);
    let cfg = o.policy_config();
    let prediction = if o.policy_on() {
        predict_with_policy(&cfg, effective, bandwidth, dirty_rate, downtime)
    } else {
        alone
    };
    let secs = |ms: u64| ms as f64 / 1000.0;
    let verdict = if alone.converges && alone.total_ms <= cfg.deadline_ms {
        format!(
            "converges in {} passes: about {:.1} s with {} ms downtime",
            prediction.iterations,
            secs(prediction.total_ms),
            prediction.downtime_ms
        )
    } else if o.policy_on() && prediction.downtime_ms <= cfg.max_downtime_ms {
        format!(
            "does not converge on its own: the policy finishes it in about {:.1} s ({}) with {} ms downtime",
            secs(prediction.total_ms),
            if prediction.downtime_ms == tern_migrate::policy::POSTCOPY_SWITCH_MS {
                "switching to post-copy"
            } else {
                "with a longer downtime limit"
            },
            prediction.downtime_ms
        )
    } else if o.policy_on() {
        format!(
            "does not converge on its own: the policy pauses the guest at the deadline, finishing in about {:.1} s with a {:.1} s pause (allow --postcopy to avoid it)",
            secs(prediction.total_ms),
            secs(prediction.downtime_ms)
        )
    } else {
        "does not converge: use the policy (default), --auto-converge, --postcopy or --timeout"
            .to_string()
    };
    Ok(Forecast {
        memory,
        zero_fraction,
        dirty_rate,
        bandwidth,
        bandwidth_source: source,
        downtime_limit_ms: downtime,
        prediction,
        verdict,
    })
}

async fn sample_dirty_rate(qmp: &tern_qemu::Qmp) -> Result<u64> {
    qmp.execute("calc-dirty-rate", Some(json!({"calc-time": 1})))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = qmp.execute("query-dirty-rate", None).await?;
        if r["status"] == "measured" {
            return Ok(r["dirty-rate"].as_u64().unwrap_or(0) << 20);
        }
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(
                "QEMU did not measure the dirty rate in time".into(),
            ));
        }
    }
}

/// Reads `n` random guest pages with `pmemsave` and counts the zero ones.
async fn sample_zero_fraction(agent: &Agent, qmp: &tern_qemu::Qmp, name: &str, memory: u64) -> f64 {
    let dir = agent.layout.run_dir(name);
    let file = dir.join("sample.page");
    let pages = memory / 4096;
    let n = 256u64;
    let mut zero = 0;
    let mut seen = 0;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ memory;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let page = x % pages.max(1);
        // Skip the PCI hole below 4 GiB on guests larger than 3 GiB.
        let addr = if page * 4096 >= 0xC000_0000 && memory > 0xC000_0000 {
            page * 4096 + 0x4000_0000
        } else {
            page * 4096
        };
        let r = qmp
            .execute(
                "pmemsave",
                Some(json!({"val": addr, "size": 4096, "filename": file.display().to_string()})),
            )
            .await;
        if r.is_err() {
            continue;
        }
        if let Ok(b) = std::fs::read(&file) {
            seen += 1;
            if b.iter().all(|&c| c == 0) {
                zero += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    if seen == 0 {
        0.0
    } else {
        zero as f64 / seen as f64
    }
}

/// Streams bytes for half a second into a sink the destination opened.
async fn probe_link(agent: &Arc<Agent>, dest_uri: &str) -> Result<u64> {
    let uri: tern_model::uri::ConnectUri = dest_uri
        .parse()
        .map_err(|e: tern_model::uri::UriError| AgentError::Invalid(e.to_string()))?;
    let dst = agent
        .peer_client(&uri)
        .map_err(|e| AgentError::Invalid(e.to_string()))?
        .with_timeout(Duration::from_secs(10));
    let (host, port): (String, u16) = dst
        .call(&tern_api::Request::Migration(
            tern_api::MigrationRequest::ProbeSink {},
        ))
        .await
        .map_err(|e| AgentError::Failed(e.to_string()))?;
    let _ = agent;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| AgentError::Failed(format!("cannot reach the destination's probe: {e}")))?;
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_millis(500) {
        s.write_all(&buf)
            .await
            .map_err(|e| AgentError::Failed(format!("probe stream failed: {e}")))?;
        sent += buf.len() as u64;
    }
    let _ = s.shutdown().await;
    Ok((sent as f64 / t0.elapsed().as_secs_f64()) as u64)
}

/// Destination side of the probe: accept one stream on a migration port,
/// read and discard it (at most 30 s).
pub async fn probe_sink(agent: &Arc<Agent>) -> Result<(String, u16)> {
    let mut listener = None;
    for p in agent.cfg.migration_ports.clone() {
        if let Ok(l) = tokio::net::TcpListener::bind(("0.0.0.0", p)).await {
            listener = Some((l, p));
            break;
        }
    }
    let (l, port) = listener
        .ok_or_else(|| AgentError::Failed("no free migration port for the probe".into()))?;
    tokio::spawn(async move {
        let work = async {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
    });
    Ok((agent.migration_address(), port))
}
