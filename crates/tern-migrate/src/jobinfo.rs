//! `domjobinfo`: virsh's job figures, read from QEMU's `query-migrate`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use tern_qemu::MigrationStatus;

/// virsh's "Job type".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// No job.
    #[default]
    None,
    /// Running, end unknown.
    Unbounded,
    /// Finished successfully.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// One snapshot of a migration job, in virsh's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct JobInfo {
    /// Job type.
    pub kind: JobKind,
    /// "Outgoing migration" or "Incoming migration".
    pub operation: String,
    /// Tern's phase name.
    pub phase: String,
    /// QEMU's migration status (setup, active, postcopy-active, completed...).
    pub qemu_status: MigrationStatus,
    /// Milliseconds since the job started.
    pub time_elapsed_ms: u64,
    /// Bytes transferred (memory and, later, disks).
    pub data_processed: u64,
    /// Bytes left.
    pub data_remaining: u64,
    /// Total bytes.
    pub data_total: u64,
    /// Memory bytes transferred.
    pub memory_processed: u64,
    /// Memory bytes left.
    pub memory_remaining: u64,
    /// Guest memory size.
    pub memory_total: u64,
    /// Disk bytes mirrored so far.
    pub disk_processed: u64,
    /// Disk bytes to mirror in all.
    pub disk_total: u64,
    /// Cold copy: bytes that crossed the wire.
    pub wire_bytes: u64,
    /// Disk copy rate, bytes/s (cold copies and mirrors).
    pub disk_rate: u64,
    /// Cold copy: bytes a resumed transfer did not send again.
    pub resumed_bytes: u64,
    /// Transfer rate, bytes/s.
    pub memory_bandwidth: u64,
    /// Pages dirtied per second times page size, bytes/s.
    pub dirty_rate: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Pre-copy iterations (dirty bitmap syncs).
    pub iteration: u64,
    /// Post-copy page requests.
    pub postcopy_requests: u64,
    /// Zero pages sent as one byte.
    pub constant_pages: u64,
    /// Pages sent in full.
    pub normal_pages: u64,
    /// Bytes of those pages.
    pub normal_data: u64,
    /// QEMU's expected downtime, ms.
    pub expected_downtime_ms: u64,
    /// Measured downtime once completed, ms.
    pub downtime_ms: Option<u64>,
    /// The guest's whole pause at the switch-over, ms: the source QEMU's
    /// STOP to the destination QEMU's RESUME, each on its host's clock
    /// (as close as the hosts' time keeping). QEMU's downtime ends when the
    /// source has sent the last byte; this also holds the destination
    /// taking in what was still on the wire and the `cont` that follows.
    pub guest_stopped_ms: Option<u64>,
    /// Setup time, ms.
    pub setup_time_ms: Option<u64>,
    /// xbzrle cache size, bytes.
    pub compression_cache: Option<u64>,
    /// xbzrle bytes sent.
    pub compressed_data: Option<u64>,
    /// xbzrle pages sent.
    pub compressed_pages: Option<u64>,
    /// xbzrle cache misses.
    pub compression_cache_misses: Option<u64>,
    /// xbzrle overflows.
    pub compression_overflows: Option<u64>,
    /// Auto-converge throttle, percent.
    pub auto_converge_throttle: Option<u64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// What went wrong after the destination took the guest over (its
    /// definition could not be stored, say): the migration still succeeded.
    pub warning: Option<String>,
    /// Steps the convergence policy took.
    pub policy_steps: u64,
    /// The policy's last step, with the figures behind it.
    pub policy_last: Option<String>,
    /// The downtime limit in force, ms.
    pub downtime_limit_ms: Option<u64>,
    /// The migration switched to post-copy.
    #[serde(default)]
    pub went_postcopy: bool,
    /// Tern's forecast of the time until QEMU completes, ms (pre-copy,
    /// from the run in hand: [`crate::forecast::Follower`]).
    #[serde(default)]
    pub forecast_remaining_ms: Option<u64>,
    /// Tern's forecast of the final pause, ms.
    #[serde(default)]
    pub forecast_downtime_ms: Option<u64>,
    /// The forecasts made during the run (one every
    /// [`crate::forecast::RECORD_EVERY_MS`]), to check against what
    /// followed (`tern-bench converge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forecast_updates: Vec<crate::forecast::ForecastUpdate>,
}

impl JobInfo {
    /// Percent done, as virsh's progress bar computes it.
    pub fn percent(&self) -> u64 {
        if self.kind == JobKind::Completed {
            return 100;
        }
        if self.data_total == 0 {
            return 0;
        }
        let done = self.data_total.saturating_sub(self.data_remaining);
        (done.saturating_mul(100) / self.data_total).min(99)
    }

    /// The pace a completed pre-copy migration achieved, the figure a later
    /// forecast on the same host may use for the link: effective bytes per
    /// second of QEMU's copying time (its total time less its set-up time
    /// and the downtime, which the forecast adds on its own: counted in
    /// the pace too, they made a short migration look slow, and the next
    /// forecast of an idle guest 25-50 % long), where a zero page counts
    /// [`ZERO_PAGE_COST`](crate::plan::ZERO_PAGE_COST) of a page, as the
    /// forecast counts the memory it divides by this pace. None when it
    /// says nothing about the link: a bandwidth cap, post-copy (the
    /// destination pulled pages at its own pace), or no figures.
    pub fn pace_sample(&self, capped: bool) -> Option<u64> {
        if capped
            || self.went_postcopy
            || self.kind != JobKind::Completed
            || self.time_elapsed_ms == 0
            || self.memory_processed == 0
        {
            return None;
        }
        let zero_cost = (self.constant_pages as f64
            * self.page_bytes() as f64
            * crate::plan::ZERO_PAGE_COST) as u64;
        let fixed = self.setup_time_ms.unwrap_or(0) + self.downtime_ms.unwrap_or(0);
        let copying = match self.time_elapsed_ms.saturating_sub(fixed) {
            0 => self.time_elapsed_ms,
            t => t,
        };
        Some((self.memory_processed + zero_cost) * 1000 / copying)
    }

    /// The guest's page size, 4 KiB until QEMU said.
    fn page_bytes(&self) -> u64 {
        if self.page_size == 0 {
            4096
        } else {
            self.page_size
        }
    }

    /// Records disk mirroring progress; data figures include it.
    pub fn set_disk(&mut self, processed: u64, total: u64) {
        self.disk_processed = processed;
        self.disk_total = total;
        self.refresh_data();
    }

    fn refresh_data(&mut self) {
        self.data_processed = self.memory_processed + self.disk_processed;
        self.data_total = self.memory_total + self.disk_total;
        self.data_remaining =
            self.memory_remaining + self.disk_total.saturating_sub(self.disk_processed);
    }

    /// Updates the figures from a `query-migrate` reply.
    pub fn update_from_qemu(&mut self, q: &Value) {
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let status = MigrationStatus::of_reply(q);
        if status.is_postcopy() {
            self.went_postcopy = true;
        }
        let ram = &q["ram"];
        if ram.is_object() {
            self.memory_processed = u(&ram["transferred"]);
            self.memory_remaining = u(&ram["remaining"]);
            self.memory_total = u(&ram["total"]);
            self.memory_bandwidth = (ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0) as u64;
            self.page_size = u(&ram["page-size"]).max(self.page_size);
            let ps = self.page_bytes();
            self.dirty_rate = u(&ram["dirty-pages-rate"]) * ps;
            self.iteration = u(&ram["dirty-sync-count"]);
            self.postcopy_requests = u(&ram["postcopy-requests"]);
            self.constant_pages = u(&ram["duplicate"]);
            self.normal_pages = u(&ram["normal"]);
            self.normal_data = u(&ram["normal-bytes"]);
            self.refresh_data();
        }
        if let Some(t) = q["total-time"].as_u64() {
            self.time_elapsed_ms = t;
        }
        if let Some(d) = q["expected-downtime"].as_u64() {
            self.expected_downtime_ms = d;
        }
        if let Some(d) = q["downtime"].as_u64() {
            self.downtime_ms = Some(d);
        }
        if let Some(d) = q["setup-time"].as_u64() {
            self.setup_time_ms = Some(d);
        }
        let x = &q["xbzrle-cache"];
        if x.is_object() {
            self.compression_cache = x["cache-size"].as_u64();
            self.compressed_data = x["bytes"].as_u64();
            self.compressed_pages = x["pages"].as_u64();
            self.compression_cache_misses = x["cache-miss"].as_u64();
            self.compression_overflows = x["overflow"].as_u64();
        }
        if let Some(t) = q["cpu-throttle-percentage"].as_u64() {
            self.auto_converge_throttle = Some(t);
        }
        if let Some(e) = q["error-desc"].as_str() {
            self.error = Some(e.to_string());
        }
        self.kind = match status {
            MigrationStatus::Completed => JobKind::Completed,
            MigrationStatus::Failed => JobKind::Failed,
            MigrationStatus::Cancelled => JobKind::Cancelled,
            MigrationStatus::None => self.kind,
            _ => JobKind::Unbounded,
        };
        self.qemu_status = status;
    }

    /// virsh-style `Key: value` lines.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, val: String| v.push((k.to_string(), val));
        let kind = match self.kind {
            JobKind::None => "None",
            JobKind::Unbounded => "Unbounded",
            JobKind::Completed => "Completed",
            JobKind::Failed => "Failed",
            JobKind::Cancelled => "Cancelled",
        };
        add("Job type", kind.into());
        if self.kind == JobKind::None {
            return v;
        }
        add("Operation", self.operation.clone());
        add("Phase", self.phase.clone());
        add("Time elapsed", format!("{} ms", self.time_elapsed_ms));
        add("Data processed", mib(self.data_processed));
        add("Data remaining", mib(self.data_remaining));
        add("Data total", mib(self.data_total));
        if self.disk_total > 0 {
            add("File processed", mib(self.disk_processed));
            add(
                "File remaining",
                mib(self.disk_total.saturating_sub(self.disk_processed)),
            );
            add("File total", mib(self.disk_total));
        }
        if self.wire_bytes > 0 || self.resumed_bytes > 0 {
            add("Bytes on the wire", mib(self.wire_bytes));
            add("Bytes resumed", mib(self.resumed_bytes));
        }
        add("Memory processed", mib(self.memory_processed));
        add("Memory remaining", mib(self.memory_remaining));
        add("Memory total", mib(self.memory_total));
        add(
            "Memory bandwidth",
            format!("{}/s", mib(self.memory_bandwidth)),
        );
        add(
            "Dirty rate",
            format!("{} pages/s", self.dirty_rate / self.page_size.max(1)),
        );
        add("Page size", format!("{} bytes", self.page_size));
        add("Iteration", self.iteration.to_string());
        add("Postcopy requests", self.postcopy_requests.to_string());
        add("Constant pages", self.constant_pages.to_string());
        add("Normal pages", self.normal_pages.to_string());
        add("Normal data", mib(self.normal_data));
        if let Some(d) = self.downtime_ms {
            add("Total downtime", format!("{d} ms"));
            if let Some(g) = self.guest_stopped_ms {
                add(
                    "Guest stopped",
                    format!("{g} ms (the source's STOP to the destination's RESUME)"),
                );
            }
        } else if let Some(f) = self.forecast_downtime_ms {
            add(
                "Expected downtime",
                format!(
                    "{f} ms (Tern's forecast; QEMU's estimate {} ms)",
                    self.expected_downtime_ms
                ),
            );
        } else {
            add(
                "Expected downtime",
                format!("{} ms", self.expected_downtime_ms),
            );
        }
        if let (Some(r), None) = (self.forecast_remaining_ms, self.downtime_ms) {
            add("Expected remaining", format!("{r} ms"));
        }
        if let Some(s) = self.setup_time_ms {
            add("Setup time", format!("{s} ms"));
        }
        if let Some(c) = self.compression_cache {
            add("Compression cache", mib(c));
            add("Compressed data", mib(self.compressed_data.unwrap_or(0)));
            add(
                "Compressed pages",
                self.compressed_pages.unwrap_or(0).to_string(),
            );
            add(
                "Compression cache misses",
                self.compression_cache_misses.unwrap_or(0).to_string(),
            );
            add(
                "Compression overflows",
                self.compression_overflows.unwrap_or(0).to_string(),
            );
        }
        if let Some(t) = self.auto_converge_throttle {
            add("Auto converge throttle", format!("{t}"));
        }
        if let Some(d) = self.downtime_limit_ms {
            add("Downtime limit", format!("{d} ms"));
        }
        if self.policy_steps > 0 {
            add("Policy steps", self.policy_steps.to_string());
        }
        if let Some(p) = &self.policy_last {
            add("Policy last step", p.clone());
        }
        if let Some(e) = &self.error {
            add("Error", e.clone());
        }
        v
    }
}

fn mib(b: u64) -> String {
    format!("{:.3} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The guest's pause at the switch-over, ms, from the source QEMU's STOP
/// and the destination QEMU's RESUME (µs on their hosts' clocks); `None`
/// when either is unknown or the clocks disagree so much that the resume
/// seems to come first.
pub fn guest_stopped_ms(stopped_us: Option<u64>, resumed_us: Option<u64>) -> Option<u64> {
    let (s, r) = (stopped_us?, resumed_us?);
    r.checked_sub(s).map(|us| us.div_ceil(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_guest_stopped_from_stop_to_resume_rounded_up() {
        assert_eq!(guest_stopped_ms(Some(1_000_000), Some(1_021_400)), Some(22));
        assert_eq!(guest_stopped_ms(Some(5), Some(5)), Some(0));
        assert_eq!(guest_stopped_ms(None, Some(5)), None);
        assert_eq!(guest_stopped_ms(Some(5), None), None);
        // Clocks that disagree by more than the pause: no figure.
        assert_eq!(guest_stopped_ms(Some(10_000), Some(9_000)), None);
    }

    #[test]
    fn pace_only_from_uncapped_precopy_migrations() {
        let mut i = JobInfo {
            kind: JobKind::Completed,
            time_elapsed_ms: 2000,
            memory_processed: 2 << 30,
            ..Default::default()
        };
        assert_eq!(i.pace_sample(false), Some(1 << 30));
        assert_eq!(i.pace_sample(true), None);
        // Zero pages cost a little, as in the forecast: 2^18 zero pages of
        // 4 KiB at 8 % add 80 MiB to the 2 GiB sent in the 2 s.
        let with_zeros = JobInfo {
            constant_pages: 1 << 18,
            page_size: 4096,
            ..i.clone()
        };
        let expect = ((2u64 << 30) + ((1u64 << 30) as f64 * 0.08) as u64) / 2;
        assert_eq!(with_zeros.pace_sample(false), Some(expect));
        // QEMU's set-up time and the downtime are not copying time: 2 GiB
        // in the 1.6 s between them.
        let with_fixed = JobInfo {
            setup_time_ms: Some(300),
            downtime_ms: Some(100),
            ..i.clone()
        };
        assert_eq!(
            with_fixed.pace_sample(false),
            Some((2u64 << 30) * 1000 / 1600)
        );
        i.update_from_qemu(&json!({"status": "postcopy-active"}));
        assert!(i.went_postcopy);
        i.kind = JobKind::Completed;
        assert_eq!(i.pace_sample(false), None);
        let failed = JobInfo {
            kind: JobKind::Failed,
            ..i
        };
        assert_eq!(failed.pace_sample(false), None);
    }

    #[test]
    fn the_guest_stopped_line_follows_qemu_s_downtime() {
        let mut j = JobInfo {
            kind: JobKind::Completed,
            downtime_ms: Some(12),
            ..Default::default()
        };
        let has = |j: &JobInfo| j.lines().iter().any(|(k, _)| k == "Guest stopped");
        assert!(!has(&j), "only when the two moments were seen");
        j.guest_stopped_ms = Some(31);
        let lines = j.lines();
        let at = |k: &str| lines.iter().position(|(l, _)| l == k).unwrap();
        assert_eq!(at("Guest stopped"), at("Total downtime") + 1);
        assert!(lines[at("Guest stopped")].1.starts_with("31 ms"));
    }

    #[test]
    fn reads_query_migrate_like_domjobinfo() {
        let q = json!({
            "status": "active", "total-time": 1200, "expected-downtime": 40,
            "setup-time": 3,
            "ram": {"transferred": 100u64<<20, "remaining": 156u64<<20, "total": 256u64<<20,
                    "mbps": 838.8608, "dirty-pages-rate": 256, "page-size": 4096,
                    "dirty-sync-count": 2, "duplicate": 10, "normal": 20, "normal-bytes": 81920,
                    "postcopy-requests": 0},
            "xbzrle-cache": {"cache-size": 67108864, "bytes": 1, "pages": 2, "cache-miss": 3, "overflow": 4},
            "cpu-throttle-percentage": 20
        });
        let mut j = JobInfo::default();
        j.update_from_qemu(&q);
        assert_eq!(j.kind, JobKind::Unbounded);
        assert_eq!(j.memory_total, 256 << 20);
        assert_eq!(j.memory_bandwidth, 104_857_600);
        assert_eq!(j.dirty_rate, 1 << 20);
        assert_eq!(j.iteration, 2);
        assert_eq!(j.percent(), 39);
        assert_eq!(j.auto_converge_throttle, Some(20));
        assert_eq!(j.compression_cache, Some(64 << 20));
        let keys: Vec<String> = j.lines().into_iter().map(|(k, _)| k).collect();
        for k in [
            "Job type",
            "Memory bandwidth",
            "Dirty rate",
            "Iteration",
            "Expected downtime",
            "Compression cache",
            "Auto converge throttle",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k}");
        }
        j.forecast_remaining_ms = Some(800);
        j.forecast_downtime_ms = Some(25);
        let lines = j.lines();
        let get = |k: &str| lines.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("Expected remaining").as_deref(), Some("800 ms"));
        assert!(get("Expected downtime")
            .unwrap()
            .starts_with("25 ms (Tern's forecast"));
        j.update_from_qemu(&json!({"status": "completed", "downtime": 12, "total-time": 1500}));
        assert_eq!(j.kind, JobKind::Completed);
        assert_eq!(j.downtime_ms, Some(12));
        assert_eq!(j.percent(), 100);
    }
}

/// Something that happened during a migration: a phase change, an
/// iteration, a decision, an error. Kept in order with a wall-clock stamp so
/// the CLI and the controller can follow a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Phase when it happened.
    pub phase: String,
    /// What happened, one line.
    pub message: String,
}
