//! HTTPS on the proxy's own listeners. A connection whose first byte opens a TLS handshake
//! record (0x16; no HTTP request starts so) comes here from the lane; what it carries after
//! the handshake goes, as ALPN chose, to hyper's HTTP/2 or back to the lane as HTTP/1.1
//! (`proxy::accept`).
//!
//! The ClientHello is read first, and its name (SNI) decides: `localhost`, or a name the
//! proxy routes, gets a certificate for that name from the local CA (`ca::leaves`, issued on
//! first use); no name, an IP address, an unknown or a foreign name gets a fatal
//! `unrecognized_name` alert, never a certificate for a name that does not exist. The whole
//! handshake has `Limits::header_read`, the time a plain client has for its request head.
//! rustls does no renegotiation, and 0-RTT data is refused (`max_early_data_size` is 0).
//!
//! The CA and the server configuration are made on the first ClientHello, not at start: a
//! proxy nobody asks for HTTPS never touches them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{Accepted, Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::StartHandshake;
use tokio_rustls::server::TlsStream;

use crate::ca::leaves::Leaves;
use crate::model::host::{self, Target};
use crate::proxy::routes::{Resolved, Routes};

/// A fatal `unrecognized_name` alert (RFC 6066 §3), as a TLS record.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
/// A fatal `internal_error` alert: the name is fine, but there is no CA to vouch for it (its
/// reason is in the proxy's log).
const INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

/// What ALPN settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    Http1,
    Http2,
}

pub(crate) struct Tls {
    state: std::path::PathBuf,
    /// Made on first use; the error is said once, and every later handshake is closed.
    config: OnceLock<Option<Arc<ServerConfig>>>,
}

impl Tls {
    /// HTTPS with the CA in the state directory `state`.
    pub(crate) fn new(state: std::path::PathBuf) -> Tls {
        Tls {
            state,
            config: OnceLock::new(),
        }
    }

    fn config(&self) -> Option<&Arc<ServerConfig>> {
        self.config
            .get_or_init(|| match server_config(&self.state) {
                Ok(config) => Some(config),
                Err(e) => {
                    eprintln!("wharf proxy: HTTPS is off: {e:#}");
                    None
                }
            })
            .as_ref()
    }

    /// Shake hands with a client within `within`; `None` when refused or failed (the client
    /// was told what it could be told).
    pub(crate) async fn accept<I>(
        &self,
        io: I,
        routes: &Routes,
        within: Duration,
    ) -> Option<(TlsStream<I>, Alpn)>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let mut io = io;
            let hello = read_hello(&mut io).await?;
            let known = knows(hello.client_hello().server_name(), routes);
            let refusal = match (known, self.config()) {
                (true, Some(config)) => Ok(config.clone()),
                (false, _) => Err(UNRECOGNIZED_NAME),
                (true, None) => Err(INTERNAL_ERROR),
            };
            let config = match refusal {
                Ok(config) => config,
                Err(alert) => {
                    let _ = io.write_all(&alert).await;
                    let _ = io.shutdown().await;
                    return None;
                }
            };
            let stream = StartHandshake::from_parts(hello, io)
                .into_stream(config)
                .await
                .ok()?;
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::Http2,
                _ => Alpn::Http1,
            };
            Some((stream, alpn))
        };
        tokio::time::timeout(within, handshake).await.ok().flatten()
    }
}

/// Read until a whole ClientHello is in. A malformed one is answered with rustls's alert.
async fn read_hello<I>(io: &mut I) -> Option<Accepted>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut acceptor = Acceptor::default();
    // On the heap: a connection's future carries what is on its stack across awaits.
    let mut buf = vec![0u8; 2048];
    loop {
        let n = io.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let mut read = &buf[..n];
        while !read.is_empty() {
            acceptor.read_tls(&mut read).ok()?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Some(accepted),
            Ok(None) => {}
            Err((_, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = io.write_all(&out).await;
                return None;
            }
        }
    }
}

/// Whether the proxy answers for the name a ClientHello asks for: the dashboard's, or a
/// routed instance's (and the names under it), by the rules every request is routed by.
fn knows(sni: Option<&str>, routes: &Routes) -> bool {
    match sni.map(host::parse) {
        Some(Ok(Target::Dashboard)) => true,
        Some(Ok(Target::Instance { name })) => {
            matches!(routes.resolve(&name), Resolved::Found(..))
        }
        _ => false,
    }
}

fn server_config(state: &std::path::Path) -> anyhow::Result<Arc<ServerConfig>> {
    let ca = crate::ca::Authority::open_or_create(state)?;
    let provider = Arc::new(rustls_graviola::default_provider());
    let leaves = Leaves::new(ca, provider.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { leaves }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The certificate for the name asked for (already judged by `knows`).
struct Resolver {
    leaves: Leaves,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        match self.leaves.get(name.trim_end_matches('.')) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("wharf proxy: no certificate for {name}: {e}");
                None
            }
        }
    }
}
