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
//!
//! A TLS 1.3 server sends its session tickets once the client's Finished is in, a write of
//! their own that the client wakes for. `Wire` holds them back until the first answer, and
//! they go in its write. A ticket is good for one resumption (they name sessions kept in the
//! proxy's memory, and a resumption takes its session out), and each costs the client a
//! session to make and keep, so a client that comes back with one gets one in its place, and
//! a new client two, for a second connection opened at once (as OpenSSL, and so nginx, does;
//! rustls alone sends the same number every time).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{Accepted, Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;
use tokio_rustls::server::TlsStream;

use crate::ca::leaves::Leaves;
use crate::model::host::{self, Target};
use crate::proxy::budget::Held;
use crate::proxy::lane::Replay;
use crate::proxy::routes::{Resolved, Routes};

/// A fatal `unrecognized_name` alert (RFC 6066 §3), as a TLS record.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
/// A fatal `internal_error` alert: the name is fine, but there is no CA to vouch for it (its
/// reason is in the proxy's log).
const INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

/// The first byte of an application-data record. In TLS 1.3 everything encrypted goes out as
/// one (RFC 8446 §5.2), but a server's handshake flight starts with its plaintext ServerHello
/// (or HelloRetryRequest), and in TLS 1.2 no such record comes before the handshake's end: one
/// written while the handshake runs is what the server sends after its Finished, the tickets
/// (or an alert).
const APPLICATION_DATA: u8 = 0x17;

/// What ALPN settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    Http1,
    Http2,
}

pub(crate) struct Tls {
    state: std::path::PathBuf,
    /// Made on first use; the error is said once, and every later handshake is closed.
    config: OnceLock<Option<Configs>>,
}

/// The server's configuration twice, alike (one session cache, one certificate resolver) but
/// for how many TLS 1.3 session tickets a handshake ends with.
struct Configs {
    /// For a client that offers no ticket: two.
    new: Arc<ServerConfig>,
    /// For one that offers a ticket: one, in place of the one it spent (also when the ticket
    /// turns out stale and the handshake is a full one: the client still gets one).
    returning: Arc<ServerConfig>,
}

impl Tls {
    /// HTTPS with the CA in the state directory `state`.
    pub(crate) fn new(state: std::path::PathBuf) -> Tls {
        Tls {
            state,
            config: OnceLock::new(),
        }
    }

    fn config(&self) -> Option<&Configs> {
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
    ) -> Option<(TlsStream<Wire<I>>, Alpn)>
    where
        I: AsyncRead + AsyncWrite + OnSocket + Unpin,
    {
        let handshake = async {
            let mut io = Wire {
                inner: io,
                held: Vec::new(),
                // Where the ACK can be sent without them (TCP_QUICKACK).
                handshaking: cfg!(target_os = "linux"),
            };
            let (hello, returning) = read_hello(&mut io).await?;
            let known = knows(hello.client_hello().server_name(), routes);
            let refusal = match (known, self.config()) {
                (true, Some(configs)) if returning => Ok(configs.returning.clone()),
                (true, Some(configs)) => Ok(configs.new.clone()),
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
            let mut stream = match StartHandshake::from_parts(hello, io)
                .into_stream(config)
                .into_fallible()
                .await
            {
                Ok(stream) => stream,
                Err((_, mut io)) => {
                    // The alert that says why, if rustls wrote one (held, if encrypted).
                    let _ = io.shutdown().await;
                    return None;
                }
            };
            let wire = &mut stream.get_mut().0;
            wire.handshaking = false;
            if !wire.held.is_empty() {
                // The tickets carried the ACK of the client's Finished; without them it would
                // wait for the answer, and a client with Nagle's algorithm on holds its
                // request until it comes (a delayed ACK, 40 ms).
                ack_now(wire.inner.socket());
            }
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::Http2,
                _ => Alpn::Http1,
            };
            Some((stream, alpn))
        };
        tokio::time::timeout(within, handshake).await.ok().flatten()
    }
}

/// The socket under a TLS session: it passes everything through, but what the session writes
/// after its side of the handshake while the handshake runs (TLS 1.3's session tickets, queued
/// by rustls when the client's Finished is in and written by tokio-rustls before the handshake
/// resolves) is held and goes in front of the next write (the first answer, or HTTP/2's
/// SETTINGS), in the same system call, or else with the shutdown. Nothing the client waits
/// for is held: it needs no ticket to send its request, and the handshake's own records (all
/// of TLS 1.2's, and TLS 1.3's flight, which starts with a plaintext ServerHello) pass. Only
/// on Linux, where the ACK the tickets carried can go without them (the client's Finished
/// is ACKed at once instead).
pub(crate) struct Wire<I> {
    inner: I,
    /// Records held back, in order; every later write goes after them.
    held: Vec<u8>,
    /// The handshake is running, and application-data records are held (never where no ACK
    /// can be sent without them).
    handshaking: bool,
}

/// ACK what `socket` has read, now (`Wire` holds nothing where this cannot).
fn ack_now(socket: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// The TCP socket under a stream, for what only it can do (an ACK at once).
pub(crate) trait OnSocket {
    fn socket(&self) -> &TcpStream;
}

impl OnSocket for Held<Replay<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().get_ref()
    }
}

impl<I> Wire<I> {
    pub(crate) fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncWrite + Unpin> Wire<I> {
    /// Write out what is held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Wire<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Wire<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find_map(|b| b.first());
        if this.handshaking && first == Some(&APPLICATION_DATA) {
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        // What is held goes first, in the same write when the stream takes several buffers.
        while !this.held.is_empty() && len > 0 {
            let mut all = Vec::with_capacity(bufs.len() + 1);
            all.push(io::IoSlice::new(&this.held));
            all.extend(bufs.iter().map(|b| io::IoSlice::new(b)));
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &all))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let past = n - this.held.len();
            this.held = Vec::new();
            if past > 0 {
                return Poll::Ready(Ok(past));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is held waits for a write even so: tokio-rustls flushes after the handshake,
        // and hyper flushes before it has written anything.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The most of a ClientHello's bytes kept to look for a ticket in (a hello with a
/// post-quantum key share is under 2 KiB); past it, the hello counts as offering none.
const HELLO_KEPT: usize = 16 * 1024;

/// Read until a whole ClientHello is in, and whether it offers a session ticket. A malformed
/// one is answered with rustls's alert.
async fn read_hello<I>(io: &mut I) -> Option<(Accepted, bool)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut acceptor = Acceptor::default();
    // On the heap: a connection's future carries what is on its stack across awaits. What is
    // read stays, after what came before, for `offers_ticket`.
    let mut buf = vec![0u8; 2048];
    let mut kept = 0;
    let mut whole = true;
    loop {
        if kept == buf.len() {
            if buf.len() < HELLO_KEPT {
                buf.resize(buf.len() * 2, 0);
            } else {
                (kept, whole) = (0, false);
            }
        }
        let n = io.read(&mut buf[kept..]).await.ok()?;
        if n == 0 {
            return None;
        }
        let mut read = &buf[kept..kept + n];
        kept += n;
        while !read.is_empty() {
            acceptor.read_tls(&mut read).ok()?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Some((accepted, whole && offers_ticket(&buf[..kept]))),
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

/// Whether the ClientHello that `wire` (the records that carry it) starts with offers a TLS
/// 1.3 session ticket: has a `pre_shared_key` extension (RFC 8446 §4.2.11). What cannot be
/// read counts as no.
fn offers_ticket(wire: &[u8]) -> bool {
    /// Handshake records (RFC 8446 §5.1) and the ClientHello message (§4.1.2).
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    const PRE_SHARED_KEY: u16 = 41;
    // The message from its records' fragments (almost always one record, borrowed).
    let mut message = std::borrow::Cow::Borrowed(&[][..]);
    let mut rest = wire;
    while let [HANDSHAKE, _, _, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(fragment) = tail.get(..len) else {
            break;
        };
        if message.is_empty() {
            message = std::borrow::Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }
        rest = &tail[len..];
    }
    let extensions = || -> Option<bool> {
        let mut r = Reader(&message);
        if r.u8()? != CLIENT_HELLO {
            return None;
        }
        let len = r.u24()?;
        let mut hello = Reader(r.take(len)?);
        hello.take(2 + 32)?; // version, random
        let n = hello.u8()?.into();
        hello.take(n)?; // session id
        let n = hello.u16()?.into();
        hello.take(n)?; // cipher suites
        let n = hello.u8()?.into();
        hello.take(n)?; // compression methods
        let n = hello.u16()?.into();
        let mut extensions = Reader(hello.take(n)?);
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let n = extensions.u16()?.into();
            extensions.take(n)?;
            if kind == PRE_SHARED_KEY {
                return Some(true);
            }
        }
        Some(false)
    };
    extensions().unwrap_or(false)
}

/// Big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
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

fn server_config(state: &std::path::Path) -> anyhow::Result<Configs> {
    let ca = crate::ca::Authority::open_or_create(state)?;
    let provider = Arc::new(rustls_graviola::default_provider());
    let leaves = Leaves::new(ca, provider.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { leaves }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 2;
    let mut returning = config.clone();
    returning.send_tls13_tickets = 1;
    Ok(Configs {
        new: Arc::new(config),
        returning: Arc::new(returning),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, HandshakeKind, NamedGroup, ServerConnection};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A client's session cache that counts the TLS 1.3 tickets it is given.
    #[derive(Debug)]
    struct Counting {
        cache: ClientSessionMemoryCache,
        tickets: AtomicUsize,
    }

    impl ClientSessionStore for Counting {
        fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
            self.cache.set_kx_hint(name, group)
        }
        fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
            self.cache.kx_hint(name)
        }
        fn set_tls12_session(
            &self,
            name: ServerName<'static>,
            value: rustls::client::Tls12ClientSessionValue,
        ) {
            self.cache.set_tls12_session(name, value)
        }
        fn tls12_session(
            &self,
            name: &ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            self.cache.tls12_session(name)
        }
        fn remove_tls12_session(&self, name: &ServerName<'static>) {
            self.cache.remove_tls12_session(name)
        }
        fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
            self.tickets.fetch_add(1, Ordering::Relaxed);
            self.cache.insert_tls13_ticket(name, value)
        }
        fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
            self.cache.take_tls13_ticket(name)
        }
    }

    /// A rustls client that trusts only the CA in `state`, keeping its tickets in `store`.
    fn client(state: &std::path::Path, store: Arc<Counting>) -> Arc<ClientConfig> {
        let ca = crate::ca::Authority::open(state).unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let der = crate::ca::pem_body(ca.cert_pem(), "CERTIFICATE").unwrap();
        roots.add(CertificateDer::from(der)).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls_graviola::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(store);
        Arc::new(config)
    }

    /// Everything a connection has to send.
    fn drain<T>(conn: &mut rustls::ConnectionCommon<T>) -> Vec<u8> {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Hand `bytes` to a connection.
    fn feed<T>(conn: &mut rustls::ConnectionCommon<T>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            conn.read_tls(&mut bytes).unwrap();
        }
    }

    /// A handshake of a new client connection with the server as `accept` picks its
    /// configuration, through to the tickets; returns the ClientHello's records and the
    /// client connection.
    fn handshake(configs: &Configs, client: &Arc<ClientConfig>) -> (Vec<u8>, ClientConnection) {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(client.clone(), name).unwrap();
        let hello = drain(&mut c);
        let config = match offers_ticket(&hello) {
            true => configs.returning.clone(),
            false => configs.new.clone(),
        };
        let mut s = ServerConnection::new(config).unwrap();
        feed(&mut s, &hello);
        s.process_new_packets().unwrap();
        loop {
            let out = drain(&mut s);
            feed(&mut c, &out);
            c.process_new_packets().unwrap();
            let back = drain(&mut c);
            if out.is_empty() && back.is_empty() {
                break;
            }
            feed(&mut s, &back);
            s.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (hello, c)
    }

    #[test]
    fn a_new_client_gets_two_tickets_and_a_returning_one_one_in_place_of_the_spent() {
        let tmp = tempfile::tempdir().unwrap();
        let configs = server_config(tmp.path()).unwrap();
        let store = Arc::new(Counting {
            cache: ClientSessionMemoryCache::new(8),
            tickets: AtomicUsize::new(0),
        });
        let client = client(tmp.path(), store.clone());
        let (hello, c) = handshake(&configs, &client);
        assert!(!offers_ticket(&hello));
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(store.tickets.load(Ordering::Relaxed), 2);
        for round in 0..3 {
            let (hello, c) = handshake(&configs, &client);
            assert!(offers_ticket(&hello), "round {round}");
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
            assert_eq!(store.tickets.load(Ordering::Relaxed), 3 + round);
        }
    }

    #[test]
    fn a_ticket_is_found_in_a_hello_split_over_records_and_none_in_a_cut_or_foreign_one() {
        let tmp = tempfile::tempdir().unwrap();
        let configs = server_config(tmp.path()).unwrap();
        let store = Arc::new(Counting {
            cache: ClientSessionMemoryCache::new(8),
            tickets: AtomicUsize::new(0),
        });
        let client = client(tmp.path(), store);
        let (fresh, _) = handshake(&configs, &client);
        let (hello, _) = handshake(&configs, &client);
        assert!(offers_ticket(&hello));
        // The same message in two records, as a client may send a long one.
        let message = &hello[5..];
        let (a, b) = message.split_at(100);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&hello[..3]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert!(offers_ticket(&split));
        // Cut short, or not a handshake record: no.
        for cut in [1, 5, 40, hello.len() - 1] {
            assert!(!offers_ticket(&hello[..cut]), "cut at {cut}");
        }
        let mut alert = hello.clone();
        alert[0] = 21;
        assert!(!offers_ticket(&alert));
        assert!(!offers_ticket(&fresh));
        assert!(!offers_ticket(b"GET / HTTP/1.1\r\n\r\n"));
    }
}
