//! The host API client: one HTTP/1.1 request per call, over whatever byte
//! stream the connection URI names.

use crate::{ApiError, Request, API_VERSION, CALL_PATH, DEFAULT_SOCKET, VERSION_HEADER};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tern_model::uri::{ConnectUri, Transport};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Client-side failures.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error("cannot connect to {target}: {source}; is ternd running and listening there?")]
    Connect {
        /// What we tried to reach.
        target: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// This transport is not available in this build.
    #[error("transport '{0}' is not supported yet; use tern+unix or tern+tcp")]
    Transport(String),
    /// The HTTP exchange failed.
    #[error("connection to {target} failed: {message}")]
    Http {
        /// Peer.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// The server refused the request.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The answer was not what this client expects.
    #[error("cannot understand the reply from {target}: {message}; are client and server the same version?")]
    Decode {
        /// Peer.
        target: String,
        /// Parser message.
        message: String,
    },
}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String, u16),
}

/// How long establishing a connection may take: a peer behind a cut link
/// must fail a call in seconds, not after TCP's minutes of retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one call may take by default (Finish waits for QEMU to load).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A handle on one host API endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
}

impl Client {
    /// Builds a client for a connection URI.
    pub fn from_uri(uri: &ConnectUri) -> Result<Client, ClientError> {
        let target = match uri.transport {
            Transport::Unix => Target::Unix(
                uri.socket_path()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            ),
            Transport::Tcp => Target::Tcp(
                uri.host.clone().unwrap_or_else(|| "localhost".into()),
                uri.port_or_default(),
            ),
            Transport::Tls => return Err(ClientError::Transport("tls".into())),
            Transport::Ssh => return Err(ClientError::Transport("ssh".into())),
        };
        Ok(Client {
            target,
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same endpoint with another per-call time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// A client for a unix socket path.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Unix(path.into()),
            timeout: CALL_TIMEOUT,
        }
    }

    /// A client for a TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Client {
        Client {
            target: Target::Tcp(host.into(), port),
            timeout: CALL_TIMEOUT,
        }
    }

    /// Human-readable description of the endpoint.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Unix(p) => format!("unix socket {}", p.display()),
            Target::Tcp(h, p) if h.contains(':') => format!("[{h}]:{p}"),
            Target::Tcp(h, p) => format!("{h}:{p}"),
        }
    }

    /// Sends a request and decodes the result, within the call timeout.
    pub async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        self.call_json(req).await
    }

    /// Sends any request enum of the same transport (the cluster API's,
    /// say) and decodes the result, within the call timeout.
    pub async fn call_json<Q: Serialize + Sync, T: DeserializeOwned>(
        &self,
        req: &Q,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, self.call_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Http {
                target: self.describe(),
                message: format!("no answer within {} s", self.timeout.as_secs()),
            }),
        }
    }

    async fn call_inner<Q: Serialize + Sync, T: DeserializeOwned>(
        &self,
        req: &Q,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
            target: self.describe(),
            message: e.to_string(),
        })?;
        let (status, bytes) = match &self.target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|source| {
                    ClientError::Connect {
                        target: self.describe(),
                        source,
                    }
                })?;
                self.exchange(s, body).await?
            }
            Target::Tcp(h, port) => {
                let s = connect_within(tokio::net::TcpStream::connect((h.as_str(), *port)))
                    .await
                    .map_err(|source| ClientError::Connect {
                        target: self.describe(),
                        source,
                    })?;
                let _ = s.set_nodelay(true);
                self.exchange(s, body).await?
            }
        };
        if status >= 400 {
            let err: ApiError =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                    target: self.describe(),
                    message: format!("HTTP {status}: {e}"),
                })?;
            return Err(ClientError::Api(err));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            target: self.describe(),
            message: e.to_string(),
        })
    }

    async fn exchange<S>(&self, stream: S, body: Vec<u8>) -> Result<(u16, Bytes), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |message: String| ClientError::Http {
            target: self.describe(),
            message,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        let conn_task = tokio::spawn(conn);
        let req = hyper::Request::post(CALL_PATH)
            .header("host", "ternd")
            .header("content-type", "application/json")
            .header(VERSION_HEADER, API_VERSION.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        conn_task.abort();
        Ok((status, bytes))
    }
}

async fn connect_within<S>(
    f: impl std::future::Future<Output = std::io::Result<S>>,
) -> std::io::Result<S> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}
