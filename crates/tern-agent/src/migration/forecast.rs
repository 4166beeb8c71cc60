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
use tern_migrate::forecast::Measured;
use tern_migrate::plan::{arm_postcopy, start_plan, Sample, ZERO_PAGE_COST};
use tern_migrate::policy::{predict, predict_with_policy, Forecast, Prediction};
use tern_migrate::MigrateOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    // The same pages are read before and after the dirty-rate second: how
    // many are zero, how well they compress, and how much of a rewritten
    // page changes.
    let before = read_pages(agent, &qmp, name, memory).await;
    let dirty_rate = sample_dirty_rate(&qmp).await?;
    let after = read_pages(agent, &qmp, name, memory).await;
    let pages = page_figures(&before, &after);
    let zero_fraction = pages.zero_fraction;
    let probe = match dest_uri {
        Some(u) => probe_link(agent, u)
            .await
            .map_err(|e| format!("probe failed: {e}")),
        None => Err("no destination given".to_string()),
    };
    let probe_loopback = matches!(probe, Ok((_, true)));
    let loopback_probe = match probe {
        Ok((rate, true)) => rate,
        _ => 0,
    };
    let probe = probe.map(|(rate, _)| rate);
    let cap = o.bandwidth_mib.filter(|m| *m > 0).map(|m| m << 20);
    let cpu_rate = tokio::task::spawn_blocking(copy_speed)
        .await
        .unwrap_or(0)
        .max(1);
    let inputs = tern_migrate::forecast::inputs(&Measured {
        memory,
        zero_fraction,
        zero_samples: REGIONS,
        dirty_rate,
        cpu_rate,
        learned_ratio: agent.jobs.learned.thread_ratio(),
        learned_probe_ratio: agent.jobs.learned.probe_ratio(),
        learned_pace: agent.jobs.learned.pace(),
        learned_errors: agent.jobs.learned.estimate_errors(),
        probe,
        probe_loopback,
        cap,
        postcopy_cap: o.postcopy_bandwidth_mib.filter(|m| *m > 0).map(|m| m << 20),
    });
    let cfg = o.policy_config();
    let range = tern_migrate::forecast::range(&cfg, &inputs);
    let bandwidth = inputs.send_rate.p50 as u64;
    let source = inputs.send_rate.source.clone();
    let downtime = o.initial_downtime_ms();
    // What the first pass sends, in bytes at the send rate (zero pages at
    // their scan cost on the thread).
    let effective = (memory as f64 * (1.0 - zero_fraction)
        + memory as f64 * zero_fraction * ZERO_PAGE_COST * inputs.send_rate.p50
            / inputs.thread_rate.p50.max(1.0)) as u64;
    let alone = predict(effective, bandwidth, dirty_rate, downtime, 30);
    let policy_point = predict_with_policy(
        &cfg,
        effective,
        bandwidth,
        dirty_rate,
        range.downtime_limit_ms,
        inputs.postcopy_rate.p50 as u64,
    );
    let prediction = if o.policy_on() {
        Prediction {
            total_ms: range.total.p50_ms,
            downtime_ms: range.downtime.p50_ms,
            ..policy_point
        }
    } else {
        alone
    };
    let secs = |ms: u64| ms as f64 / 1000.0;
    let span = format!(
        "{:.1}-{:.1} s (median {:.1} s), pause {}-{} ms",
        secs(range.total.p10_ms),
        secs(range.total.p90_ms),
        secs(range.total.p50_ms),
        range.downtime.p10_ms,
        range.downtime.p90_ms
    );
    let verdict = if alone.converges && alone.total_ms <= cfg.deadline_ms {
        format!("converges in {} passes: {span}", prediction.iterations,)
    } else if o.policy_on() && policy_point.downtime_ms <= cfg.max_downtime_ms {
        format!(
            "does not converge on its own: the policy finishes it ({}): {span}",
            if policy_point.downtime_ms == tern_migrate::policy::POSTCOPY_SWITCH_MS {
                "switching to post-copy"
            } else {
                "with a longer downtime limit"
            },
        )
    } else if o.policy_on() {
        format!(
            "does not converge on its own: the policy pauses the guest at the deadline: {span} (allow --postcopy to avoid it)"
        )
    } else {
        "does not converge: use the policy (default), --auto-converge, --postcopy or --timeout"
            .to_string()
    };
    let sample = Sample {
        effective_memory: effective,
        dirty_rate,
        bandwidth,
        delta_fraction: pages.delta_fraction,
        compress_ratio: pages.compress_ratio,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let plan = if o.policy_on() && !o.compressed && !o.parallel {
        start_plan(&cfg, &sample, downtime)
    } else {
        None
    };
    let arm = (o.policy_on() && o.postcopy).then(|| arm_postcopy(&cfg, &sample, downtime));
    let f = Forecast {
        memory,
        zero_fraction,
        dirty_rate,
        bandwidth,
        bandwidth_source: source,
        downtime_limit_ms: if o.policy_on() {
            range.downtime_limit_ms
        } else {
            downtime
        },
        prediction,
        verdict,
        delta_fraction: pages.delta_fraction,
        compress_ratio: pages.compress_ratio,
        plan,
        arm_postcopy: arm,
        range: Some(range),
        cpu_rate,
        loopback_probe,
    };
    agent.jobs.remember_forecast(name, f.clone());
    Ok(f)
}

/// This host's single-thread copy speed now, bytes/s: pages checked for
/// zeros and copied, as QEMU's migration thread does, in six 50 ms windows,
/// the median of them (on a shared machine one window may fall into
/// another process's time slice). memcmp and memcpy run at the same speed
/// in debug and release builds, so the figure does not depend on how the
/// agent was built. It moves with the host's load, which is what the
/// forecast needs it for.
fn copy_speed() -> u64 {
    const PAGE: usize = 4096;
    let src = vec![0x5au8; 4 << 20];
    let zero = [0u8; PAGE];
    let mut dst = vec![0u8; 1 << 20];
    let mut zeros = 0u64;
    let mut windows = Vec::new();
    for _ in 0..6 {
        let t0 = Instant::now();
        let mut bytes = 0u64;
        while t0.elapsed() < Duration::from_millis(50) {
            for (i, page) in src.chunks_exact(PAGE).enumerate() {
                if page == zero.as_slice() {
                    zeros += 1;
                    continue;
                }
                let at = (i * PAGE) % dst.len();
                dst[at..at + PAGE].copy_from_slice(page);
            }
            bytes += src.len() as u64;
        }
        windows.push((bytes as f64 / t0.elapsed().as_secs_f64()) as u64);
    }
    std::hint::black_box((&dst, zeros));
    windows.sort_unstable();
    windows[windows.len() / 2]
}

/// What two reads of the same sampled pages showed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PageFigures {
    zero_fraction: f64,
    delta_fraction: Option<f64>,
    compress_ratio: f64,
}

/// Pure: zero pages and compressibility from the first read; for pages
/// that differ between the reads, the mean fraction of bytes that changed.
fn page_figures(before: &[Vec<u8>], after: &[Vec<u8>]) -> PageFigures {
    let mut deltas = Vec::new();
    for (a, b) in before.iter().zip(after) {
        if a.len() == b.len() && a != b {
            let changed = a.iter().zip(b).filter(|(x, y)| x != y).count();
            deltas.push(changed as f64 / a.len().max(1) as f64);
        }
    }
    let raw: Vec<u8> = before.concat();
    let compress_ratio = match zstd::bulk::compress(&raw, 1) {
        Ok(c) if !raw.is_empty() => raw.len() as f64 / c.len().max(1) as f64,
        _ => 1.0,
    };
    PageFigures {
        zero_fraction: zero_fraction(before),
        delta_fraction: (!deltas.is_empty())
            .then(|| deltas.iter().sum::<f64>() / deltas.len() as f64),
        compress_ratio,
    }
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

/// Pages read per sample: a region of `REGION_PAGES` pages at each of
/// `REGIONS` pseudo-random places (the same ones every time for a given
/// memory size). 256 single pages put the zero fraction of a guest half
/// full of data at 41 % against the 45 % QEMU then found; more pages per
/// command narrow that at no extra QMP round trips.
const REGIONS: u64 = 256;
const REGION_PAGES: u64 = 4;

/// Reads the sample pages with `pmemsave`; regions that could not be read
/// are left out.
async fn read_pages(agent: &Agent, qmp: &tern_qemu::Qmp, name: &str, memory: u64) -> Vec<Vec<u8>> {
    read_pages_into(qmp, &sample_file(agent, name, "sample.page"), memory).await
}

/// Where QEMU may write a sample (`pmemsave`) for the agent to read: in the
/// domain's run directory, as QEMU's own user.
pub(super) fn sample_file(agent: &Agent, name: &str, file: &str) -> std::path::PathBuf {
    let dir = agent.layout.run_dir(name);
    // QEMU writes the file after it dropped to its own user.
    let user = agent.guest_user_of(name).ok().flatten();
    let dir = crate::confine::user::qemu_dir(&dir, user.as_ref()).unwrap_or(dir);
    dir.join(file)
}

/// How much of `pages` is zero (0 for none read).
pub(super) fn zero_fraction(pages: &[Vec<u8>]) -> f64 {
    let zero = pages.iter().filter(|p| p.iter().all(|&b| b == 0)).count();
    zero as f64 / pages.len().max(1) as f64
}

/// [`read_pages`] through `file`, which is removed after.
pub(super) async fn read_pages_into(
    qmp: &tern_qemu::Qmp,
    file: &std::path::Path,
    memory: u64,
) -> Vec<Vec<u8>> {
    let regions = (memory / 4096 / REGION_PAGES).max(1);
    let mut out = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ memory;
    for _ in 0..REGIONS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % regions) * REGION_PAGES * 4096;
        // Skip the PCI hole below 4 GiB on guests larger than 3 GiB.
        let addr = if at >= 0xC000_0000 && memory > 0xC000_0000 {
            at + 0x4000_0000
        } else {
            at
        };
        let r = qmp
            .execute(
                "pmemsave",
                Some(json!({"val": addr, "size": REGION_PAGES * 4096, "filename": file.display().to_string()})),
            )
            .await;
        if r.is_ok() {
            if let Ok(b) = std::fs::read(file) {
                out.extend(b.chunks(4096).map(<[u8]>::to_vec));
            }
        }
    }
    let _ = std::fs::remove_file(file);
    out
}

/// Streams bytes for half a second into a sink the destination opened,
/// after the sink's one-time token (see [`probe_sink`]): bytes/s, and
/// whether the sink was on this host's loopback.
async fn probe_link(agent: &Arc<Agent>, dest_uri: &str) -> Result<(u64, bool)> {
    let uri: tern_model::uri::ConnectUri = dest_uri
        .parse()
        .map_err(|e: tern_model::uri::UriError| AgentError::Invalid(e.to_string()))?;
    let dst = agent
        .peer_client(&uri)
        .map_err(|e| AgentError::Invalid(e.to_string()))?
        .with_timeout(Duration::from_secs(10));
    let reply: serde_json::Value = dst
        .call(&tern_api::Request::Migration(
            tern_api::MigrationRequest::ProbeSink {},
        ))
        .await
        .map_err(|e| AgentError::Failed(e.to_string()))?;
    let (host, port, token) = sink_reply(&reply)
        .ok_or_else(|| AgentError::Failed(format!("the destination's probe answered {reply}")))?;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| AgentError::Failed(format!("cannot reach the destination's probe: {e}")))?;
    // Asked now: once the sink has closed its end, the kernel no longer
    // knows the peer (ENOTCONN), and a loopback probe read as a remote
    // one sent the forecast to the copy-speed estimate.
    let loopback = s.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let failed = |e: std::io::Error| AgentError::Failed(format!("probe stream failed: {e}"));
    // An older destination sends no token and expects none.
    if let Some(t) = token {
        s.write_all(t.as_bytes()).await.map_err(failed)?;
    }
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_millis(500) {
        s.write_all(&buf).await.map_err(failed)?;
        sent += buf.len() as u64;
    }
    let _ = s.shutdown().await;
    Ok(((sent as f64 / t0.elapsed().as_secs_f64()) as u64, loopback))
}

/// `[host, port, token]` (or an older agent's `[host, port]`).
fn sink_reply(v: &serde_json::Value) -> Option<(String, u16, Option<String>)> {
    let a = v.as_array()?;
    let host = a.first()?.as_str()?.to_string();
    let port = u16::try_from(a.get(1)?.as_u64()?).ok()?;
    let token = a.get(2).and_then(|t| t.as_str()).map(str::to_string);
    Some((host, port, token))
}

/// How long a connection to the probe sink has to present the token.
const TOKEN_WAIT: Duration = Duration::from_secs(5);

/// Connections to the probe sink checked at once; more are closed.
const MAX_KNOCKING: usize = 32;

/// Destination side of the probe: on a migration port, read and discard
/// the one stream that starts with a fresh token (at most 30 s in all).
/// The token goes to the source only in this authenticated API's answer,
/// so a third party on the migration network can no longer feed the
/// estimate; each connection gets 5 s to present it, on its
/// own task, so silent connections do not hold up the real one.
pub async fn probe_sink(agent: &Arc<Agent>) -> Result<(String, u16, String)> {
    let mut listener = None;
    for p in agent.cfg.migration_ports.clone() {
        if let Ok(l) =
            tokio::net::TcpListener::bind((agent.migration_bind_address().as_str(), p)).await
        {
            listener = Some((l, p));
            break;
        }
    }
    let (l, port) = listener
        .ok_or_else(|| AgentError::Failed("no free migration port for the probe".into()))?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let want = token.clone().into_bytes();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), sink(l, want)).await;
    });
    Ok((agent.migration_address(), port, token))
}

/// Accepts until one connection presents `token`, then drains it.
async fn sink(l: tokio::net::TcpListener, token: Vec<u8>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_KNOCKING));
    let mut stream = loop {
        tokio::select! {
            Some(s) = rx.recv() => break s,
            accepted = l.accept() => {
                let Ok((mut s, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let (tx, token) = (tx.clone(), token.clone());
                tokio::spawn(async move {
                    let mut got = vec![0u8; token.len()];
                    let read = tokio::time::timeout(TOKEN_WAIT, s.read_exact(&mut got)).await;
                    drop(slot);
                    if matches!(read, Ok(Ok(_))) && got == token {
                        let _ = tx.send(s).await;
                    }
                });
            }
        }
    };
    drop(l);
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_figures_count_zeros_deltas_and_compression() {
        let zero = vec![0u8; 4096];
        let mut text = vec![b'a'; 4096];
        let before = vec![zero.clone(), text.clone(), text.clone(), zero.clone()];
        text[0] = b'b';
        let after = vec![zero.clone(), text.clone(), before[2].clone(), zero];
        let f = page_figures(&before, &after);
        assert_eq!(f.zero_fraction, 0.5);
        let d = f.delta_fraction.expect("one page changed");
        assert!((d - 1.0 / 4096.0).abs() < 1e-9);
        assert!(f.compress_ratio > 10.0);
        assert_eq!(page_figures(&before, &before).delta_fraction, None);
    }

    #[tokio::test]
    async fn the_sink_drains_only_the_stream_that_presents_its_token() {
        use tokio::net::TcpStream;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let token = b"0123456789abcdef0123456789abcdef".to_vec();
        let task = tokio::spawn(sink(l, token.clone()));
        // A silent connection does not hold it up; a wrong token is closed.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut wrong = TcpStream::connect(addr).await.unwrap();
        wrong.write_all(&[b'x'; 32]).await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(wrong.read(&mut b).await.unwrap_or(0), 0, "wrong token kept");
        // 8 MiB is more than the socket buffers hold: it goes through
        // only because the sink drains this stream; the sink ends at its end.
        let mut real = TcpStream::connect(addr).await.unwrap();
        real.write_all(&token).await.unwrap();
        real.write_all(&vec![0u8; 8 << 20]).await.unwrap();
        real.shutdown().await.unwrap();
        task.await.unwrap();
    }

    #[test]
    fn the_sink_reply_carries_a_token_or_comes_from_an_older_agent() {
        let v = serde_json::json!(["10.0.0.2", 49152, "abc"]);
        assert_eq!(
            sink_reply(&v),
            Some(("10.0.0.2".into(), 49152, Some("abc".into())))
        );
        let old = serde_json::json!(["10.0.0.2", 49152]);
        assert_eq!(sink_reply(&old), Some(("10.0.0.2".into(), 49152, None)));
        assert_eq!(sink_reply(&serde_json::json!(["h", 70000])), None);
    }
}
