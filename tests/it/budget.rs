//! The descriptor budget and tunnel linger (issue 14, items 1 and 3): the real proxy under a
//! low `nofile`, clients that hold many upstream connections to a backend that does not
//! answer, and WebSockets whose backend keeps silent after the client left. The proxy's
//! descriptors are counted in /proc/PID/fd.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::hostile::{open_fds, raise_fd_limit};
use super::util::*;

/// The open-file limit (soft and hard) the proxy runs under here.
const NOFILE: u64 = 256;

/// `wharf proxy` with `nofile` descriptors at most and `config` as its config.toml; its port.
fn proxy_with(sb: &Sandbox, nofile: u64, config: &str) -> (Proc, u16) {
    sb.config(config);
    proxy_with_fds(sb, nofile)
}

fn alias(sb: &Sandbox, name: &str, port: u16) {
    let (status, log) = sb.output(&["alias", name, &port.to_string()]);
    assert!(status.success(), "{log}");
}

/// A proxy in `sb` under `NOFILE` with a `Silent` backend as `silent.localhost` (and the
/// test's own limit raised).
fn silent_behind_proxy(sb: &Sandbox) -> (Proc, u16, Silent) {
    raise_fd_limit();
    let (proxy, port) = proxy_with(sb, NOFILE, "");
    let silent = Silent::start();
    alias(sb, "silent", silent.port);
    (proxy, port, silent)
}

/// A backend that reads each request head and answers nothing until `release`, then 200.
struct Silent {
    port: u16,
    connections: Arc<AtomicUsize>,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let (count, gate) = (connections.clone(), released.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let _ = read_head(&mut stream);
                    let (lock, cv) = &*gate;
                    let open = cv
                        .wait_timeout_while(lock.lock().unwrap(), PATIENCE * 3, |r| !*r)
                        .unwrap();
                    if *open.0 {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                });
            }
        });
        Silent {
            port,
            connections,
            released,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

/// Everything up to the end of a request or response head (empty if the peer closed first).
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A backend that answers 200 to every request at once.
fn answering() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                while !read_head(&mut stream).is_empty() {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// `clients` HTTP/2 (prior knowledge) connections to the proxy, each sending `streams` GETs
/// for `host` at once; each stream's status (0: failed) arrives on the channel.
fn h2_clients(
    rt: &tokio::runtime::Runtime,
    port: u16,
    host: &str,
    clients: usize,
    streams: usize,
) -> std::sync::mpsc::Receiver<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..clients {
        let (tx, uri) = (tx.clone(), format!("http://{host}:{port}/"));
        rt.spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for _ in 0..streams {
                let (mut sender, tx) = (sender.clone(), tx.clone());
                let req = http::Request::get(&uri).body(Empty::<bytes::Bytes>::new());
                tokio::spawn(async move {
                    let status = match sender.send_request(req.unwrap()).await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let _ = res.into_body().collect().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    let _ = tx.send(status);
                });
            }
        });
    }
    rx
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain HTTP/1.1 GET through the proxy: its status, or the error.
fn status(port: u16, host: &str) -> Result<u16, String> {
    get(([127, 0, 0, 1], port).into(), host, "/")
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
}

fn no_emfile(proxy: &Proc) {
    assert_eq!(
        proxy.count_lines(|l| l.contains("accept failed") || l.contains("Too many open files")),
        0,
        "{}",
        proxy.log()
    );
}

/// The attack from issue 14: two h2c clients, 128 streams each, to a backend that never
/// answers, with `nofile` 256. It took every descriptor (EMFILE in accept, 502s and timeouts
/// for everyone else); now each client holds at most an eighth of the budget.
#[test]
fn two_h2c_clients_with_128_silent_streams_each_leave_descriptors_for_everyone_else() {
    let sb = Sandbox::new();
    let (proxy, port, silent) = silent_behind_proxy(&sb);
    alias(&sb, "fine", answering());
    let rt = runtime();
    let _streams = h2_clients(&rt, port, "silent.localhost", 2, 128);
    // Both clients are being served (each stream is a connection to the backend).
    eventually("both clients' streams reach the backend", PATIENCE, || {
        silent.connections() >= 32
    });
    for _ in 0..20 {
        assert_eq!(status(port, "fine.localhost"), Ok(200), "{}", proxy.log());
    }
    let proxy_pid = proxy.pid();
    let fds = open_fds(proxy_pid);
    assert!(fds < 128, "{fds} descriptors open");
    assert!(
        silent.connections() <= NOFILE as usize / 4,
        "{} upstream connections for two clients",
        silent.connections()
    );
    no_emfile(&proxy);
    silent.release();
}

/// More h2c streams than the budget has descriptors: those without one get 503 at once, the
/// rest are served when the backend answers, nothing is refused in accept, and the budget is
/// whole again afterwards.
#[test]
fn h2c_streams_over_the_descriptor_budget_get_503_and_the_rest_are_served() {
    let sb = Sandbox::new();
    let (proxy, port, silent) = silent_behind_proxy(&sb);
    let rt = runtime();
    let (clients, streams) = (12, 24);
    let results = h2_clients(&rt, port, "silent.localhost", clients, streams);
    let total = clients * streams;
    // The streams that got no descriptor are answered while the backend is still silent.
    let mut statuses = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while statuses.len() + silent.connections() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(status) => statuses.push(status),
            Err(_) => assert!(
                Instant::now() < deadline,
                "{} answered, {} at the backend, of {total}\n{}",
                statuses.len(),
                silent.connections(),
                proxy.log()
            ),
        }
    }
    assert!(!statuses.is_empty(), "the budget was never full");
    assert!(
        statuses.iter().all(|s| *s == 503),
        "before the backend answered: {statuses:?}"
    );
    let fds = open_fds(proxy.pid());
    assert!(fds < NOFILE as usize, "{fds} descriptors open");
    no_emfile(&proxy);

    // Everyone admitted is served.
    silent.release();
    while statuses.len() < total {
        statuses.push(results.recv_timeout(PATIENCE).expect("every stream ends"));
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(served + refused, total, "{statuses:?}");
    assert_eq!(served, silent.connections());
    no_emfile(&proxy);
}

// More HTTP/1.1 clients, each with a request the backend does not answer, than the budget
// has room for (each needs two descriptors): those over it get 503 at once, in accept no
// descriptor ever runs out, and the admitted ones are served.
h1test!(
    http1_clients_over_the_descriptor_budget_get_503_and_the_rest_are_served,
    |sb: Sandbox| {
        let (proxy, port, silent) = silent_behind_proxy(&sb);
        let clients: Vec<TcpStream> = (0..NOFILE / 2)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: silent.localhost\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        // Refusals come at once (a 503; past a few at a time, a close); each admitted client
        // waits at the backend. Every client is one or the other once the refusals are in
        // and the admitted requests have reached the backend, however late each comes.
        let total = clients.len();
        let mut pending: Vec<(TcpStream, Vec<u8>)> = clients
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true).unwrap();
                (s, Vec::new())
            })
            .collect();
        let (mut refused, mut closed) = (0, 0);
        let deadline = Instant::now() + PATIENCE;
        while refused + closed + silent.connections() < total {
            pending.retain_mut(|(s, got)| {
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // Closed, or reset.
                    _ if got.is_empty() => {
                        closed += 1;
                        return false;
                    }
                    _ => {}
                }
                if got.len() < 12 {
                    return true;
                }
                assert_eq!(&got[..12], b"HTTP/1.1 503", "{}", proxy.log());
                refused += 1;
                false
            });
            assert!(
                Instant::now() < deadline,
                "{refused} refused, {closed} closed, {} at the backend, of {total}",
                silent.connections()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let admitted: Vec<TcpStream> = pending
            .into_iter()
            .map(|(s, got)| {
                assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
                s.set_nonblocking(false).unwrap();
                s
            })
            .collect();
        assert!(refused > 0, "no 503 ({closed} closed)");
        eventually("every admitted client at the backend", PATIENCE, || {
            silent.connections() == admitted.len()
        });
        let fds = open_fds(proxy.pid());
        assert!(fds < NOFILE as usize, "{fds} descriptors open");
        no_emfile(&proxy);
        silent.release();
        for mut s in admitted {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            assert!(read_head(&mut s).starts_with("HTTP/1.1 200"));
        }
        // They have left; their descriptors come back as the proxy sees them go.
        eventually("a new client is served", PATIENCE, || {
            status(port, "silent.localhost") == Ok(200)
        });
    }
);

/// A WebSocket backend that answers 101 and then never closes its side, not even after the
/// proxy ended it; how many upgrades it saw ended by the proxy (EOF).
fn mute_websocket_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ended = Arc::new(AtomicUsize::new(0));
    let count = ended.clone();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let count = count.clone();
            let _ = read_head(&mut stream);
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            );
            let mut reader = stream.try_clone().unwrap();
            kept.push(stream);
            std::thread::spawn(move || {
                let mut sink = [0u8; 1024];
                while let Ok(1..) = reader.read(&mut sink) {}
                count.fetch_add(1, Ordering::SeqCst);
                // Held open: the backend never closes its side.
                std::thread::sleep(PATIENCE * 3);
            });
        }
    });
    (port, ended)
}

// 50 WebSockets whose client left while the backend stays silent held two descriptors each
// for ever (CLOSE-WAIT); now each closes once the linger (1 s here) has passed.
h1test!(
    half_closed_websockets_close_after_the_linger,
    |sb: Sandbox| {
        let (proxy, port) = proxy_with(&sb, 1024, "[proxy]\ntunnel_linger = 1\n");
        let (backend, ended) = mute_websocket_backend();
        alias(&sb, "ws", backend);
        assert_eq!(status(port, "localhost"), Ok(200));
        let baseline = open_fds(proxy.pid());
        let tunnels = 50;
        let mut open = Vec::new();
        for _ in 0..tunnels {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
            let head = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            open.push(s);
        }
        let during = open_fds(proxy.pid());
        assert!(during > baseline + tunnels, "{baseline} → {during}");
        // The clients leave; their half-close reaches the backend, which keeps silent.
        let left = Instant::now();
        drop(open);
        eventually("the backend sees each client leave", PATIENCE, || {
            ended.load(Ordering::SeqCst) == tunnels
        });
        eventually("the tunnels' descriptors closed", PATIENCE, || {
            open_fds(proxy.pid()) <= baseline + 2
        });
        assert!(
            left.elapsed() >= Duration::from_secs(1),
            "closed before the linger: {:?}",
            left.elapsed()
        );
    }
);
