//! The one connection a [`crate::Client`] may keep open between calls
//! ([`crate::Client::keep_alive`]), shared by the client's clones.

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;

/// The sending half of a kept HTTP/1.1 connection.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The kept connection, if one is open. Whoever holds the lock owns it
/// for one call; a call that finds it held opens its own.
#[derive(Debug, Default, Clone)]
pub(crate) struct Kept(Arc<tokio::sync::Mutex<Option<Sender>>>);

impl Kept {
    /// The connection, unless a call is using it.
    pub(crate) fn try_lock(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Sender>>, tokio::sync::TryLockError> {
        self.0.try_lock()
    }
}
