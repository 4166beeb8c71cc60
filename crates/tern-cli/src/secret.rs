//! `secret-define`, `secret-set-value`, `secret-get-value`, `secret-list`,
//! `secret-dumpxml` and `secret-undefine`, as virsh has them. A value is
//! read from a file (`--file`, base64 as `ceph auth get-key` writes it) or,
//! as virsh allows, from the command line, where `ps` shows it.

use crate::table::table;
use crate::{print_json, CliError, Result};
use clap::Subcommand;
use std::path::PathBuf;
use tern_api::{Client, Request, SecretRequest};
use tern_model::{SecretDef, SecretInfo};

/// The secret verbs.
#[derive(Subcommand, Debug)]
// virsh's verb names, which all start with `secret-`.
#[allow(clippy::enum_variant_names)]
pub enum SecretCmd {
    /// Define (or redefine) a secret from libvirt XML.
    SecretDefine {
        /// File with the `<secret>` document.
        file: PathBuf,
    },
    /// Set a secret's value (base64, e.g. a cephx key).
    SecretSetValue {
        /// The secret's uuid or usage name.
        #[arg(required_unless_present = "secret_flag")]
        secret: Option<String>,
        /// The secret's uuid or usage name (virsh's `--secret`).
        #[arg(long = "secret", value_name = "SECRET", conflicts_with = "secret")]
        secret_flag: Option<String>,
        /// Read the base64 value from this file (`ceph auth get-key client.ID -o FILE`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The base64 value itself (visible to other users in `ps`: prefer --file).
        #[arg(long)]
        base64: Option<String>,
    },
    /// Print a secret's value (refused for private secrets).
    SecretGetValue {
        /// The secret's uuid or usage name.
        secret: String,
    },
    /// List secrets (never their values).
    SecretList {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a secret's definition.
    SecretDumpxml {
        /// The secret's uuid or usage name.
        secret: String,
    },
    /// Remove a secret and its value.
    SecretUndefine {
        /// The secret's uuid or usage name.
        secret: String,
    },
}

fn call(r: SecretRequest) -> Request {
    Request::Secret(r)
}

fn value_of(file: Option<PathBuf>, base64: Option<String>) -> Result<String> {
    match (file, base64) {
        (Some(f), None) => std::fs::read_to_string(&f)
            .map(|v| v.trim().to_string())
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display()))),
        (None, Some(v)) => Ok(v),
        _ => Err(CliError::Usage(
            "give the value with --file FILE (base64) or --base64 VALUE".into(),
        )),
    }
}

/// Runs a secret verb.
pub async fn run(c: &Client, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::SecretDefine { file } => {
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let d: SecretDef = c.call(&call(SecretRequest::SecretDefine { xml })).await?;
            println!("Secret {} created", d.uuid);
        }
        SecretCmd::SecretSetValue {
            secret,
            secret_flag,
            file,
            base64,
        } => {
            let secret = secret.or(secret_flag).unwrap_or_default();
            let value = value_of(file, base64)?;
            let _: SecretDef = c
                .call(&call(SecretRequest::SecretSetValue { secret, value }))
                .await?;
            println!("Secret value set");
        }
        SecretCmd::SecretGetValue { secret } => {
            let v: serde_json::Value = c
                .call(&call(SecretRequest::SecretGetValue { secret }))
                .await?;
            println!("{}", v["value"].as_str().unwrap_or_default());
        }
        SecretCmd::SecretList { json } => {
            let all: Vec<SecretInfo> = c.call(&call(SecretRequest::SecretList)).await?;
            if json {
                print_json(&all);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    let usage = s
                        .def
                        .usage
                        .as_ref()
                        .map(|u| format!("{} {}", u.kind(), u.name()))
                        .unwrap_or_else(|| "Unused".into());
                    let value = if s.has_value { "set" } else { "none" };
                    vec![s.def.uuid.clone(), usage, value.into()]
                })
                .collect();
            print!("{}", table(&["UUID", "Usage", "Value"], &rows));
        }
        SecretCmd::SecretDumpxml { secret } => {
            let x: String = c
                .call(&call(SecretRequest::SecretDumpXml { secret }))
                .await?;
            print!("{x}");
        }
        SecretCmd::SecretUndefine { secret } => {
            let d: SecretDef = c
                .call(&call(SecretRequest::SecretUndefine { secret }))
                .await?;
            println!("Secret {} deleted", d.uuid);
        }
    }
    Ok(())
}
