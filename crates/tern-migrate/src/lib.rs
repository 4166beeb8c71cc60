//! Live, offline and (later) storage migration, as pure logic: the phases
//! as a state machine ([`phase`]), the options virsh users know and the
//! QEMU capabilities and parameters they become ([`options`]), `domjobinfo`
//! figures read from QEMU's `query-migrate` ([`jobinfo`]), and the
//! versioned agent-to-agent protocol ([`protocol`]). How bytes move is not
//! this crate's business: QEMU moves memory, the agents move control.

pub mod downtime;
pub mod forecast;
pub mod jobinfo;
pub mod options;
pub mod phase;
pub mod plan;
pub mod policy;
pub mod protocol;
pub mod recovery;

pub use jobinfo::{JobEvent, JobInfo, JobKind};
pub use options::{MigrateOptions, OptionsError, TimeoutAction};
pub use phase::{Phase, PhaseError, Role};
