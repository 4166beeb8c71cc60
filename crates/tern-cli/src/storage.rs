//! Host, pool and volume verbs.

use crate::args::Cmd;
use crate::table::{human, kv, table};
use crate::{print_json, CliError, Result};
use serde_json::Value;
use std::path::PathBuf;
use tern_api::{Client, Request};
use tern_model::{HostFacts, PoolInfo, VolumeInfo};

pub(crate) async fn run(c: &Client, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Nodeinfo { json } => {
            let f: HostFacts = c.call(&Request::NodeInfo).await?;
            if json {
                print_json(&f);
            } else {
                print!(
                    "{}",
                    kv(&[
                        ("CPU model", f.arch.clone()),
                        ("CPU model name", f.cpu_model.clone()),
                        ("Microcode", f.microcode.clone()),
                        ("CPU(s)", f.cpus.to_string()),
                        ("CPU frequency", format!("{} MHz", f.mhz)),
                        ("CPU socket(s)", f.sockets.to_string()),
                        ("Core(s) per socket", f.cores_per_socket.to_string()),
                        ("Thread(s) per core", f.threads_per_core.to_string()),
                        ("Memory size", format!("{} KiB", f.memory_total_kib)),
                        ("Memory free", format!("{} KiB", f.memory_free_kib)),
                        ("Page size", format!("{} bytes", f.page_size)),
                        ("Kernel", f.kernel.clone()),
                        ("QEMU", f.qemu_version.clone()),
                        ("Accelerator", f.accelerator.clone()),
                        ("CPU flags", f.cpu_flags.join(" ")),
                    ])
                );
            }
        }
        Cmd::PoolDefineAs {
            name,
            pool_type,
            type_flag,
            target,
            shared,
            source_host,
            source_path,
            access,
            source_port,
            source_name,
            auth_type,
            auth_username,
            secret_usage,
            secret_uuid,
            source_dev,
            ..
        } => {
            let kind = pool_type.as_deref().or(type_flag.as_deref());
            if kind == Some("logical") {
                if source_host.is_some() || source_path.is_some() || access.is_some() {
                    return Err(CliError::Usage(
                        "a logical pool takes --source-name VG, --source-dev DEVICE and --target /dev/VG only".into(),
                    ));
                }
                // As libvirt: the volume group is named after the pool
                // unless --source-name says otherwise.
                let vg = source_name.unwrap_or_else(|| name.clone());
                let _: Value = c
                    .call(&Request::PoolDefineAs {
                        name: name.clone(),
                        target: target.unwrap_or_default(),
                        shared,
                        netfs: None,
                        rbd: None,
                        logical: Some(tern_model::LogicalSource {
                            vg,
                            devices: source_dev,
                        }),
                    })
                    .await?;
                println!("Pool {name} defined");
                return Ok(());
            }
            if !source_dev.is_empty() {
                return Err(CliError::Usage(
                    "--source-dev applies to logical pools only; give --type logical or drop it"
                        .into(),
                ));
            }
            let flags = crate::rbd_args::RbdFlags {
                host: source_host.clone(),
                port: source_port,
                name: source_name,
                auth_type,
                username: auth_username,
                secret_usage,
                secret_uuid,
            };
            if kind == Some("rbd") {
                if target.is_some() || source_path.is_some() || access.is_some() {
                    return Err(CliError::Usage(
                        "an rbd pool has no --target, --source-path or --access; give --source-host and --source-name".into(),
                    ));
                }
                let rbd = crate::rbd_args::rbd_source(flags)?;
                let _: Value = c
                    .call(&Request::PoolDefineAs {
                        name: name.clone(),
                        target: PathBuf::new(),
                        shared: true,
                        netfs: None,
                        rbd: Some(rbd),
                        logical: None,
                    })
                    .await?;
                println!("Pool {name} defined");
                return Ok(());
            }
            if flags.any() {
                return Err(CliError::Usage(
                    "--source-name, --source-port, --auth-* and --secret-* apply to rbd pools only; give --type rbd or drop them".into(),
                ));
            }
            let target = target.ok_or_else(|| {
                CliError::Usage(
                    "--target PATH is missing; dir and netfs pools need a directory".into(),
                )
            })?;
            let netfs = crate::netfs_args::netfs_source(
                pool_type.as_deref(),
                type_flag.as_deref(),
                source_host,
                source_path,
                access.as_deref(),
            )?;
            let _: Value = c
                .call(&Request::PoolDefineAs {
                    name: name.clone(),
                    target,
                    shared,
                    netfs,
                    rbd: None,
                    logical: None,
                })
                .await?;
            println!("Pool {name} defined");
        }
        Cmd::PoolBuild { pool } => {
            let _: Value = c.call(&Request::PoolBuild { name: pool.clone() }).await?;
            println!("Pool {pool} built");
        }
        Cmd::PoolStart { pool } => {
            let _: Value = c.call(&Request::PoolStart { name: pool.clone() }).await?;
            println!("Pool {pool} started");
        }
        Cmd::PoolAutostart { pool, disable } => {
            let _: Value = c
                .call(&Request::PoolAutostart {
                    name: pool.clone(),
                    disable,
                })
                .await?;
            if disable {
                println!("Pool {pool} unmarked as autostarted");
            } else {
                println!("Pool {pool} marked as autostarted");
            }
        }
        Cmd::PoolList { all, details, json } => {
            let pools: Vec<PoolInfo> = c.call(&Request::PoolList { all }).await?;
            if json {
                print_json(&pools);
                return Ok(());
            }
            let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
            let state = |p: &PoolInfo| if p.active { "active" } else { "inactive" }.to_string();
            if details {
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.def.name.clone(),
                            state(p),
                            yn(p.def.autostart),
                            yn(p.def.shared),
                            human(p.capacity),
                            human(p.allocation),
                            human(p.available),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "Name",
                            "State",
                            "Autostart",
                            "Shared",
                            "Capacity",
                            "Allocation",
                            "Available"
                        ],
                        &rows
                    )
                );
            } else {
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|p| vec![p.def.name.clone(), state(p), yn(p.def.autostart)])
                    .collect();
                print!("{}", table(&["Name", "State", "Autostart"], &rows));
            }
        }
        Cmd::PoolInfo { pool, json } => {
            let p: PoolInfo = c.call(&Request::PoolInfo { name: pool }).await?;
            if json {
                print_json(&p);
            } else {
                let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
                print!(
                    "{}",
                    kv(&[
                        ("Name", p.def.name.clone()),
                        ("Type", p.def.kind.as_str().into()),
                        ("Target", p.def.target.display().to_string()),
                        (
                            "Source",
                            p.def
                                .source
                                .as_ref()
                                .map(|s| format!("{}:{}", s.host, s.path))
                                .or_else(|| crate::rbd_args::source_text(&p))
                                .unwrap_or_else(|| "-".into()),
                        ),
                        ("Access", crate::netfs_args::access_text(&p),),
                        (
                            "State",
                            if p.active { "running" } else { "inactive" }.into()
                        ),
                        ("Persistent", "yes".into()),
                        ("Autostart", yn(p.def.autostart)),
                        ("Shared", yn(p.def.shared)),
                        ("Capacity", human(p.capacity)),
                        ("Allocation", human(p.allocation)),
                        ("Available", human(p.available)),
                    ])
                );
            }
        }
        Cmd::PoolRefresh { pool } => {
            let _: Value = c.call(&Request::PoolRefresh { name: pool.clone() }).await?;
            println!("Pool {pool} refreshed");
        }
        Cmd::PoolDestroy { pool } => {
            let _: Value = c.call(&Request::PoolDestroy { name: pool.clone() }).await?;
            println!("Pool {pool} destroyed");
        }
        Cmd::PoolUndefine { pool } => {
            let _: Value = c
                .call(&Request::PoolUndefine { name: pool.clone() })
                .await?;
            println!("Pool {pool} has been undefined");
        }
        Cmd::VolCreateAs {
            pool,
            name,
            capacity,
            format,
            backing_vol,
            ..
        } => {
            let capacity = match capacity {
                Some(s) => Some(tern_qemu::img::parse_size(&s).ok_or_else(|| {
                    CliError::Usage(format!(
                        "invalid size '{s}'; use a number with an optional unit such as 512M or 10G"
                    ))
                })?),
                None => None,
            };
            let _: VolumeInfo = c
                .call(&Request::VolCreateAs {
                    pool,
                    name: name.clone(),
                    capacity,
                    format,
                    backing_vol,
                })
                .await?;
            println!("Vol {name} created");
        }
        Cmd::VolList {
            pool,
            details,
            json,
        } => {
            let vols: Vec<VolumeInfo> = c.call(&Request::VolList { pool }).await?;
            if json {
                print_json(&vols);
            } else if details {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.path.display().to_string(),
                            v.format.clone(),
                            human(v.capacity),
                            human(v.allocation),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["Name", "Path", "Format", "Capacity", "Allocation"], &rows)
                );
            } else {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| vec![v.name.clone(), v.path.display().to_string()])
                    .collect();
                print!("{}", table(&["Name", "Path"], &rows));
            }
        }
        Cmd::VolInfo { vol, pool, json } => {
            let v: VolumeInfo = c.call(&Request::VolInfo { pool, name: vol }).await?;
            if json {
                print_json(&v);
            } else {
                let mut pairs = vec![
                    ("Name", v.name.clone()),
                    ("Type", "file".into()),
                    ("Format", v.format.clone()),
                    ("Capacity", human(v.capacity)),
                    ("Allocation", human(v.allocation)),
                ];
                if let Some(b) = &v.backing {
                    pairs.push(("Backing", b.display().to_string()));
                }
                print!("{}", kv(&pairs));
            }
        }
        Cmd::VolPath { vol, pool } => {
            let v: VolumeInfo = c.call(&Request::VolInfo { pool, name: vol }).await?;
            println!("{}", v.path.display());
        }
        Cmd::VolResize {
            vol,
            capacity,
            pool,
            delta,
            shrink,
        } => {
            let bytes = tern_qemu::img::parse_size(&capacity).ok_or_else(|| {
                CliError::Usage(format!(
                    "invalid size '{capacity}'; use a number with an optional unit such as 512M or 10G"
                ))
            })?;
            let v: VolumeInfo = c
                .call(&Request::VolResize {
                    pool,
                    name: vol.clone(),
                    capacity: bytes,
                    delta,
                    shrink,
                })
                .await?;
            println!(
                "Size of volume '{vol}' successfully changed to {}",
                human(v.capacity)
            );
        }
        Cmd::VolDelete { vol, pool } => {
            let _: Value = c
                .call(&Request::VolDelete {
                    pool,
                    name: vol.clone(),
                })
                .await?;
            println!("Vol {vol} deleted");
        }
        other => {
            return Err(CliError::Usage(format!(
                "verb {other:?} is not a storage verb"
            )))
        }
    }
    Ok(())
}
