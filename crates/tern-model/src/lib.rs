//! Tern's data model: guests, pools, volumes, host facts, and the two text
//! formats operators already know — libvirt domain XML and libvirt
//! connection URIs. Nothing in this crate does I/O.

pub mod domain;
pub mod guest;
pub mod layout;
pub mod names;
pub mod pool;
pub mod secret;
pub mod state;
mod text;
pub mod uri;
pub mod validate;
pub mod xml;

pub use domain::*;
pub use guest::*;
pub use pool::*;
pub use secret::{CephAuth, SecretDef, SecretInfo, SecretRef, SecretUsage};
pub use state::*;
