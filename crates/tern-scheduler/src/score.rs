//! Scores: among the hosts that passed the filters, prefer the least
//! loaded, then the one with the fewest migrations in flight.

use crate::model::HostView;

/// Weight of one migration in flight, in the same unit as load (per mille):
/// a migration costs the host about as much as 10 % more load.
pub const MIGRATION_WEIGHT: i64 = 100;

/// Load of a host in per mille: the larger of its vCPU and memory use.
pub fn load_permille(h: &HostView) -> i64 {
    let frac = |used: u64, total: u64| -> i64 {
        used.saturating_mul(1000)
            .checked_div(total)
            .map_or(1000, |v| v.min(1000) as i64)
    };
    frac(h.vcpus_used as u64, h.vcpus_total as u64).max(frac(h.memory_used_mib, h.memory_total_mib))
}

/// Higher is better: free capacity minus the cost of migrations in flight.
pub fn score(h: &HostView) -> i64 {
    (1000 - load_permille(h)) - MIGRATION_WEIGHT * (h.inbound as i64 + h.outbound as i64)
}
