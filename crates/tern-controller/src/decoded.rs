//! Records kept decoded, by key and revision.
//!
//! A store revision names one value of one key, so a record decoded at a
//! revision stays right until the key's revision moves; any controller's
//! write moves it. At thousands of hosts the controller's work was mostly
//! decoding the same JSON again: the leader's tick decoded every host
//! record (each with its host's report and every domain's XML) four times
//! a second, and each heartbeat decoded its host's record and each of its
//! servers'. With this cache, those paths ask the store for revisions only
//! ([`tern_store::Store::revisions`], [`tern_store::Store::list_revisions`])
//! and decode what changed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Decoded values of one record type, each with the revision it was read at.
pub struct Decoded<T> {
    map: Mutex<HashMap<String, (u64, Arc<T>)>>,
}

impl<T> Default for Decoded<T> {
    fn default() -> Self {
        Decoded {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> std::fmt::Debug for Decoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoded({} records)", self.lock().len())
    }
}

impl<T> Decoded<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Arc<T>)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key` at `revision`, if it was decoded.
    pub fn at(&self, key: &str, revision: u64) -> Option<Arc<T>> {
        match self.lock().get(key) {
            Some((r, v)) if *r == revision => Some(v.clone()),
            _ => None,
        }
    }

    /// The value of `key` as last decoded, at whatever revision: a guess
    /// that a read of the revision then confirms or not.
    pub fn last(&self, key: &str) -> Option<Arc<T>> {
        self.lock().get(key).map(|(_, v)| v.clone())
    }

    /// Keeps `value` as `key`'s value at `revision`, unless a later one is
    /// kept already (two readers may race).
    pub fn keep(&self, key: &str, revision: u64, value: Arc<T>) {
        let mut m = self.lock();
        match m.get(key) {
            Some((r, _)) if *r > revision => {}
            _ => {
                m.insert(key.to_string(), (revision, value));
            }
        }
    }

    /// Forgets `key` (it was deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets every key under `prefix` that is not in `present`: a full
    /// listing shows which keys were deleted.
    pub fn retain_listed(&self, prefix: &str, present: &HashSet<&str>) {
        self.lock()
            .retain(|k, _| !k.starts_with(prefix) || present.contains(k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_served_only_at_its_revision() {
        let d = Decoded::<String>::default();
        d.keep("a", 5, Arc::new("five".into()));
        assert_eq!(d.at("a", 5).as_deref().map(String::as_str), Some("five"));
        assert!(d.at("a", 6).is_none());
        // An older read arriving late does not replace a newer one.
        d.keep("a", 4, Arc::new("four".into()));
        assert!(d.at("a", 4).is_none());
        assert!(d.at("a", 5).is_some());
        d.keep("a", 7, Arc::new("seven".into()));
        assert!(d.at("a", 7).is_some());
        assert_eq!(d.last("a").as_deref().map(String::as_str), Some("seven"));
        d.forget("a");
        assert!(d.at("a", 7).is_none());
    }

    #[test]
    fn a_listing_drops_deleted_keys_under_its_prefix_only() {
        let d = Decoded::<u8>::default();
        d.keep("h/a", 1, Arc::new(1));
        d.keep("h/b", 2, Arc::new(2));
        d.keep("s/c", 3, Arc::new(3));
        d.retain_listed("h/", &HashSet::from(["h/b"]));
        assert!(d.at("h/a", 1).is_none());
        assert!(d.at("h/b", 2).is_some());
        assert!(d.at("s/c", 3).is_some());
    }
}
