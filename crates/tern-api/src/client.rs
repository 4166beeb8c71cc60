//! The host API client: one HTTP/1.1 request per call, over whatever byte
//! stream the connection URI names; a new connection per call unless the
//! client keeps one ([`Client::keep_alive`]).

use crate::transport::{last_stderr_line, SshStream, SshTarget, TlsTarget};
use crate::{ApiError, Request, API_VERSION, CALL_PATH, DEFAULT_SOCKET, VERSION_HEADER};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tern_model::uri::{ConnectUri, Transport};
use tern_pki::tls::Side;
use tern_pki::PkiDir;
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
    /// The client's certificates could not be loaded.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(#[from] tern_pki::TlsError),
    /// The TLS handshake or a TLS exchange failed.
    #[error("TLS connection to {target} failed: {reason}")]
    Tls {
        /// Peer.
        target: String,
        /// Why, in plain words.
        reason: String,
    },
    /// ssh could not be started or the remote end failed.
    #[error("ssh connection to {target} failed: {message}")]
    Ssh {
        /// Peer.
        target: String,
        /// ssh's own last words, or the I/O error.
        message: String,
    },
    /// The HTTP exchange failed.
    #[error("connection to {target} failed: {message}")]
    Http {
        /// Peer.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// A connection URI from another party that is never followed.
    #[error("refusing to connect to {target}: {reason}")]
    Untrusted {
        /// The URI.
        target: String,
        /// Why.
        reason: String,
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
    Tls(TlsTarget),
    Ssh(SshTarget),
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
    uri: Option<String>,
    /// The connection kept between calls, when the client keeps one.
    kept: Option<crate::kept::Kept>,
}

impl Client {
    /// Builds a client for a connection URI; TLS certificates come from
    /// `?pkipath=`, else `$TERN_PKI_DIR`, else /etc/pki/tern.
    pub fn from_uri(uri: &ConnectUri) -> Result<Client, ClientError> {
        Self::from_uri_with_pki(uri, &PkiDir::from_env())
    }

    /// Builds a client for a connection URI, with `pki` as the certificate
    /// directory unless the URI names one (`?pkipath=`). Agents pass their
    /// own directory, so an agent calling an agent presents its
    /// `clientcert.pem`, as libvirtd does.
    pub fn from_uri_with_pki(uri: &ConnectUri, pki: &PkiDir) -> Result<Client, ClientError> {
        let host = || uri.host.clone().unwrap_or_else(|| "localhost".into());
        let target = match uri.transport {
            Transport::Unix => Target::Unix(
                uri.socket_path()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            ),
            Transport::Tcp => Target::Tcp(
                uri.host.clone().unwrap_or_else(|| "localhost".into()),
                uri.port_or_default(),
            ),
            Transport::Tls => {
                let dir = uri.param("pkipath").map(PkiDir::new);
                let dir = dir.as_ref().unwrap_or(pki);
                Target::Tls(TlsTarget {
                    host: host(),
                    port: uri.port_or_default(),
                    config: tern_pki::client_config(dir)?,
                    pki_dir: dir.root().to_path_buf(),
                })
            }
            Transport::Ssh => Target::Ssh(SshTarget {
                user: uri.user.clone(),
                host: host(),
                port: uri.port_or_default(),
                socket: uri.param("socket").map(str::to_string),
                keyfile: uri.param("keyfile").map(str::to_string),
                no_verify: matches!(uri.param("no_verify"), Some("1" | "true" | "yes")),
                proxy: uri.param("proxy").unwrap_or("tern").to_string(),
                ssh: uri.param("command").unwrap_or("ssh").to_string(),
            }),
        };
        Ok(Client {
            target,
            timeout: CALL_TIMEOUT,
            uri: Some(uri.to_string()),
            kept: None,
        })
    }

    /// The connection URI this client was built from, if any: what a
    /// migration's driver tells each side about the other, so either can
    /// settle the migration if the driver vanishes.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// The same endpoint, known to others by `uri`.
    pub fn with_uri(mut self, uri: impl Into<String>) -> Client {
        self.uri = Some(uri.into());
        self
    }

    /// The same endpoint with another per-call time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Keeps one TCP or TLS connection open between this client's calls
    /// (and its clones'), instead of a new connection, and for TLS a new
    /// handshake, per call. An agent heartbeating its controller every
    /// second keeps one: thousands of agents each redoing a mutual-TLS
    /// handshake per heartbeat would spend the controller's CPU on
    /// handshakes. Calls made while another is in flight use a connection
    /// of their own, as without it.
    pub fn keep_alive(mut self) -> Client {
        self.kept = Some(crate::kept::Kept::default());
        self
    }

    /// A client for a unix socket path.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Unix(path.into()),
            timeout: CALL_TIMEOUT,
            uri: None,
            kept: None,
        }
    }

    /// A client for a TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Client {
        Client {
            target: Target::Tcp(host.into(), port),
            timeout: CALL_TIMEOUT,
            uri: None,
            kept: None,
        }
    }

    /// A client for a mutual-TLS endpoint at `host:port`, presenting
    /// `pki`'s client certificate (the controller's API, say).
    pub fn tls(host: impl Into<String>, port: u16, pki: &PkiDir) -> Result<Client, ClientError> {
        Ok(Client {
            target: Target::Tls(TlsTarget {
                host: host.into(),
                port,
                config: tern_pki::client_config(pki)?,
                pki_dir: pki.root().to_path_buf(),
            }),
            timeout: CALL_TIMEOUT,
            uri: None,
            kept: None,
        })
    }

    /// Human-readable description of the endpoint.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Unix(p) => format!("unix socket {}", p.display()),
            Target::Tcp(h, p)
            | Target::Tls(TlsTarget {
                host: h, port: p, ..
            }) if h.contains(':') => {
                format!("[{h}]:{p}")
            }
            Target::Tcp(h, p)
            | Target::Tls(TlsTarget {
                host: h, port: p, ..
            }) => {
                format!("{h}:{p}")
            }
            Target::Ssh(t) => match &t.user {
                Some(u) => format!("{u}@{}:{}", t.host, t.port),
                None => format!("{}:{}", t.host, t.port),
            },
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
        self.rest(Method::POST, CALL_PATH, Some(req)).await
    }

    /// `method` on a resource `path` (the controller's `/v1/...`), with an
    /// optional JSON body, decoding the JSON answer, within the call timeout.
    pub async fn rest<Q: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Q>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| self.encode(b)).transpose()?;
        let (status, bytes) = self
            .within_timeout(self.round_trip(method, path, body))
            .await?;
        self.decode(status, &bytes)
    }

    /// `GET path`, decoding the JSON answer, within the call timeout.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.rest::<(), T>(Method::GET, path, None).await
    }

    /// The whole body of `GET path` as text, with no call timeout: for a
    /// stream that ends when what it follows does (a job's server-sent
    /// events), however long that takes.
    pub async fn get_stream(&self, path: &str) -> Result<String, ClientError> {
        let (status, bytes) = self.round_trip(Method::GET, path, None).await?;
        if status >= 400 {
            return Err(self
                .decode::<serde_json::Value>(status, &bytes)
                .err()
                .unwrap_or_else(|| ClientError::Decode {
                    target: self.describe(),
                    message: format!("HTTP {status} without an error body"),
                }));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn encode<Q: Serialize>(&self, body: &Q) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            target: self.describe(),
            message: e.to_string(),
        })
    }

    async fn within_timeout<R>(
        &self,
        f: impl std::future::Future<Output = Result<R, ClientError>>,
    ) -> Result<R, ClientError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Http {
                target: self.describe(),
                message: format!("no answer within {} s", self.timeout.as_secs()),
            }),
        }
    }

    /// The answer's JSON, or the [`ApiError`] of a status of 400 or more.
    fn decode<T: DeserializeOwned>(&self, status: u16, bytes: &[u8]) -> Result<T, ClientError> {
        if status >= 400 {
            let err: ApiError = serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
                target: self.describe(),
                message: format!("HTTP {status}: {e}"),
            })?;
            return Err(ClientError::Api(err));
        }
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            target: self.describe(),
            message: e.to_string(),
        })
    }

    /// One HTTP exchange over the endpoint's transport: (status, body).
    async fn round_trip(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ClientError> {
        let req = Exchange { method, path, body };
        if let (Some(kept), Target::Tcp(..) | Target::Tls(_)) = (&self.kept, &self.target) {
            if let Ok(mut slot) = kept.try_lock() {
                let sent = self.kept_round_trip(&mut slot, req).await;
                return match &self.target {
                    Target::Tls(_) => sent.map_err(|e| self.tls_error(e)),
                    _ => sent,
                };
            }
        }
        Ok(match &self.target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|source| {
                    ClientError::Connect {
                        target: self.describe(),
                        source,
                    }
                })?;
                self.exchange(s, req).await?
            }
            Target::Tcp(h, port) => {
                self.exchange(self.connect_tcp(h, *port).await?, req)
                    .await?
            }
            Target::Tls(t) => {
                let s = self.connect_tls(t).await?;
                self.exchange(s, req).await.map_err(|e| self.tls_error(e))?
            }
            Target::Ssh(t) => {
                let mut s = SshStream::spawn(t).map_err(|e| ClientError::Ssh {
                    target: self.describe(),
                    message: format!("cannot run {}: {e}", t.ssh),
                })?;
                let stderr = s.take_stderr();
                match self.exchange(s, req).await {
                    Ok(r) => r,
                    Err(e) => {
                        let message = match last_stderr_line(stderr).await {
                            Some(line) => line,
                            None => e.to_string(),
                        };
                        return Err(ClientError::Ssh {
                            target: self.describe(),
                            message,
                        });
                    }
                }
            }
        })
    }

    async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, ClientError> {
        let s = connect_within(tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|source| ClientError::Connect {
                target: self.describe(),
                source,
            })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    async fn connect_tls(
        &self,
        t: &TlsTarget,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let tcp = self.connect_tcp(&t.host, t.port).await?;
        let name = tern_pki::tls::server_name(&t.host)?;
        let connector = tokio_rustls::TlsConnector::from(t.config.clone());
        connect_within(connector.connect(name, tcp))
            .await
            .map_err(|e| ClientError::Tls {
                target: self.describe(),
                reason: tern_pki::explain_tls_failure(&e, Side::Client)
                    .unwrap_or_else(|| e.to_string()),
            })
    }

    /// Turns an HTTP failure on a TLS connection into the TLS reason when
    /// there is one: with TLS 1.3 a server refuses a client certificate
    /// after the client thinks the handshake is done, so the refusal
    /// surfaces while the request is in flight.
    fn tls_error(&self, e: ClientError) -> ClientError {
        match &e {
            ClientError::Http { message, .. } => {
                let reason =
                    format!("{message}; the server may have refused our certificate (see its log)");
                ClientError::Tls {
                    target: self.describe(),
                    reason,
                }
            }
            _ => e,
        }
    }

    async fn exchange<S>(&self, stream: S, x: Exchange<'_>) -> Result<(u16, Bytes), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn_task) = self.handshake(stream).await?;
        let resp = sender
            .send_request(self.request(x)?)
            .await
            .map_err(|e| self.hyper_error(e));
        let out = match resp {
            Ok(resp) => self.read(resp).await,
            Err(e) => Err(e),
        };
        conn_task.abort();
        out
    }

    /// One call on the kept connection `slot`, which is (re)made when it
    /// is missing or was closed (by the server's idle timeout, say) before
    /// the request went out. A request that went out and failed is not
    /// sent again: the call fails, and the next one connects anew.
    async fn kept_round_trip(
        &self,
        slot: &mut Option<crate::kept::Sender>,
        x: Exchange<'_>,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut req = self.request(x)?;
        if let Some(sender) = slot.as_mut() {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return self.read(resp).await,
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => {
                            *slot = None;
                            return Err(self.hyper_error(e.into_error()));
                        }
                    },
                }
            }
        }
        self.kept_connect_and_send(slot, req).await
    }

    async fn kept_connect_and_send(
        &self,
        slot: &mut Option<crate::kept::Sender>,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), ClientError> {
        *slot = None;
        let (mut sender, _conn) = match &self.target {
            Target::Tcp(h, port) => self.handshake(self.connect_tcp(h, *port).await?).await?,
            Target::Tls(t) => self.handshake(self.connect_tls(t).await?).await?,
            Target::Unix(_) | Target::Ssh(_) => {
                unreachable!("only TCP and TLS connections are kept")
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.hyper_error(e))?;
        let out = self.read(resp).await?;
        *slot = Some(sender);
        Ok(out)
    }

    /// HTTP/1.1 over `stream`: the sender, and the task driving the
    /// connection (it ends when the sender is dropped or the peer closes).
    async fn handshake<S>(
        &self,
        stream: S,
    ) -> Result<(crate::kept::Sender, tokio::task::JoinHandle<()>), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.hyper_error(e))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, task))
    }

    /// A TLS refusal hides inside hyper's error: say it plainly.
    fn hyper_error(&self, e: hyper::Error) -> ClientError {
        match tern_pki::explain_tls_failure(&e, Side::Client) {
            Some(reason) => ClientError::Tls {
                target: self.describe(),
                reason,
            },
            None => ClientError::Http {
                target: self.describe(),
                message: e.to_string(),
            },
        }
    }

    fn request(&self, x: Exchange<'_>) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let mut req = hyper::Request::builder()
            .method(x.method)
            .uri(x.path)
            .header("host", "ternd")
            .header(VERSION_HEADER, API_VERSION.to_string());
        if x.body.is_some() {
            req = req.header("content-type", "application/json");
        }
        req.body(Full::new(Bytes::from(x.body.unwrap_or_default())))
            .map_err(|e| ClientError::Http {
                target: self.describe(),
                message: e.to_string(),
            })
    }

    async fn read(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(u16, Bytes), ClientError> {
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.hyper_error(e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// One request: method, path and JSON body.
struct Exchange<'a> {
    method: Method,
    path: &'a str,
    body: Option<Vec<u8>>,
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
