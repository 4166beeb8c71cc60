//! The cluster-scale figures as pure functions (percentiles, rates, the
//! parsing of `/proc` and Prometheus text) and the markdown table that
//! prints them, one column per cluster size.

use std::time::Duration;

/// The `q`-th quantile (0..=1) of `samples` by the nearest-rank method:
/// the smallest sample at or above that fraction of them. `None` when
/// there are no samples.
pub fn percentile(samples: &mut [u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(samples[rank.clamp(1, n) - 1])
}

/// Events per second over `window`; 0 for an empty window.
pub fn rate(count: f64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        count / s
    }
}

/// CPU seconds (user + system) from the text of `/proc/PID/stat`, with
/// `ticks` clock ticks per second. The command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn cpu_seconds(stat: &str, ticks: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// A `Key:   N kB` line of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The sum of every sample of metric `name` (any labels) in Prometheus
/// text; `None` when the metric is absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

/// What one run (one store, one cluster size) measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Simulated hosts.
    pub hosts: usize,
    /// Servers they report in all.
    pub servers: usize,
    /// Issuing their certificates (in process, ECDSA P-256).
    pub certs: Duration,
    /// Hosts registered, and how long until the last one was.
    pub registered: usize,
    /// Time to register every host (or until the run gave up).
    pub register: Duration,
    /// Failed register calls (retried, as ternd does).
    pub register_failures: u64,
    /// Heartbeat round trips in the window, µs p50 and p99.
    pub hb_p50_us: Option<u32>,
    /// See `hb_p50_us`.
    pub hb_p99_us: Option<u32>,
    /// Heartbeats answered in the window, per second.
    pub hb_rate: f64,
    /// Heartbeats failed or answered "register again" in the window.
    pub hb_failures: u64,
    /// Controller CPU during the heartbeat window, seconds per second.
    pub cpu_per_s: f64,
    /// This benchmark's own CPU (the simulated agents' TLS and JSON) in
    /// the window, seconds per second: it competes with the controller.
    pub bench_cpu_per_s: f64,
    /// The etcd members' CPU in the window, all three together, seconds
    /// per second (`None` on the file store, which is the controller).
    pub store_cpu_per_s: Option<f64>,
    /// Controller CPU over the whole run, seconds.
    pub cpu_total: f64,
    /// Controller peak RSS, bytes.
    pub peak_rss: u64,
    /// Store writes per second in the window, and what was counted.
    pub writes_per_s: Option<f64>,
    /// Store writes per second while registering.
    pub register_writes_per_s: Option<f64>,
    /// Bytes the controller wrote to disk per second in the window.
    pub disk_bytes_per_s: Option<f64>,
    /// From the dead host's last answered heartbeat to the controller
    /// listing it down.
    pub down_after: Option<Duration>,
    /// From the victim's last answered heartbeat to the moment the
    /// controller's record says it declared the host down.
    pub declared_after: Option<Duration>,
    /// The controller's lease plus grace.
    pub lease_plus_grace: Duration,
    /// `server-list` (median of 3) and how many servers it returned.
    pub server_list: Option<Duration>,
    /// Servers in that list.
    pub listed: usize,
    /// `migrate-forecast` of one server (median of 3).
    pub forecast: Option<Duration>,
    /// Wall time of the whole run.
    pub wall: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

fn us(v: u32) -> String {
    format!("{:.1} ms", f64::from(v) / 1e3)
}

/// The table's rows: (label, one cell per run).
fn rows(runs: &[Figures]) -> Vec<(&'static str, Vec<String>)> {
    let col = |f: &dyn Fn(&Figures) -> String| runs.iter().map(f).collect::<Vec<_>>();
    vec![
        ("servers reported", col(&|r| r.servers.to_string())),
        ("issue host certificates", col(&|r| secs(r.certs))),
        (
            "register all hosts",
            col(&|r| match r.registered == r.hosts {
                true => secs(r.register),
                false => format!(
                    "{}/{} in {} (gave up)",
                    r.registered,
                    r.hosts,
                    secs(r.register)
                ),
            }),
        ),
        (
            "failed register calls",
            col(&|r| r.register_failures.to_string()),
        ),
        ("heartbeat p50", col(&|r| opt(r.hb_p50_us, us))),
        ("heartbeat p99", col(&|r| opt(r.hb_p99_us, us))),
        (
            "heartbeats answered /s",
            col(&|r| format!("{:.0}", r.hb_rate)),
        ),
        ("heartbeats failed", col(&|r| r.hb_failures.to_string())),
        (
            "controller CPU (heartbeats)",
            col(&|r| format!("{:.2} s/s", r.cpu_per_s)),
        ),
        (
            "simulated agents' CPU (heartbeats)",
            col(&|r| format!("{:.2} s/s", r.bench_cpu_per_s)),
        ),
        (
            "etcd members' CPU (heartbeats)",
            col(&|r| opt(r.store_cpu_per_s, |c| format!("{c:.2} s/s"))),
        ),
        (
            "controller CPU (whole run)",
            col(&|r| format!("{:.1} s", r.cpu_total)),
        ),
        (
            "controller peak RSS",
            col(&|r| format!("{:.0} MiB", r.peak_rss as f64 / 1048576.0)),
        ),
        (
            "store writes /s (heartbeats)",
            col(&|r| opt(r.writes_per_s, |v| format!("{v:.1}"))),
        ),
        (
            "store writes /s (registering)",
            col(&|r| opt(r.register_writes_per_s, |v| format!("{v:.1}"))),
        ),
        (
            "controller disk writes (heartbeats)",
            col(&|r| opt(r.disk_bytes_per_s, |v| format!("{:.1} MB/s", v / 1e6))),
        ),
        (
            "dead host listed down",
            col(&|r| {
                let lg = secs(r.lease_plus_grace);
                // To the hundredth: the target is the lease plus grace itself.
                let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
                opt(r.down_after, |d| format!("{} (lease+grace {lg})", s(d)))
            }),
        ),
        (
            "dead host declared down (the record's time)",
            col(&|r| opt(r.declared_after, |d| format!("{:.2} s", d.as_secs_f64()))),
        ),
        (
            "server-list",
            col(&|r| {
                opt(r.server_list, |d| {
                    format!("{} ({} servers)", ms(d), r.listed)
                })
            }),
        ),
        ("migrate-forecast", col(&|r| opt(r.forecast, ms))),
        ("run took", col(&|r| secs(r.wall))),
    ]
}

/// One markdown table for a store: a column per cluster size.
pub fn table(store: &str, runs: &[Figures]) -> String {
    let mut out = format!("| {store} |");
    for r in runs {
        out.push_str(&format!(" {} hosts |", r.hosts));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(runs.len()));
    out.push('\n');
    for (label, cells) in rows(runs) {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50));
        assert_eq!(percentile(&mut v, 0.99), Some(99));
        assert_eq!(percentile(&mut v, 1.0), Some(100));
        assert_eq!(percentile(&mut v, 0.0), Some(1));
        assert_eq!(percentile(&mut [7], 0.99), Some(7));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn rates() {
        assert_eq!(rate(50.0, Duration::from_secs(10)), 5.0);
        assert_eq!(rate(5.0, Duration::ZERO), 0.0);
    }

    #[test]
    fn proc_stat_and_status() {
        let stat = "4242 (tern (ctl) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds("garbage", 100.0), None);
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(2 << 20));
        assert_eq!(status_kib(status, "VmRSS"), Some(1 << 20));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn prometheus_sums() {
        let t = "# HELP etcd_mvcc_put_total x\netcd_mvcc_put_total 12\n\
                 etcd_mvcc_put_totally 5\n\
                 etcd_mvcc_txn_total{a=\"b\"} 3\netcd_mvcc_txn_total{a=\"c\"} 4\n";
        assert_eq!(metric_sum(t, "etcd_mvcc_put_total"), Some(12.0));
        assert_eq!(metric_sum(t, "etcd_mvcc_txn_total"), Some(7.0));
        assert_eq!(metric_sum(t, "etcd_mvcc_range_total"), None);
    }

    #[test]
    fn table_has_a_column_per_run() {
        let runs = [
            Figures {
                hosts: 100,
                registered: 100,
                ..Default::default()
            },
            Figures {
                hosts: 1000,
                registered: 10,
                ..Default::default()
            },
        ];
        let t = table("file store", &runs);
        assert!(t.starts_with("| file store | 100 hosts | 1000 hosts |\n|---|---:|---:|\n"));
        assert!(t.contains("10/1000 in 0.0 s (gave up)"), "{t}");
        assert!(t.lines().all(|l| l.matches('|').count() == 4), "{t}");
    }
}
