//! Cluster verbs, answered by `tern-controller` (`--controller URL` or
//! TERN_CONTROLLER) on its REST resources (`/v1/...`,
//! [`tern_api::rest::ControllerApi`]), named and flagged as Cloudpods's
//! `climc`.

use crate::table::{kv, table};
use crate::{print_json, CliError, Result};
use clap::{Subcommand, ValueEnum};
use tern_api::cluster::{
    controller_client, HostStatus, JobRecord, JobState, MigrateRequestOptions,
};
use tern_api::rest::{AutoMigrateBody, ControllerApi, MigrateBody};

/// enable | disable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    Enable,
    /// Off.
    Disable,
}

/// Cluster verbs.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// List the cluster's hosts.
    HostList {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one host.
    HostShow {
        /// Host name.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List servers.
    ServerList {
        /// Also vCPUs, memory, disks and the last error.
        #[arg(long)]
        details: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one server.
    ServerShow {
        /// Server name.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Move a stopped server to another host (the scheduler picks it).
    ServerMigrate {
        /// Server name.
        id: String,
        /// Only this host.
        #[arg(long)]
        prefer_host: Option<String>,
        /// Start it on the destination.
        #[arg(long)]
        auto_start: bool,
        /// Restart a dead host's server elsewhere from shared storage.
        #[arg(long)]
        rescue_mode: bool,
        /// Copy local disks over TLS between the agents (agents need
        /// --pki-dir certificates; the controller's --migration-tls does
        /// this for every migration).
        #[arg(long)]
        enable_tls: bool,
        /// Wait for the job to end; fail if it fails.
        #[arg(long)]
        wait: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Move a running server to another host while it runs.
    ServerLiveMigrate {
        /// Server name.
        id: String,
        /// Only this host.
        #[arg(long)]
        prefer_host: Option<String>,
        /// Accept a host with another CPU model or microcode.
        #[arg(long)]
        skip_cpu_check: bool,
        /// Accept a host with another kernel.
        #[arg(long)]
        skip_kernel_check: bool,
        /// Encrypt the migration stream with QEMU's TLS (agents need --pki-dir certificates).
        #[arg(long)]
        enable_tls: bool,
        /// Finish quickly: switch to post-copy after the first pass.
        #[arg(long)]
        quickly_finish: bool,
        /// Bandwidth cap, MB/s.
        #[arg(long)]
        max_bandwidth_mb: Option<u64>,
        /// Keep the destination's guest if the migration fails (debugging).
        #[arg(long)]
        keep_dest_guest_on_failed: bool,
        /// Wait for the job to end; fail if it fails.
        #[arg(long)]
        wait: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running migration (job id or server name).
    MigrateCancel {
        /// Job id or server name.
        id: String,
    },
    /// List migration jobs, queued ones with why they wait.
    JobList {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Evacuate a host: live-migrate running servers, cold-migrate stopped ones.
    HostMaintenance {
        /// Host name.
        id: String,
        /// End the maintenance instead: the host takes new servers again.
        #[arg(long)]
        leave: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set whether a host's servers are restarted elsewhere when it dies.
    HostAutoMigrateOnHostDown {
        /// Host name.
        id: String,
        /// Restart servers elsewhere when the host dies.
        #[arg(
            long,
            value_enum,
            required_unless_present = "auto_migrate_on_host_shutdown"
        )]
        auto_migrate_on_host_down: Option<Switch>,
        /// Live-migrate running servers away when the host shuts down
        /// cleanly (needs the host-down policy too; the agent runs with
        /// `--on-stop auto` or `host-shutdown`).
        #[arg(long, value_enum)]
        auto_migrate_on_host_shutdown: Option<Switch>,
    },
}

/// The controller's API at `--controller` / TERN_CONTROLLER.
pub fn client(url: Option<&str>) -> Result<ControllerApi> {
    let url = url.ok_or_else(|| {
        CliError::Usage(
            "cluster verbs need a controller: pass --controller URL or set TERN_CONTROLLER".into(),
        )
    })?;
    Ok(ControllerApi::new(controller_client(url)?))
}

fn status(s: HostStatus) -> String {
    match s {
        HostStatus::Online => "online".into(),
        HostStatus::Lapsed { .. } => "lapsed".into(),
        HostStatus::Down { .. } => "down".into(),
    }
}

fn onoff(b: bool) -> String {
    if b { "enable" } else { "disable" }.into()
}

/// `migrate-forecast ID` against the controller.
pub async fn forecast(c: &ControllerApi, id: &str, json: bool) -> Result<()> {
    let rows = c.forecast(id, &MigrateBody::default()).await?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    let r: Vec<Vec<String>> = rows
        .iter()
        .map(|x| {
            vec![
                x.host.clone(),
                if x.ok { "yes" } else { "no" }.into(),
                x.detail.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["Host", "Qualifies", "Why"], &r));
    Ok(())
}

fn job_rows(jobs: &[JobRecord]) -> String {
    let r: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                serde_json::to_value(j.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                j.server.clone(),
                j.source.clone(),
                j.dest.clone().unwrap_or_else(|| "-".into()),
                serde_json::to_value(j.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                j.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["Id", "Kind", "Server", "Source", "Dest", "State", "Note"],
        &r,
    )
}

/// Queues a migration of `id`; with `wait`, follows its job to the end.
async fn submit(
    c: &ControllerApi,
    id: &str,
    live: bool,
    options: MigrateRequestOptions,
    wait: bool,
    json: bool,
) -> Result<()> {
    let body = MigrateBody {
        live: Some(live),
        options,
    };
    let mut j = c.migrate(id, &body).await?;
    if wait {
        j = c.wait_job(&j.id).await?;
    }
    if json {
        print_json(&j);
    } else {
        print!("{}", job_rows(std::slice::from_ref(&j)));
    }
    if wait && j.state != JobState::Succeeded {
        return Err(CliError::Usage(format!(
            "job {} ended {:?}: {}",
            j.id,
            j.state,
            j.note.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Runs a cluster verb.
pub async fn run(c: &ControllerApi, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::HostList { json } => {
            let hosts = c.hosts().await?;
            if json {
                print_json(&hosts);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.report.name.clone(),
                        status(h.status),
                        if h.maintenance { "yes" } else { "no" }.into(),
                        onoff(h.auto_migrate_on_host_down),
                        h.report.facts.cpu_model.clone(),
                        h.report.facts.kernel.clone(),
                        h.report.facts.qemu_version.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "Name",
                        "Status",
                        "Maintenance",
                        "Auto-migrate",
                        "CPU",
                        "Kernel",
                        "QEMU"
                    ],
                    &rows
                )
            );
        }
        ClusterCmd::HostShow { id, json } => {
            let h = c.host(&id).await?;
            if json {
                print_json(&h);
                return Ok(());
            }
            let f = &h.report.facts;
            let labels: Vec<String> = h
                .report
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let pools: Vec<String> = h
                .report
                .pools
                .iter()
                .map(|p| {
                    format!(
                        "{}{}",
                        p.def.name,
                        if p.def.shared { " (shared)" } else { "" }
                    )
                })
                .collect();
            print!(
                "{}",
                kv(&[
                    ("Name", h.report.name.clone()),
                    ("Status", status(h.status)),
                    ("API", h.report.api_uri.clone()),
                    (
                        "Maintenance",
                        if h.maintenance { "yes" } else { "no" }.into()
                    ),
                    (
                        "Auto-migrate on host down",
                        onoff(h.auto_migrate_on_host_down)
                    ),
                    (
                        "Auto-migrate on host shutdown",
                        onoff(h.auto_migrate_on_host_shutdown)
                    ),
                    ("CPU model", f.cpu_model.clone()),
                    ("Microcode", f.microcode.clone()),
                    ("CPUs", f.cpus.to_string()),
                    ("Memory", format!("{} MiB", f.memory_total_kib / 1024)),
                    ("Kernel", f.kernel.clone()),
                    ("Page size", f.page_size.to_string()),
                    ("QEMU", f.qemu_version.clone()),
                    ("Pools", pools.join(", ")),
                    ("Networks", h.report.networks.join(", ")),
                    ("Labels", labels.join(", ")),
                    ("Servers", h.report.domains.len().to_string()),
                ])
            );
        }
        ClusterCmd::ServerList { details, json } => {
            let servers = c.servers().await?;
            if json {
                print_json(&servers);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = servers
                .iter()
                .map(|s| {
                    let mut r = vec![s.domain.name.clone(), s.host.clone(), s.state.to_string()];
                    if details {
                        let disks: Vec<String> = s
                            .domain
                            .disks
                            .iter()
                            .map(|d| {
                                format!(
                                    "{}:{}{}",
                                    d.target,
                                    d.pool.as_deref().unwrap_or("-"),
                                    if d.shared { "(shared)" } else { "" }
                                )
                            })
                            .collect();
                        r.push(s.domain.vcpus.to_string());
                        r.push(s.domain.memory_mib.to_string());
                        r.push(disks.join(","));
                        r.push(s.error.clone().unwrap_or_default());
                    }
                    r
                })
                .collect();
            let headers: &[&str] = if details {
                &[
                    "Name",
                    "Host",
                    "State",
                    "vCPUs",
                    "Memory MiB",
                    "Disks",
                    "Error",
                ]
            } else {
                &["Name", "Host", "State"]
            };
            print!("{}", table(headers, &rows));
        }
        ClusterCmd::ServerShow { id, json } => {
            let s = c.server(&id).await?;
            if json {
                print_json(&s);
                return Ok(());
            }
            print!(
                "{}",
                kv(&[
                    ("Name", s.domain.name.clone()),
                    ("UUID", s.domain.uuid.clone()),
                    ("Host", s.host.clone()),
                    ("State", s.state.to_string()),
                    ("vCPUs", s.domain.vcpus.to_string()),
                    ("Memory", format!("{} MiB", s.domain.memory_mib)),
                    ("Error", s.error.clone().unwrap_or_default()),
                ])
            );
        }
        ClusterCmd::ServerMigrate {
            id,
            prefer_host,
            auto_start,
            rescue_mode,
            enable_tls,
            wait,
            json,
        } => {
            let opts = MigrateRequestOptions {
                prefer_host,
                auto_start,
                rescue_mode,
                enable_tls,
                ..Default::default()
            };
            submit(c, &id, false, opts, wait, json).await?;
        }
        ClusterCmd::ServerLiveMigrate {
            id,
            prefer_host,
            skip_cpu_check,
            skip_kernel_check,
            enable_tls,
            quickly_finish,
            max_bandwidth_mb,
            keep_dest_guest_on_failed,
            wait,
            json,
        } => {
            let opts = MigrateRequestOptions {
                prefer_host,
                skip_cpu_check,
                skip_kernel_check,
                enable_tls,
                quickly_finish,
                max_bandwidth_mb,
                keep_dest_guest_on_failed,
                ..Default::default()
            };
            submit(c, &id, true, opts, wait, json).await?;
        }
        ClusterCmd::MigrateCancel { id } => {
            let j = c.cancel(&id).await?;
            if j.state == JobState::Cancelled {
                println!("Job {} cancelled", j.id);
            } else {
                println!("Job {} is being cancelled", j.id);
            }
        }
        ClusterCmd::JobList { json } => {
            let jobs = c.jobs().await?;
            if json {
                print_json(&jobs);
            } else {
                print!("{}", job_rows(&jobs));
            }
        }
        ClusterCmd::HostMaintenance {
            id,
            leave: true,
            json,
        } => {
            let h = c.leave_maintenance(&id).await?;
            if json {
                print_json(&h);
            } else {
                println!("{}: out of maintenance", h.report.name);
            }
        }
        ClusterCmd::HostMaintenance { id, json, .. } => {
            let jobs = c.enter_maintenance(&id).await?;
            if json {
                print_json(&jobs);
            } else {
                print!("{}", job_rows(&jobs));
            }
        }
        ClusterCmd::HostAutoMigrateOnHostDown {
            id,
            auto_migrate_on_host_down,
            auto_migrate_on_host_shutdown,
        } => {
            let body = AutoMigrateBody {
                on_host_down: auto_migrate_on_host_down.map(|s| s == Switch::Enable),
                on_host_shutdown: auto_migrate_on_host_shutdown.map(|s| s == Switch::Enable),
            };
            let h = c.auto_migrate(&id, &body).await?;
            println!(
                "Host {}: auto-migrate on host down {}, on host shutdown {}",
                h.report.name,
                onoff(h.auto_migrate_on_host_down),
                onoff(h.auto_migrate_on_host_shutdown)
            );
        }
    }
    Ok(())
}
