//! Everything Tern knows about QEMU itself: how to turn a [`tern_model::Domain`]
//! into a command line, how to talk QMP to a running QEMU, how to call
//! `qemu-img`, and the migration and block-job commands. It knows nothing of
//! hosts, peers or HTTP.

pub mod cmdline;
pub mod firmware;
pub mod guest_agent;
pub mod identity;
pub mod img;
pub mod probe;
pub mod qmp;
pub mod states;

pub use cmdline::{build_command_line, LaunchSpec, NetBackend};
pub use qmp::{next_event, Qmp, QmpError, QmpEvent};
pub use states::{BlockJob, BlockJobStatus, MigrationStatus, MirrorEnd, RunState};
