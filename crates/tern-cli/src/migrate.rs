//! `tern migrate` and the job verbs (`domjobinfo`, `domjobabort`, ...).

use crate::args::Cmd;
use crate::forecast_view::forecast;
use crate::table::kv;
use crate::{print_json, read_file, CliError, Result};
use clap::Args;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tern_api::{Client, MigrationRequest, Request};
use tern_migrate::{JobEvent, JobInfo, JobKind, MigrateOptions, TimeoutAction};

/// `tern migrate [flags] DOMAIN DESTURI` — flags as in virsh.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Domain name or uuid.
    pub domain: String,
    /// Destination connection URI (as seen from the client; with --p2p, as
    /// seen from the source host).
    pub desturi: String,
    /// Live migration: memory is copied while the guest runs.
    #[arg(long)]
    pub live: bool,
    /// Move the definition only.
    #[arg(long)]
    pub offline: bool,
    /// Peer-to-peer: the source agent drives the migration.
    #[arg(long)]
    pub p2p: bool,
    /// Carry QEMU's connections (memory, every --parallel channel, disk
    /// mirrors) through the agents' mutual-TLS link (needs --p2p).
    #[arg(long)]
    pub tunnelled: bool,
    /// Encrypt the native transport with QEMU's own TLS, using each host's
    /// certificates from its --pki-dir.
    #[arg(long)]
    pub tls: bool,
    /// Direct migration (not supported by QEMU hosts, as in virsh).
    #[arg(long)]
    pub direct: bool,
    /// Store the definition on the destination.
    #[arg(long)]
    pub persistent: bool,
    /// Remove the definition from the source.
    #[arg(long)]
    pub undefinesource: bool,
    /// Leave the guest paused on the destination.
    #[arg(long)]
    pub suspend: bool,
    /// New name on the destination.
    #[arg(long)]
    pub dname: Option<String>,
    /// Definition to use on the destination (same guest hardware).
    #[arg(long)]
    pub xml: Option<std::path::PathBuf>,
    /// Refuse changes to the domain while it migrates (always on in Tern).
    #[arg(long)]
    pub change_protection: bool,
    /// Skip the shared-storage and cache-mode safety checks.
    #[arg(long = "unsafe")]
    pub unsafe_: bool,
    /// Show a progress bar.
    #[arg(long)]
    pub verbose: bool,
    /// Compress repeated pages (xbzrle).
    #[arg(long)]
    pub compressed: bool,
    /// xbzrle cache size, e.g. 256M.
    #[arg(long)]
    pub comp_xbzrle_cache: Option<String>,
    /// Throttle the guest's vCPUs when it dirties memory too fast.
    #[arg(long)]
    pub auto_converge: bool,
    /// Initial throttle, percent.
    #[arg(long)]
    pub auto_converge_initial: Option<u8>,
    /// Throttle increment, percent.
    #[arg(long)]
    pub auto_converge_increment: Option<u8>,
    /// Several connections at once (multifd).
    #[arg(long)]
    pub parallel: bool,
    /// Number of connections with --parallel.
    #[arg(long)]
    pub parallel_connections: Option<u32>,
    /// Compression with --parallel: none, zlib, zstd.
    #[arg(long)]
    pub parallel_compression: Option<String>,
    /// Allow switching to post-copy.
    #[arg(long)]
    pub postcopy: bool,
    /// Switch to post-copy after the first pre-copy pass.
    #[arg(long)]
    pub postcopy_after_precopy: bool,
    /// Bandwidth cap once in post-copy, MiB/s (default: unlimited). QEMU's
    /// rate limit also delays the pages the guest faults on: expect
    /// pauses of a second at 100 MiB/s.
    #[arg(long)]
    pub postcopy_bandwidth: Option<u64>,
    /// Resume a post-copy migration that a broken link or
    /// 'domjobabort --postcopy' paused, then follow it to its end.
    #[arg(long)]
    pub postcopy_resume: bool,
    /// Bandwidth limit, MiB/s (default: unlimited).
    #[arg(long)]
    pub bandwidth: Option<u64>,
    /// Maximum downtime, ms (default 300).
    #[arg(long)]
    pub max_downtime: Option<u64>,
    /// Seconds before the timeout action.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// On timeout, pause the guest to finish (default).
    #[arg(long)]
    pub timeout_suspend: bool,
    /// On timeout, switch to post-copy.
    #[arg(long)]
    pub timeout_postcopy: bool,
    /// Abort on disk I/O errors.
    #[arg(long)]
    pub abort_on_error: bool,
    /// Where QEMU sends memory: tcp://ADDRESS[:PORT].
    #[arg(long)]
    pub migrateuri: Option<String>,
    /// Address the destination QEMU listens on.
    #[arg(long)]
    pub listen_address: Option<String>,
    /// Keep the destination's paused QEMU after a failure (debugging).
    #[arg(long)]
    pub keep_dest_on_failure: bool,
    /// Copy every local disk along (live: mirrored; offline: a cold copy).
    #[arg(long)]
    pub copy_storage_all: bool,
    /// Copy only the top image of each disk; the backing chain must already
    /// be on the destination.
    #[arg(long)]
    pub copy_storage_inc: bool,
    /// Only these disks are copied (comma-separated targets, e.g. vda,vdb);
    /// the others must be on shared storage.
    #[arg(long, value_delimiter = ',')]
    pub migrate_disks: Vec<String>,
    /// Mirror disks actively (each guest write waits for the destination),
    /// for guests that write faster than the link.
    #[arg(long)]
    pub copy_storage_synchronous_writes: bool,
    /// Pool on the destination for copied disks (default: same name as the source's).
    #[arg(long)]
    pub target_pool: Option<String>,
    /// The convergence policy finishes the migration within this many
    /// seconds (default 300): longer downtime up to --max-downtime (default
    /// 1000 ms under the policy), CPU throttling, post-copy if allowed, and
    /// at last a pause to finish.
    #[arg(long)]
    pub deadline: Option<u64>,
    /// Turn the convergence policy off: QEMU does only what the flags say.
    #[arg(long)]
    pub no_policy: bool,
    /// Forecast total time and downtime, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Cold migration of a shut-off guest: its definition and every disk
    /// (with backing chains) move with Tern's transfer engine.
    #[arg(long)]
    pub cold: bool,
    /// Start the guest on the destination after a cold migration.
    #[arg(long)]
    pub auto_start: bool,
    /// Delete the source disks once the destination verified its copies.
    #[arg(long)]
    pub delete_source_storage: bool,
}

impl MigrateArgs {
    fn options(&self) -> Result<MigrateOptions> {
        if self.direct {
            return Err(CliError::Usage(
                "direct migration is not supported by QEMU hosts (as in virsh); drop --direct, or use --p2p".into(),
            ));
        }
        if self.timeout_suspend && self.timeout_postcopy {
            return Err(CliError::Usage(
                "--timeout-suspend and --timeout-postcopy cannot be used together".into(),
            ));
        }
        if (self.timeout_suspend || self.timeout_postcopy) && self.timeout.is_none() {
            return Err(CliError::Usage(
                "--timeout-suspend/--timeout-postcopy need --timeout".into(),
            ));
        }
        let xbzrle_cache = match &self.comp_xbzrle_cache {
            Some(s) => Some(tern_qemu::img::parse_size(s).ok_or_else(|| {
                CliError::Usage(format!(
                    "invalid size '{s}' for --comp-xbzrle-cache; use e.g. 256M"
                ))
            })?),
            None => None,
        };
        let xml = match &self.xml {
            Some(p) => Some(read_file(p)?),
            None => None,
        };
        let o = MigrateOptions {
            live: self.live,
            offline: self.offline,
            p2p: self.p2p,
            persistent: self.persistent,
            undefine_source: self.undefinesource,
            suspend: self.suspend,
            dname: self.dname.clone(),
            xml,
            change_protection: self.change_protection,
            unsafe_: self.unsafe_,
            compressed: self.compressed,
            xbzrle_cache,
            auto_converge: self.auto_converge,
            auto_converge_initial: self.auto_converge_initial,
            auto_converge_increment: self.auto_converge_increment,
            parallel: self.parallel,
            parallel_connections: self.parallel_connections,
            parallel_compression: self.parallel_compression.clone(),
            postcopy: self.postcopy,
            postcopy_after_precopy: self.postcopy_after_precopy,
            postcopy_bandwidth_mib: self.postcopy_bandwidth,
            bandwidth_mib: self.bandwidth,
            max_downtime_ms: self.max_downtime,
            timeout_s: self.timeout,
            timeout_action: if self.timeout_postcopy {
                TimeoutAction::Postcopy
            } else {
                TimeoutAction::Suspend
            },
            abort_on_error: self.abort_on_error,
            migrate_uri: self.migrateuri.clone(),
            listen_address: self.listen_address.clone(),
            keep_dest_on_failure: self.keep_dest_on_failure,
            copy_storage_all: self.copy_storage_all,
            copy_storage_inc: self.copy_storage_inc,
            migrate_disks: self.migrate_disks.clone(),
            copy_storage_synchronous_writes: self.copy_storage_synchronous_writes,
            target_pool: self.target_pool.clone(),
            deadline_s: self.deadline,
            no_policy: self.no_policy,
            // `--offline --copy-storage-all` is a cold migration, as virsh users expect.
            cold: self.cold || (self.offline && self.copy_storage_all),
            auto_start: self.auto_start,
            delete_source_storage: self.delete_source_storage,
            tunnelled: self.tunnelled,
            tls: self.tls,
            no_throttle: false,
            start_plan: None,
            postcopy_preempt: false,
            dest_machines: None,
        };
        let mut o = o;
        if o.cold {
            o.offline = false;
            o.copy_storage_all = false;
            o.persistent = true;
        }
        o.validate().map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(o)
    }
}

/// Draws virsh's "Migration: [ 45 %]" with Tern's extra figures.
struct Progress {
    tty: bool,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn show(&mut self, i: &JobInfo) {
        if !self.enabled || i.data_total == 0 {
            return;
        }
        if !self.tty
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last = Some(Instant::now());
        let disk = if i.disk_total > 0 {
            format!(
                "  disks {:.1}/{:.1} MiB at {:.1} MiB/s",
                i.disk_processed as f64 / 1048576.0,
                i.disk_total as f64 / 1048576.0,
                i.disk_rate as f64 / 1048576.0
            )
        } else {
            String::new()
        };
        let line = format!(
            "Migration: [{:>3} %]{disk}  memory {:.1}/{:.1} MiB  {:.1} MiB/s  dirty {:.1} MiB/s  iteration {}{}",
            i.percent(),
            (i.memory_total - i.memory_remaining.min(i.memory_total)) as f64 / 1048576.0,
            i.memory_total as f64 / 1048576.0,
            i.memory_bandwidth as f64 / 1048576.0,
            i.dirty_rate as f64 / 1048576.0,
            i.iteration,
            i.auto_converge_throttle
                .map(|t| format!("  throttle {t}%"))
                .unwrap_or_default(),
        );
        let mut out = std::io::stdout();
        if self.tty {
            let _ = write!(out, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    fn done(&mut self) {
        if self.enabled {
            let mut out = std::io::stdout();
            if self.tty {
                let _ = writeln!(out, "\rMigration: [100 %]\x1b[K");
            } else {
                let _ = writeln!(out, "Migration: [100 %]");
            }
        }
    }
}

fn summary(domain: &str, dest: &str, i: &JobInfo, wall: Duration) -> String {
    // QEMU's downtime ends when the source has sent everything; the guest
    // runs again only once the destination has it all and resumed.
    let stopped = i
        .guest_stopped_ms
        .map_or(String::new(), |g| format!(" (guest stopped {g} ms)"));
    format!(
        "Migrated '{domain}' to {dest} in {:.2} s: downtime {} ms{stopped}, {:.1} MiB sent, {} iterations",
        wall.as_secs_f64(),
        i.downtime_ms.unwrap_or(0),
        i.memory_processed as f64 / 1048576.0,
        i.iteration
    )
}

async fn migrate(src: &Client, a: &MigrateArgs) -> Result<()> {
    let o = a.options()?;
    if a.dry_run {
        return forecast(src, &a.domain, Some(&a.desturi), &o, false).await;
    }
    let mut progress = Progress {
        tty: std::io::stdout().is_terminal(),
        last: None,
        enabled: a.verbose,
    };
    let t0 = Instant::now();
    if a.postcopy_resume {
        let _: Value = src
            .call(&Request::Migration(
                MigrationRequest::MigratePostcopyResume {
                    name: a.domain.clone(),
                },
            ))
            .await?;
        return follow(src, a, &mut progress, t0).await;
    }
    // Every flow is run by the source agent (managed or `--p2p`: the
    // difference is only whose view of the destination URI it is); this
    // command follows the job, and Ctrl-C aborts it.
    let dest_uri = if a.p2p {
        a.desturi.clone()
    } else {
        // The URI as this client gave it, without its own credentials:
        // the source reaches the destination with its host certificate.
        let u: tern_model::uri::ConnectUri = a
            .desturi
            .parse()
            .map_err(|e: tern_model::uri::UriError| CliError::Usage(e.to_string()))?;
        tern_api::peer::for_source(&u)
            .map_err(CliError::Usage)?
            .to_string()
    };
    let _: Value = src
        .call(&Request::Migration(MigrationRequest::MigrateP2p {
            name: a.domain.clone(),
            dest_uri,
            options: o.clone(),
            id: None,
        }))
        .await?;
    follow(src, a, &mut progress, t0).await
}

/// The last line of a successful migration, as virsh prints it.
fn done_line(a: &MigrateArgs, o: &MigrateOptions, fin: &JobInfo, wall: Duration) -> String {
    if o.cold {
        format!(
            "Migrated '{}' (shut off) to {} in {:.2} s: {:.1} MiB of disk data, {:.1} MiB on the wire, {:.1} MiB resumed",
            a.domain,
            a.desturi,
            wall.as_secs_f64(),
            fin.disk_total as f64 / 1048576.0,
            fin.wire_bytes as f64 / 1048576.0,
            fin.resumed_bytes as f64 / 1048576.0
        )
    } else if o.offline {
        format!("Domain '{}' definition migrated to {}", a.domain, a.desturi)
    } else {
        summary(&a.domain, &a.desturi, fin, wall)
    }
}

/// Follows the source agent's job to its end (`--p2p`, `--postcopy-resume`):
/// the migration goes on if we are killed, and Ctrl-C aborts it, as virsh
/// does.
async fn follow(src: &Client, a: &MigrateArgs, progress: &mut Progress, t0: Instant) -> Result<()> {
    // Follow the agent's job; the migration goes on if we are killed,
    // and Ctrl-C aborts it, as virsh does.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _watcher = abort_on_ctrl_c(src.clone(), a.domain.clone(), cancel);
    // Long polls: the agent answers as soon as the job changes or ends
    // (a look every 200 ms made the command return up to 200 ms after the
    // guest ran on the destination), and at least every 500 ms, for the
    // progress bar.
    let how = tern_api::settle::Follow {
        wait: Duration::from_millis(500),
        pause: Duration::ZERO,
        retries: 0,
    };
    let fin = tern_api::settle::follow_job(src, &a.domain, how, |cur| progress.show(cur)).await?;
    if fin.phase == "completed" {
        progress.done();
        if let Some(w) = &fin.warning {
            eprintln!("warning: {w}");
        }
        let o = a.options()?;
        println!("{}", done_line(a, &o, &fin, t0.elapsed()));
        return Ok(());
    }
    Err(CliError::Migrate(fin.error.unwrap_or_else(|| {
        format!("migration ended in phase {}", fin.phase)
    })))
}

/// Ctrl-C on `tern migrate` aborts the migration, as in virsh: the first
/// one asks the source to abort its job (before Perform, its run rolls
/// back instead); a second one leaves at once, and the agents
/// settle the migration by themselves (their orphan timers).
fn abort_on_ctrl_c(
    src: Client,
    domain: String,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("\ninterrupted: aborting the migration (Ctrl-C again to leave it to the agents)");
        match src
            .call::<Value>(&Request::Migration(MigrationRequest::JobAbort {
                name: domain,
                postcopy: false,
            }))
            .await
        {
            Ok(_) => {}
            Err(e) => eprintln!("abort: {e}"),
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("left the migration to the agents; 'tern domjobinfo' shows how it ends");
            std::process::exit(130);
        }
    })
}

fn job(req: MigrationRequest) -> Request {
    Request::Migration(req)
}

pub(crate) async fn run(c: &Client, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Migrate(a) => migrate(c, &a).await?,
        Cmd::Domjobinfo {
            domain,
            completed,
            json,
        } => {
            let i: JobInfo = c
                .call(&job(MigrationRequest::JobInfo {
                    name: domain,
                    completed,
                    wait_ms: 0,
                }))
                .await?;
            if json {
                print_json(&i);
            } else {
                let lines = i.lines();
                let pairs: Vec<(&str, String)> =
                    lines.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                print!("{}", kv(&pairs));
            }
        }
        Cmd::Domjobevents {
            domain,
            follow,
            json,
        } => {
            let mut since = 0;
            loop {
                let ev: Vec<JobEvent> = c
                    .call(&job(MigrationRequest::JobEvents {
                        name: domain.clone(),
                        since,
                    }))
                    .await?;
                since += ev.len();
                for e in &ev {
                    if json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!("{}  [{}]  {}", fmt_ms(e.at_ms), e.phase, e.message);
                    }
                }
                if !follow {
                    break;
                }
                let cur: JobInfo = c
                    .call(&job(MigrationRequest::JobInfo {
                        name: domain.clone(),
                        completed: false,
                        wait_ms: 0,
                    }))
                    .await?;
                if cur.kind == JobKind::None && ev.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Cmd::Domjobabort { domain, postcopy } => {
            let _: Value = c
                .call(&job(MigrationRequest::JobAbort {
                    name: domain,
                    postcopy,
                }))
                .await?;
        }
        Cmd::MigrateSetspeed { domain, bandwidth } => {
            let _: Value = c
                .call(&job(MigrationRequest::MigrateSetSpeed {
                    name: domain,
                    bandwidth_mib: bandwidth,
                }))
                .await?;
        }
        Cmd::MigrateGetspeed { domain } => {
            let v: u64 = c
                .call(&job(MigrationRequest::MigrateGetSpeed { name: domain }))
                .await?;
            println!("{v}");
        }
        Cmd::MigrateSetmaxdowntime { domain, downtime } => {
            let _: Value = c
                .call(&job(MigrationRequest::MigrateSetMaxDowntime {
                    name: domain,
                    downtime_ms: downtime,
                }))
                .await?;
        }
        Cmd::MigrateGetmaxdowntime { domain } => {
            let v: u64 = c
                .call(&job(MigrationRequest::MigrateGetMaxDowntime {
                    name: domain,
                }))
                .await?;
            println!("{v}");
        }
        Cmd::MigrateCompcache { domain, size } => {
            let size = match size {
                Some(s) => Some(tern_qemu::img::parse_size(&s).ok_or_else(|| {
                    CliError::Usage(format!("invalid size '{s}'; use e.g. 256M"))
                })?),
                None => None,
            };
            let v: u64 = c
                .call(&job(MigrationRequest::MigrateCompCache {
                    name: domain,
                    size,
                }))
                .await?;
            println!("Compression cache: {:.3} MiB", v as f64 / 1048576.0);
        }
        Cmd::MigrateForecast {
            domain,
            desturi,
            bandwidth,
            max_downtime,
            postcopy,
            postcopy_bandwidth,
            deadline,
            json,
        } => {
            let o = MigrateOptions {
                live: true,
                bandwidth_mib: bandwidth,
                max_downtime_ms: max_downtime,
                postcopy,
                postcopy_bandwidth_mib: postcopy_bandwidth,
                deadline_s: deadline,
                ..Default::default()
            };
            forecast(c, &domain, desturi.as_deref(), &o, json).await?;
        }
        Cmd::MigratePostcopy { domain } => {
            let _: Value = c
                .call(&job(MigrationRequest::MigratePostcopy { name: domain }))
                .await?;
        }
        other => {
            return Err(CliError::Usage(format!(
                "{other:?} is not a migration verb"
            )))
        }
    }
    Ok(())
}

fn fmt_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}
