//! `qemu-agent-command`: the guest agent behind a domain's
//! `org.qemu.guest_agent.0` channel.

use crate::error::{AgentError, Result};
use crate::Agent;
use std::time::Duration;
use tern_model::GUEST_AGENT_CHANNEL;
use tern_qemu::cmdline::channel_socket;
use tern_qemu::guest_agent;

impl Agent {
    /// `inject-nmi`: a non-maskable interrupt on every vCPU (what a
    /// guest's "unknown NMI" handling, e.g. Linux's `unknown_nmi_panic`,
    /// acts on).
    pub async fn inject_nmi(&self, name: &str) -> Result<()> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let run = e.run.as_ref().ok_or_else(|| {
            AgentError::Conflict(format!(
                "domain '{}' is not running; start it first",
                slot.name
            ))
        })?;
        run.qmp.execute("inject-nmi", None).await?;
        Ok(())
    }

    /// Sends `command` (JSON) to the guest agent of running domain `name`
    /// and returns the agent's answer.
    pub async fn qemu_agent_command(
        &self,
        name: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let request: serde_json::Value = serde_json::from_str(command).map_err(|e| {
            AgentError::Invalid(format!(
                "the guest agent command is not JSON ({e}); write it like '{{\"execute\":\"guest-ping\"}}'"
            ))
        })?;
        if !request["execute"].is_string() {
            return Err(AgentError::Invalid(
                "the guest agent command has no \"execute\"; write it like '{\"execute\":\"guest-ping\"}'".into(),
            ));
        }
        let slot = self.domains.find(name)?;
        let sock = {
            let e = slot.inner.lock().await;
            let run = e.run.as_ref().ok_or_else(|| {
                AgentError::Conflict(format!(
                    "domain '{}' is not running; start it first",
                    slot.name
                ))
            })?;
            let channel = run
                .live
                .devices
                .channels
                .iter()
                .find(|c| c.target_name == GUEST_AGENT_CHANNEL)
                .ok_or_else(|| {
                    AgentError::Unsupported(format!(
                        "domain '{}' has no guest agent channel; add <channel type='unix'><target type='virtio' name='{GUEST_AGENT_CHANNEL}'/></channel> and restart it",
                        slot.name
                    ))
                })?;
            channel_socket(&self.layout.run_dir(&slot.name), &channel.kind, &channel.target_name)
                .ok_or_else(|| {
                    AgentError::Unsupported(format!(
                        "the guest agent channel of domain '{}' is not a unix socket; use <channel type='unix'>",
                        slot.name
                    ))
                })?
        };
        guest_agent::command(&sock, &request, timeout)
            .await
            .map_err(|e| match e {
                guest_agent::GuestAgentError::Timeout(_) => {
                    AgentError::Timeout(format!("domain '{name}': {e}"))
                }
                _ => AgentError::Failed(format!("domain '{name}': {e}")),
            })
    }
}
