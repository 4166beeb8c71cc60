//! The agent's own NFSv3 client conversations with an export (the
//! `nfs3_client` crate): space, listing, lookup, small reads and writes,
//! removal. QEMU's libnfs speaks the same protocol to the same server.

use super::{NetfsError, Result};
use nfs3_client::nfs3_types::nfs3::{
    self, createhow3, diropargs3, filename3, nfs_fh3, sattr3, stable_how, CREATE3args, FSSTAT3args,
    LOOKUP3args, Nfs3Option, Nfs3Result, READ3args, READDIR3args, REMOVE3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use nfs3_client::Nfs3ConnectionBuilder;
use std::time::Duration;
use tern_model::NetfsSource;

/// How long one NFS conversation (mount + calls) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Space on the export, as `statvfs` would give it for a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Bytes free for the caller.
    pub available: u64,
}

type Conn = nfs3_client::Nfs3Connection<nfs3_client::tokio::TokioIo<tokio::net::TcpStream>>;

/// A short NFSv3 conversation with an export, as root (AUTH_SYS uid 0, the
/// identity QEMU's libnfs uses when the agent runs it as root).
pub struct Export<'a> {
    src: &'a NetfsSource,
}

impl<'a> Export<'a> {
    /// Talks to `src`.
    pub fn new(src: &'a NetfsSource) -> Self {
        Export { src }
    }

    fn call_err(&self, op: &'static str, message: impl std::fmt::Display) -> NetfsError {
        NetfsError::Call {
            op,
            host: self.src.host.clone(),
            path: self.src.path.clone(),
            message: message.to_string(),
        }
    }

    async fn connect(&self) -> Result<Conn> {
        let host = &self.src.host;
        let ip = tokio::net::lookup_host((host.as_str(), 111))
            .await
            .map_err(|source| NetfsError::Resolve {
                host: host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| NetfsError::Resolve {
                host: host.clone(),
                source: std::io::Error::other("no address"),
            })?
            .ip();
        let cred = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"ternd"),
            uid: 0,
            gid: 0,
            gids: vec![],
        });
        Nfs3ConnectionBuilder::new(TokioConnector, ip.to_string(), &self.src.path)
            .connect_from_privileged_port(false)
            .credential(cred)
            .mount()
            .await
            .map_err(|e| NetfsError::Connect {
                host: host.clone(),
                path: self.src.path.clone(),
                message: e.to_string(),
            })
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(CALL_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| {
                Err(NetfsError::Timeout {
                    host: self.src.host.clone(),
                    secs: CALL_TIMEOUT.as_secs(),
                })
            })
    }

    /// Mounts, reads the space figures and unmounts: proof the export works.
    pub async fn space(&self) -> Result<Space> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let r = c
                .fsstat(&FSSTAT3args { fsroot: root })
                .await
                .map_err(|e| self.call_err("FSSTAT", e))?;
            let _ = c.unmount().await;
            match r {
                Nfs3Result::Ok(ok) => Ok(Space {
                    total: ok.tbytes,
                    free: ok.fbytes,
                    available: ok.abytes,
                }),
                Nfs3Result::Err((st, _)) => Err(self.call_err("FSSTAT", format!("{st:?}"))),
            }
        })
        .await
    }

    /// Names in the export's top directory, without `.` and `..`.
    pub async fn list(&self) -> Result<Vec<String>> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let mut names = Vec::new();
            let mut cookie = nfs3::cookie3::default();
            let mut cookieverf = nfs3::cookieverf3::default();
            loop {
                let r = c
                    .readdir(&READDIR3args {
                        dir: root.clone(),
                        cookie,
                        cookieverf,
                        count: 64 * 1024,
                    })
                    .await
                    .map_err(|e| self.call_err("READDIR", e))?;
                let ok = match r {
                    Nfs3Result::Ok(ok) => ok,
                    Nfs3Result::Err((st, _)) => {
                        return Err(self.call_err("READDIR", format!("{st:?}")))
                    }
                };
                let entries = ok.reply.entries.into_inner();
                for e in &entries {
                    let n = String::from_utf8_lossy(e.name.0.as_ref()).into_owned();
                    if n != "." && n != ".." {
                        names.push(n);
                    }
                }
                match entries.last() {
                    Some(last) if !ok.reply.eof => {
                        cookie = last.cookie;
                        cookieverf = ok.cookieverf;
                    }
                    _ => break,
                }
            }
            let _ = c.unmount().await;
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn lookup_in(&self, c: &mut Conn, root: &nfs_fh3, name: &str) -> Result<bool> {
        Ok(self.handle_of(c, root, name).await?.is_some())
    }

    async fn handle_of(&self, c: &mut Conn, root: &nfs_fh3, name: &str) -> Result<Option<nfs_fh3>> {
        let r = c
            .lookup(&LOOKUP3args {
                what: diropargs3 {
                    dir: root.clone(),
                    name: filename3::from(name.as_bytes()),
                },
            })
            .await
            .map_err(|e| self.call_err("LOOKUP", e))?;
        match r {
            Nfs3Result::Ok(ok) => Ok(Some(ok.object)),
            Nfs3Result::Err((nfs3::nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
            Nfs3Result::Err((st, _)) => Err(self.call_err("LOOKUP", format!("{st:?}"))),
        }
    }

    /// Writes a small file `name` in the export's top directory (created or
    /// truncated), synchronously.
    pub async fn write_small(&self, name: &str, data: &[u8]) -> Result<()> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let attrs = sattr3 {
                size: nfs3::set_size3::Some(0),
                ..Default::default()
            };
            let r = c
                .create(&CREATE3args {
                    where_: diropargs3 {
                        dir: root.clone(),
                        name: filename3::from(name.as_bytes()),
                    },
                    how: createhow3::UNCHECKED(attrs),
                })
                .await
                .map_err(|e| self.call_err("CREATE", e))?;
            let fh = match r {
                Nfs3Result::Ok(ok) => match ok.obj {
                    Nfs3Option::Some(fh) => fh,
                    Nfs3Option::None => self
                        .handle_of(&mut c, &root, name)
                        .await?
                        .ok_or_else(|| self.call_err("CREATE", "no file handle"))?,
                },
                Nfs3Result::Err((st, _)) => return Err(self.call_err("CREATE", format!("{st:?}"))),
            };
            let r = c
                .write(&WRITE3args {
                    file: fh,
                    offset: 0,
                    count: data.len() as u32,
                    stable: stable_how::FILE_SYNC,
                    data: Opaque::borrowed(data),
                })
                .await
                .map_err(|e| self.call_err("WRITE", e))?;
            let _ = c.unmount().await;
            match r {
                Nfs3Result::Ok(_) => Ok(()),
                Nfs3Result::Err((st, _)) => Err(self.call_err("WRITE", format!("{st:?}"))),
            }
        })
        .await
    }

    /// Reads up to 4 KiB of `name` in the export's top directory; `None`
    /// when it does not exist.
    pub async fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let Some(fh) = self.handle_of(&mut c, &root, name).await? else {
                let _ = c.unmount().await;
                return Ok(None);
            };
            let r = c
                .read(&READ3args {
                    file: fh,
                    offset: 0,
                    count: 4096,
                })
                .await
                .map_err(|e| self.call_err("READ", e))?;
            let _ = c.unmount().await;
            match r {
                Nfs3Result::Ok(ok) => Ok(Some(ok.data.as_ref().to_vec())),
                Nfs3Result::Err((st, _)) => Err(self.call_err("READ", format!("{st:?}"))),
            }
        })
        .await
    }

    /// Whether `name` exists in the export's top directory.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let found = self.lookup_in(&mut c, &root, name).await;
            let _ = c.unmount().await;
            found
        })
        .await
    }

    /// Removes `name` from the export's top directory.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.timed(async {
            let mut c = self.connect().await?;
            let root = c.root_nfs_fh3();
            let r = c
                .remove(&REMOVE3args {
                    object: diropargs3 {
                        dir: root,
                        name: filename3::from(name.as_bytes()),
                    },
                })
                .await
                .map_err(|e| self.call_err("REMOVE", e))?;
            let _ = c.unmount().await;
            match r {
                Nfs3Result::Ok(_) => Ok(()),
                Nfs3Result::Err((st, _)) => Err(self.call_err("REMOVE", format!("{st:?}"))),
            }
        })
        .await
    }
}
