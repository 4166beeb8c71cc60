//! Domain verbs.

use crate::args::Cmd;
use crate::table::{kv, table};
use crate::{print_json, read_file, CliError, Result};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;
use tern_api::{BlockEntry, Client, ConsoleChunk, DomainInfo, DomainRef, DomainSummary, Request};

pub(crate) async fn run(c: &Client, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::List {
            all,
            inactive,
            name,
            json,
        } => {
            let mut doms: Vec<DomainSummary> = c
                .call(&Request::List {
                    all: all || inactive,
                })
                .await?;
            if inactive {
                doms.retain(|d| d.id.is_none());
            }
            if json {
                print_json(&doms);
            } else if name {
                for d in &doms {
                    println!("{}", d.name);
                }
            } else {
                let rows: Vec<Vec<String>> = doms
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                            d.name.clone(),
                            d.state.to_string(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["Id", "Name", "State"], &rows));
            }
        }
        Cmd::Dominfo { domain, json } => {
            let i: DomainInfo = c.call(&Request::DomInfo { name: domain }).await?;
            if json {
                print_json(&i);
            } else {
                let s = &i.summary;
                let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
                let mut pairs = vec![
                    (
                        "Id",
                        s.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    ),
                    ("Name", s.name.clone()),
                    ("UUID", s.uuid.to_string()),
                    ("OS Type", i.os_type.clone()),
                    ("State", s.state.to_string()),
                    ("Reason", s.reason.to_string()),
                    ("CPU(s)", i.vcpus.to_string()),
                    ("Max memory", format!("{} KiB", i.max_memory_kib)),
                    ("Used memory", format!("{} KiB", i.used_memory_kib)),
                    ("Persistent", yn(s.persistent)),
                ];
                if let Some(p) = i.pid {
                    pairs.push(("QEMU pid", p.to_string()));
                }
                if let Some(a) = &i.accel {
                    pairs.push(("Accelerator", a.clone()));
                }
                if let Some(p) = &i.console_pty {
                    pairs.push(("Console pty", p.clone()));
                }
                if let Some(l) = &i.console_log {
                    pairs.push(("Console log", l.clone()));
                }
                if let Some(l) = &i.security_label {
                    pairs.push(("Security model", "dac".into()));
                    pairs.push(("Security label", l.clone()));
                }
                print!("{}", kv(&pairs));
            }
        }
        Cmd::Domstate {
            domain,
            reason,
            json,
        } => {
            let i: DomainInfo = c.call(&Request::DomInfo { name: domain }).await?;
            if json {
                print_json(&serde_json::json!({
                    "state": i.summary.state, "reason": i.summary.reason
                }));
            } else if reason {
                println!("{} ({})", i.summary.state, i.summary.reason);
            } else {
                println!("{}", i.summary.state);
            }
        }
        Cmd::Domblklist {
            domain,
            details,
            json,
        } => {
            let b: Vec<BlockEntry> = c.call(&Request::DomBlkList { name: domain }).await?;
            if json {
                print_json(&b);
            } else if details {
                let rows: Vec<Vec<String>> = b
                    .iter()
                    .map(|e| {
                        vec![
                            "file".into(),
                            e.device.clone(),
                            e.target.clone(),
                            e.source.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print!("{}", table(&["Type", "Device", "Target", "Source"], &rows));
            } else {
                let rows: Vec<Vec<String>> = b
                    .iter()
                    .map(|e| {
                        vec![
                            e.target.clone(),
                            e.source.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print!("{}", table(&["Target", "Source"], &rows));
            }
        }
        Cmd::Domuuid { domain } => {
            let i: DomainInfo = c.call(&Request::DomInfo { name: domain }).await?;
            println!("{}", i.summary.uuid);
        }
        Cmd::Dumpxml { domain } => {
            let x: String = c.call(&Request::DumpXml { name: domain }).await?;
            print!("{x}");
        }
        Cmd::Define { file } => {
            let xml = read_file(&file)?;
            let r: DomainRef = c.call(&Request::Define { xml }).await?;
            println!("Domain '{}' defined from {}", r.name, file.display());
        }
        Cmd::Create { file, paused } => {
            let xml = read_file(&file)?;
            let r: DomainRef = c.call(&Request::Create { xml, paused }).await?;
            println!("Domain '{}' created from {}", r.name, file.display());
        }
        Cmd::Start { domain, paused } => {
            let r: DomainRef = c
                .call(&Request::Start {
                    name: domain,
                    paused,
                })
                .await?;
            println!("Domain '{}' started", r.name);
        }
        Cmd::Shutdown { domain, timeout } => {
            let _: Value = c
                .call(&Request::Shutdown {
                    name: domain.clone(),
                    timeout_secs: timeout,
                })
                .await?;
            println!("Domain '{domain}' has been shut down");
        }
        Cmd::Destroy { domain } => {
            let _: Value = c
                .call(&Request::Destroy {
                    name: domain.clone(),
                })
                .await?;
            println!("Domain '{domain}' destroyed");
        }
        Cmd::QemuAgentCommand {
            domain,
            command,
            timeout,
        } => {
            let answer = agent_command(c, &domain, &command, timeout).await?;
            println!("{answer}");
        }
        Cmd::Domifaddr { domain, source } => {
            if source != "agent" {
                return Err(CliError::Usage(format!(
                    "domifaddr --source {source} is not supported; use --source agent (the QEMU guest agent)"
                )));
            }
            let answer = agent_command(
                c,
                &domain,
                r#"{"execute":"guest-network-get-interfaces"}"#,
                5,
            )
            .await?;
            let mut rows = Vec::new();
            for i in tern_qemu::guest_agent::parse_interfaces(&answer) {
                for (family, addr) in &i.addresses {
                    rows.push(vec![
                        i.name.clone(),
                        i.mac.clone(),
                        family.clone(),
                        addr.clone(),
                    ]);
                }
            }
            print!(
                "{}",
                table(&["Name", "MAC address", "Protocol", "Address"], &rows)
            );
        }
        Cmd::Domfsfreeze { domain } => {
            let answer =
                agent_command(c, &domain, r#"{"execute":"guest-fsfreeze-freeze"}"#, 30).await?;
            println!("Froze {} filesystem(s)", answer["return"]);
        }
        Cmd::Domfsthaw { domain } => {
            let answer =
                agent_command(c, &domain, r#"{"execute":"guest-fsfreeze-thaw"}"#, 30).await?;
            println!("Thawed {} filesystem(s)", answer["return"]);
        }
        Cmd::InjectNmi { domain } => {
            let _: Value = c
                .call(&Request::InjectNmi {
                    name: domain.clone(),
                })
                .await?;
            println!("NMI sent to domain '{domain}'");
        }
        Cmd::Reboot { domain } => {
            let _: Value = c
                .call(&Request::Reboot {
                    name: domain.clone(),
                })
                .await?;
            println!("Domain '{domain}' is being rebooted");
        }
        Cmd::Suspend { domain } => {
            let _: Value = c
                .call(&Request::Suspend {
                    name: domain.clone(),
                })
                .await?;
            println!("Domain '{domain}' suspended");
        }
        Cmd::Resume { domain } => {
            let _: Value = c
                .call(&Request::Resume {
                    name: domain.clone(),
                })
                .await?;
            println!("Domain '{domain}' resumed");
        }
        Cmd::Undefine {
            domain,
            remove_all_storage,
            nvram,
        } => {
            let removed: Vec<String> = c
                .call(&Request::Undefine {
                    name: domain.clone(),
                    remove_all_storage,
                    nvram,
                })
                .await?;
            for r in removed {
                println!("Volume '{r}' removed.");
            }
            println!("Domain '{domain}' has been undefined");
        }
        Cmd::Console {
            domain,
            follow,
            tail,
        } => console(c, &domain, follow, tail).await?,
        other => {
            return Err(CliError::Usage(format!(
                "verb {other:?} is not a domain verb"
            )))
        }
    }
    Ok(())
}

async fn console(c: &Client, domain: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    let mut offset = 0;
    let mut first = true;
    let mut out = std::io::stdout();
    loop {
        let chunk: ConsoleChunk = c
            .call(&Request::Console {
                name: domain.to_string(),
                offset,
                max: 4 << 20,
            })
            .await?;
        let got = chunk.next_offset > offset;
        offset = chunk.next_offset;
        let text = match (first, tail) {
            (true, Some(n)) => {
                let lines: Vec<&str> = chunk.data.lines().collect();
                let start = lines.len().saturating_sub(n);
                let mut s = lines[start..].join("\n");
                if !s.is_empty() {
                    s.push('\n');
                }
                s
            }
            _ => chunk.data,
        };
        first = false;
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        if !follow || (!chunk.active && !got) {
            return Ok(());
        }
        if !got {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs a guest-agent command; an `{"error": ...}` answer is an error.
async fn agent_command(
    c: &tern_api::Client,
    domain: &str,
    command: &str,
    timeout: u64,
) -> Result<Value, CliError> {
    let answer: Value = c
        .call(&Request::QemuAgentCommand {
            name: domain.to_string(),
            command: command.to_string(),
            timeout_secs: timeout,
        })
        .await?;
    if let Some(e) = answer.get("error") {
        return Err(CliError::GuestAgent(format!(
            "the guest agent refused the command: {}",
            e["desc"].as_str().unwrap_or("no reason given")
        )));
    }
    Ok(answer)
}
