//! Migration limits: at most N outbound and M inbound migrations per host
//! and K in the whole cluster (KubeVirt's defaults: 2 per node, 5 per
//! cluster). Jobs beyond them wait in the queue.

use serde::{Deserialize, Serialize};

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Outbound migrations per host.
    pub per_host_outbound: u32,
    /// Inbound migrations per host.
    pub per_host_inbound: u32,
    /// Migrations in the cluster.
    pub cluster: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_host_outbound: 2,
            per_host_inbound: 2,
            cluster: 5,
        }
    }
}

/// Why a queued job must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The cluster runs `K` migrations already.
    Cluster(u32),
    /// Its source sends `N` already.
    Outbound(u32),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Cluster(k) => write!(f, "the cluster already runs {k} migrations"),
            Wait::Outbound(n) => write!(f, "its host already sends {n} migrations"),
        }
    }
}

impl Limits {
    /// Whether a job leaving `outbound_of_source` may start now with
    /// `running` migrations in the cluster. Inbound limits are a filter on
    /// destinations ([`crate::filters::Rejection::InboundLimit`]).
    pub fn admit(&self, running: u32, outbound_of_source: u32) -> Result<(), Wait> {
        if running >= self.cluster {
            return Err(Wait::Cluster(self.cluster));
        }
        if outbound_of_source >= self.per_host_outbound {
            return Err(Wait::Outbound(self.per_host_outbound));
        }
        Ok(())
    }

    /// Whether `h` may receive one more.
    pub fn inbound_ok(&self, inbound: u32) -> bool {
        inbound < self.per_host_inbound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubevirts() {
        let l = Limits::default();
        assert_eq!(
            (l.per_host_outbound, l.per_host_inbound, l.cluster),
            (2, 2, 5)
        );
    }

    #[test]
    fn admit_checks_cluster_then_source() {
        let l = Limits::default();
        assert_eq!(l.admit(0, 0), Ok(()));
        assert_eq!(l.admit(4, 1), Ok(()));
        assert_eq!(l.admit(5, 0), Err(Wait::Cluster(5)));
        assert_eq!(l.admit(3, 2), Err(Wait::Outbound(2)));
        assert!(l.inbound_ok(1));
        assert!(!l.inbound_ok(2));
    }
}
