//! Secret requests (`secret-define`, `secret-set-value`...), in the same
//! `op` namespace as the others. A value travels only in
//! [`SecretRequest::SecretSetValue`] and, for secrets that are not
//! private, in the answer to [`SecretRequest::SecretGetValue`]; the agent
//! logs the operation's name only.

use serde::{Deserialize, Serialize};

/// A secret request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// virsh's verb names, which all start with `secret-`.
#[allow(clippy::enum_variant_names)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SecretRequest {
    /// Define (or redefine) a secret from libvirt XML (`secret-define`).
    SecretDefine {
        /// The `<secret>` document.
        xml: String,
    },
    /// Set a secret's value (`secret-set-value`).
    SecretSetValue {
        /// The secret's uuid or usage name.
        secret: String,
        /// The value, base64 (a cephx key as `ceph auth get-key` prints it).
        value: String,
    },
    /// A secret's value, refused for private secrets (`secret-get-value`).
    SecretGetValue {
        /// The secret's uuid or usage name.
        secret: String,
    },
    /// The host's secrets, without values (`secret-list`).
    SecretList,
    /// One secret's definition as XML (`secret-dumpxml`).
    SecretDumpXml {
        /// The secret's uuid or usage name.
        secret: String,
    },
    /// Remove a secret and its value (`secret-undefine`).
    SecretUndefine {
        /// The secret's uuid or usage name.
        secret: String,
    },
}

impl SecretRequest {
    /// See [`super::Request::is_read_only`]: listing and printing a
    /// definition only; a value never goes to a read-only connection.
    pub fn is_read_only(&self) -> bool {
        match self {
            SecretRequest::SecretList | SecretRequest::SecretDumpXml { .. } => true,
            SecretRequest::SecretDefine { .. }
            | SecretRequest::SecretSetValue { .. }
            | SecretRequest::SecretGetValue { .. }
            | SecretRequest::SecretUndefine { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Request;
    use super::*;

    #[test]
    fn secret_requests_share_the_op_namespace() {
        let r: Request =
            serde_json::from_str(r#"{"op":"secret-set-value","secret":"u","value":"YQ=="}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::Secret(SecretRequest::SecretSetValue { .. })
        ));
        assert!(!r.is_read_only());
        let r: Request = serde_json::from_str(r#"{"op":"secret-list"}"#).unwrap();
        assert!(r.is_read_only());
        let back = serde_json::to_string(&Request::Secret(SecretRequest::SecretList)).unwrap();
        assert_eq!(back, r#"{"op":"secret-list"}"#);
    }
}
