//! libvirt domain XML: import with [`parse_domain`], export with [`to_xml`].
//!
//! Tern honours an explicit subset of libvirt's domain XML (the fields of
//! [`Domain`](crate::Domain)). Import follows three rules:
//!
//! * Elements Tern honours are parsed with libvirt's semantics (memory units,
//!   disk bus defaults, graphics autoport...).
//! * Runtime-only details that `virsh dumpxml` prints for a running guest
//!   (`id=`, `<alias>`, the interface `<target dev>`, pty paths,
//!   `<seclabel>`...) are accepted and dropped. `<address>` is honoured.
//! * Everything else is refused with an error naming the element, because a
//!   guest Tern cannot start, migrate and print back faithfully is better
//!   rejected at `define` time than silently changed.
//!
//! Export prints everything the model holds, in `virsh dumpxml` layout, so
//! that `parse_domain(&to_xml(&d)) == Ok(d)` for every domain that passes
//! [`validate`].
//!
//! ```
//! use tern_model::xml::{parse_domain, to_xml};
//!
//! let xml = "<domain type='kvm' id='3'>
//!   <name>web1</name>
//!   <memory unit='GiB'>1</memory>
//!   <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
//!   <devices>
//!     <disk type='file' device='disk'>
//!       <source file='/var/lib/tern/images/web1.qcow2'/>
//!       <driver name='qemu' type='qcow2'/>
//!       <target dev='vda'/>
//!       <alias name='virtio-disk0'/>
//!     </disk>
//!   </devices>
//! </domain>";
//! let domain = parse_domain(xml)?;
//! assert_eq!(domain.memory_kib, 1024 * 1024);
//! assert_eq!(parse_domain(&to_xml(&domain))?, domain);
//!
//! let err = parse_domain(&xml.replace("</devices>", "<hostdev mode='subsystem'/></devices>"))
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("device <hostdev> (PCI/USB passthrough) is not supported"));
//! # Ok::<(), tern_model::xml::XmlError>(())
//! ```

mod cputune;
mod devices;
mod disk;
mod export;
mod export_guest;
pub(crate) mod guest_devices;
mod hotplug;
mod import;
mod memory;
mod netdisk;
pub(crate) mod platform;
mod units;

#[cfg(test)]
mod tests;

use crate::text::one_line;
use thiserror::Error;

pub use crate::validate::{validate, ValidationError};
pub use cputune::parse_cpuset;
pub use export::to_xml;
pub use hotplug::{parse_device, HotDevice};
pub use import::parse_domain;

/// Why a domain XML document was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XmlError {
    /// The text is not well-formed XML; carries roxmltree's message and position.
    #[error("domain XML is not well-formed: {}; fix the XML syntax", one_line(.0))]
    Malformed(String),
    /// The document's root element is not `<domain>`.
    #[error("the root element is <{}>, not <domain>; pass a libvirt domain XML document such as `virsh dumpxml` prints", one_line(.0))]
    NotDomain(String),
    /// A required element is absent.
    #[error("{what} is missing; add it to the domain XML")]
    MissingElement {
        /// The element, e.g. `<name>` or `<os><type>`.
        what: String,
    },
    /// A required attribute is absent.
    #[error("<{element}> has no {attribute}= attribute; add it to the domain XML")]
    MissingAttribute {
        /// The element lacking the attribute.
        element: String,
        /// The attribute's name.
        attribute: &'static str,
    },
    /// An element that may appear once appears several times.
    #[error("<{element}> appears more than once; keep only one")]
    Duplicate {
        /// The repeated element (with its parent when useful).
        element: String,
    },
    /// A value cannot be parsed or is outside what libvirt allows.
    #[error("{what} value '{}' is invalid; {expected}", one_line(.value))]
    InvalidValue {
        /// Where the value sits, e.g. `<memory unit=>`.
        what: String,
        /// The offending value as written.
        value: String,
        /// What to write instead.
        expected: String,
    },
    /// An element or setting that Tern cannot honour.
    #[error("{what} is not supported by Tern; {fix}")]
    Unsupported {
        /// The element or setting, e.g. `device <hostdev> (PCI/USB passthrough)`.
        what: String,
        /// What to do about it.
        fix: String,
    },
    /// The document parsed but describes an invalid domain.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}
