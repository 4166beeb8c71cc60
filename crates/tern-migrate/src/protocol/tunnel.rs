//! The header of a tunnel stream (`--tunnelled`): the fixed 32-byte
//! [`TunnelHello`] each stream opens with, and the destination's one-byte
//! [`TunnelReply`]. The sequence they take part in is described in the
//! parent module's docs.

use thiserror::Error;
use uuid::Uuid;

/// The first bytes of a tunnel stream.
pub const TUNNEL_MAGIC: &[u8; 7] = b"TERNTUN";
/// Version of the tunnel stream header.
pub const TUNNEL_VERSION: u8 = 1;
/// Length of an encoded [`TunnelHello`].
pub const TUNNEL_HELLO_LEN: usize = 32;

/// What a tunnel stream carries, i.e. which local socket the destination
/// agent connects it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A migration channel (the main one or a multifd one: QEMU tells them
    /// apart itself).
    Memory,
    /// An NBD connection of a disk mirror.
    Nbd,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            StreamKind::Memory => 1,
            StreamKind::Nbd => 2,
        }
    }
}

/// Opens every tunnel stream: which migration, which kind of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelHello {
    /// Migration id (as in Prepare).
    pub id: Uuid,
    /// What the stream carries.
    pub stream: StreamKind,
}

/// A tunnel header that cannot be accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TunnelHeaderError {
    /// The bytes are not a Tern tunnel header.
    #[error("the peer did not open a Tern tunnel stream (bad magic)")]
    Magic,
    /// Another header version.
    #[error("the peer speaks tunnel header version {0}, this agent speaks {TUNNEL_VERSION}; upgrade the older agent")]
    Version(u8),
    /// An unknown stream kind.
    #[error("the peer asked for unknown tunnel stream kind {0}")]
    Kind(u8),
    /// Reserved bytes are not zero (a newer peer's feature).
    #[error("the peer set reserved tunnel header bytes; upgrade this agent")]
    Reserved,
}

impl TunnelHello {
    /// The header's 32 bytes: magic (7), version (1), id (16), kind (1),
    /// reserved zeros (7).
    pub fn encode(&self) -> [u8; TUNNEL_HELLO_LEN] {
        let mut b = [0u8; TUNNEL_HELLO_LEN];
        b[..7].copy_from_slice(TUNNEL_MAGIC);
        b[7] = TUNNEL_VERSION;
        b[8..24].copy_from_slice(self.id.as_bytes());
        b[24] = self.stream.code();
        b
    }

    /// Reads a header, refusing anything but exactly what [`encode`](Self::encode) makes.
    pub fn decode(b: &[u8; TUNNEL_HELLO_LEN]) -> Result<TunnelHello, TunnelHeaderError> {
        if &b[..7] != TUNNEL_MAGIC {
            return Err(TunnelHeaderError::Magic);
        }
        if b[7] != TUNNEL_VERSION {
            return Err(TunnelHeaderError::Version(b[7]));
        }
        let stream = match b[24] {
            1 => StreamKind::Memory,
            2 => StreamKind::Nbd,
            k => return Err(TunnelHeaderError::Kind(k)),
        };
        if b[25..].iter().any(|&x| x != 0) {
            return Err(TunnelHeaderError::Reserved);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[8..24]);
        Ok(TunnelHello {
            id: Uuid::from_bytes(id),
            stream,
        })
    }
}

/// The destination's one-byte answer to a [`TunnelHello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelReply {
    /// Connected; bytes flow from now on.
    Ok,
    /// The header could not be read.
    BadHeader,
    /// No such migration is waiting for streams here.
    UnknownMigration,
    /// The certificate's identity may not migrate guests here.
    Forbidden,
    /// The destination QEMU did not accept the connection.
    LocalRefused,
    /// No local socket for that kind of stream (e.g. NBD without disks).
    NoRoute,
}

impl TunnelReply {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            TunnelReply::Ok => 0,
            TunnelReply::BadHeader => 1,
            TunnelReply::UnknownMigration => 2,
            TunnelReply::Forbidden => 3,
            TunnelReply::LocalRefused => 4,
            TunnelReply::NoRoute => 5,
        }
    }

    /// Reads the byte; `None` for a code this build does not know.
    pub fn from_code(c: u8) -> Option<TunnelReply> {
        Some(match c {
            0 => TunnelReply::Ok,
            1 => TunnelReply::BadHeader,
            2 => TunnelReply::UnknownMigration,
            3 => TunnelReply::Forbidden,
            4 => TunnelReply::LocalRefused,
            5 => TunnelReply::NoRoute,
            _ => return None,
        })
    }

    /// What the source reports when the destination refused a stream.
    pub fn explain(self) -> &'static str {
        match self {
            TunnelReply::Ok => "accepted",
            TunnelReply::BadHeader => "the destination could not read the tunnel header",
            TunnelReply::UnknownMigration => {
                "the destination expects no tunnelled migration with this id (cancelled or timed out?)"
            }
            TunnelReply::Forbidden => {
                "the destination's access rules do not let this agent's certificate migrate guests there"
            }
            TunnelReply::LocalRefused => "the destination QEMU refused the connection",
            TunnelReply::NoRoute => "the destination has no socket for this kind of stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_messages_round_trip() {
        let id = Uuid::new_v4();
        for stream in [StreamKind::Memory, StreamKind::Nbd] {
            let h = TunnelHello { id, stream };
            assert_eq!(TunnelHello::decode(&h.encode()), Ok(h));
        }
        for r in [
            TunnelReply::Ok,
            TunnelReply::BadHeader,
            TunnelReply::UnknownMigration,
            TunnelReply::Forbidden,
            TunnelReply::LocalRefused,
            TunnelReply::NoRoute,
        ] {
            assert_eq!(TunnelReply::from_code(r.code()), Some(r));
        }
        assert_eq!(TunnelReply::from_code(200), None);
    }

    #[test]
    fn bad_tunnel_headers_are_refused() {
        let good = TunnelHello {
            id: Uuid::nil(),
            stream: StreamKind::Nbd,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(TunnelHello::decode(&b), Err(TunnelHeaderError::Magic));
        let mut b = good;
        b[7] = 9;
        assert_eq!(TunnelHello::decode(&b), Err(TunnelHeaderError::Version(9)));
        let mut b = good;
        b[24] = 0;
        assert_eq!(TunnelHello::decode(&b), Err(TunnelHeaderError::Kind(0)));
        let mut b = good;
        b[31] = 1;
        assert_eq!(TunnelHello::decode(&b), Err(TunnelHeaderError::Reserved));
        // An HTTP request sent to the tunnel port by mistake.
        let mut b = [0u8; TUNNEL_HELLO_LEN];
        b.copy_from_slice(&b"POST /api/v1/call HTTP/1.1\r\nHost: x"[..32]);
        assert!(TunnelHello::decode(&b).is_err());
    }
}
