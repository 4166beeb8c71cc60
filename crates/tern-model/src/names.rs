//! Validation of names that end up in file paths or on QEMU's command line.

use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty names cannot be addressed.
    #[error("{what} name is empty; give a name")]
    Empty {
        /// "domain", "pool", "volume".
        what: &'static str,
    },
    /// Too long for a file name.
    #[error("{what} name '{name}' is longer than 200 characters; use a shorter name")]
    TooLong {
        /// "domain", "pool", "volume".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A separator, '..' or a control character would escape the directory.
    #[error("{what} name '{name}' contains '/', '..', a leading '.' or a control character; use a plain file name")]
    Unsafe {
        /// "domain", "pool", "volume".
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Checks that `name` can be used as a single path component and as a QEMU
/// option value: no '/', no '..', no leading '.', no control characters, no ','.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > 200 {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
        });
    }
    if name.contains('/')
        || name.contains('\\')
        || name.contains("..")
        || name.starts_with('.')
        || name.contains(',')
        || name.chars().any(|c| c.is_control())
    {
        return Err(NameError::Unsafe {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_and_separators() {
        for bad in ["", "a/b", "..", "../x", "x..y", ".hidden", "a,b", "a\nb"] {
            assert!(validate_name("volume", bad).is_err(), "{bad:?}");
        }
        for good in ["vm1", "disk-0.qcow2", "guest_A"] {
            assert!(validate_name("volume", good).is_ok(), "{good:?}");
        }
    }
}
