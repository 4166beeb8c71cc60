//! Secrets, as libvirt has them (`virsh secret-define`): a definition
//! (`<secret ephemeral='no' private='yes'><uuid/><usage type='ceph'>
//! <name/></usage></secret>`) and, separately, a value that the agent keeps
//! readable by root only. Disks and RBD pools name a secret by uuid or by
//! usage; the value (a cephx key) never appears in a definition, a log or a
//! command line.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A secret's definition (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDef {
    /// The secret's uuid, lowercase with dashes.
    pub uuid: String,
    /// What the secret is for; disks and pools may name it by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<SecretUsage>,
    /// `ephemeral='yes'`: libvirt keeps the value in memory only. Tern
    /// refuses such secrets (an agent restart would lose running guests' keys).
    #[serde(default)]
    pub ephemeral: bool,
    /// `private='yes'`: the value is never given back (`secret-get-value`).
    #[serde(default)]
    pub private: bool,
    /// `<description>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `<usage type='ceph'><name>NAME</name></usage>`; only Ceph is implemented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "name")]
pub enum SecretUsage {
    /// A cephx key, named e.g. `client.admin secret`.
    Ceph(String),
}

impl SecretUsage {
    /// `ceph`.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretUsage::Ceph(_) => "ceph",
        }
    }

    /// The usage name.
    pub fn name(&self) -> &str {
        match self {
            SecretUsage::Ceph(n) => n,
        }
    }
}

/// What `secret-list` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The definition.
    #[serde(flatten)]
    pub def: SecretDef,
    /// Whether a value was set (`secret-set-value`).
    pub has_value: bool,
}

/// How a disk or a pool names its secret: `<secret type='ceph' uuid=...>`
/// or `usage=...` (and `--secret-uuid` / `--secret-usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    /// By uuid.
    Uuid(String),
    /// By usage name.
    Usage(String),
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Uuid(u) => write!(f, "uuid {u}"),
            SecretRef::Usage(u) => write!(f, "usage '{u}'"),
        }
    }
}

/// `<auth username='ID'><secret type='ceph' .../></auth>`: the cephx user
/// (without `client.`) and the secret holding its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CephAuth {
    /// The cephx id, e.g. `admin` or `libvirt`.
    pub username: String,
    /// The secret holding the key.
    pub secret: SecretRef,
}

impl CephAuth {
    /// Refuses a username that cannot be written into QEMU options or a
    /// Ceph command line.
    pub fn check(&self) -> Result<(), SecretError> {
        let ok = !self.username.is_empty()
            && self
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(SecretError::Invalid(format!(
                "cephx user '{}' is not a plain id; give the id without 'client.', e.g. --auth-username admin",
                self.username
            )));
        }
        match &self.secret {
            SecretRef::Uuid(u) => parse_uuid(u).map(|_| ()),
            SecretRef::Usage(u) if u.trim().is_empty() => Err(SecretError::Invalid(
                "secret usage is empty; give --secret-usage NAME or --secret-uuid UUID".into(),
            )),
            SecretRef::Usage(_) => Ok(()),
        }
    }
}

/// Errors of secret definitions.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not parseable XML.
    #[error("secret XML is malformed: {0}")]
    Malformed(String),
    /// Parsed but not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// Parses a uuid, giving it back lowercase with dashes.
pub fn parse_uuid(s: &str) -> Result<String, SecretError> {
    uuid::Uuid::parse_str(s.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            SecretError::Invalid(format!(
                "'{s}' is not a uuid; give one like 2ec115d7-3a88-3ceb-bc12-0ac909a6fd87"
            ))
        })
}

fn attr_yes(node: roxmltree::Node, name: &str) -> Result<bool, SecretError> {
    match node.attribute(name) {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(o) => Err(SecretError::Invalid(format!(
            "<secret {name}='{o}'> is neither 'yes' nor 'no'"
        ))),
    }
}

/// Parses `virsh secret-define`'s XML. A missing `<uuid>` gets a random
/// one; `ephemeral='yes'` and usages other than ceph are refused.
pub fn parse_secret(xml: &str) -> Result<SecretDef, SecretError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| SecretError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "secret" {
        return Err(SecretError::Invalid(format!(
            "root element is <{}>, not <secret>",
            root.tag_name().name()
        )));
    }
    let ephemeral = attr_yes(root, "ephemeral")?;
    if ephemeral {
        return Err(SecretError::Invalid(
            "ephemeral secrets are not supported (an agent restart would lose the value); use ephemeral='no'".into(),
        ));
    }
    let mut def = SecretDef {
        uuid: uuid::Uuid::new_v4().hyphenated().to_string(),
        usage: None,
        ephemeral,
        private: attr_yes(root, "private")?,
        description: None,
    };
    for child in root.children().filter(|c| c.is_element()) {
        let text = child.text().unwrap_or("").trim().to_string();
        match child.tag_name().name() {
            "uuid" => def.uuid = parse_uuid(&text)?,
            "description" => def.description = Some(text),
            "usage" => def.usage = Some(parse_usage(child)?),
            other => {
                return Err(SecretError::Invalid(format!(
                    "<secret><{other}> is not supported; remove it"
                )))
            }
        }
    }
    Ok(def)
}

fn parse_usage(node: roxmltree::Node) -> Result<SecretUsage, SecretError> {
    let kind = node.attribute("type").unwrap_or("");
    if kind != "ceph" {
        return Err(SecretError::Invalid(format!(
            "<usage type='{kind}'> is not supported; Tern keeps ceph secrets only (type='ceph')"
        )));
    }
    let name = node
        .children()
        .find(|c| c.has_tag_name("name"))
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            SecretError::Invalid(
                "<usage type='ceph'> needs a <name>, e.g. <name>client.admin secret</name>".into(),
            )
        })?;
    Ok(SecretUsage::Ceph(name))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `virsh secret-dumpxml` layout.
pub fn secret_to_xml(d: &SecretDef) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!(
        "<secret ephemeral='{}' private='{}'>\n  <uuid>{}</uuid>\n",
        yn(d.ephemeral),
        yn(d.private),
        d.uuid
    );
    if let Some(desc) = &d.description {
        s.push_str(&format!("  <description>{}</description>\n", escape(desc)));
    }
    if let Some(u) = &d.usage {
        s.push_str(&format!(
            "  <usage type='{}'>\n    <name>{}</name>\n  </usage>\n",
            u.kind(),
            escape(u.name())
        ));
    }
    s.push_str("</secret>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<secret ephemeral='no' private='yes'>
  <uuid>2EC115D7-3A88-3CEB-BC12-0AC909A6FD87</uuid>
  <usage type='ceph'><name>client.admin secret</name></usage>
</secret>";

    #[test]
    fn libvirt_ceph_secrets_parse_and_print_back() {
        let d = parse_secret(XML).unwrap();
        assert_eq!(d.uuid, "2ec115d7-3a88-3ceb-bc12-0ac909a6fd87");
        assert!(d.private && !d.ephemeral);
        assert_eq!(
            d.usage,
            Some(SecretUsage::Ceph("client.admin secret".into()))
        );
        assert_eq!(parse_secret(&secret_to_xml(&d)).unwrap(), d);
    }

    #[test]
    fn what_tern_cannot_keep_is_refused() {
        let e = parse_secret(&XML.replace("ephemeral='no'", "ephemeral='yes'")).unwrap_err();
        assert!(e.to_string().contains("ephemeral='no'"), "{e}");
        let e = parse_secret(&XML.replace("type='ceph'", "type='iscsi'")).unwrap_err();
        assert!(e.to_string().contains("type='ceph'"), "{e}");
        let e = parse_secret("<secret><uuid>nope</uuid></secret>").unwrap_err();
        assert!(e.to_string().contains("not a uuid"), "{e}");
        assert!(parse_secret("<domain/>").is_err());
    }

    #[test]
    fn a_missing_uuid_is_made_up() {
        let d = parse_secret("<secret><usage type='ceph'><name>x</name></usage></secret>").unwrap();
        assert!(parse_uuid(&d.uuid).is_ok());
        assert!(!d.private);
    }

    #[test]
    fn cephx_users_are_plain_ids() {
        let a = |u: &str| CephAuth {
            username: u.into(),
            secret: SecretRef::Usage("x".into()),
        };
        assert!(a("admin").check().is_ok());
        assert!(a("client,admin").check().is_err());
        assert!(a("").check().is_err());
    }
}
