//! Hostile and heavy use of the proxy: slow clients, many connections, request smuggling
//! shapes. Each is bounded and talks to loopback only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::util::*;

/// Open-file limit up to the hard limit, for tests that hold many sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_thousand_slow_clients_do_not_delay_anyone_else() {
    raise_fd_limit();
    let sb = Sandbox::new();
    let p = sb.serve("busy", &[]);
    let port = p.url_port();
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: busy.loc").unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    let (status, _) = get(([127, 0, 0, 1], port).into(), "busy.localhost", "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        p.count_lines(|l| l.starts_with("REQ ")),
        1,
        "the slow ones never reached the backend"
    );
}

#[test]
fn file_descriptors_return_to_baseline_after_ten_thousand_connections() {
    let sb = Sandbox::new();
    let p = sb.serve("churn", &[]);
    let port = p.url_port();
    let (proxy_pid, _) = sb.proxy().unwrap();
    assert_eq!(
        get(([127, 0, 0, 1], port).into(), "churn.localhost", "/")
            .unwrap()
            .0,
        200
    );
    let baseline = open_fds(proxy_pid);
    for i in 0..10_000 {
        let (status, _) = get(([127, 0, 0, 1], port).into(), "churn.localhost", "/")
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200);
    }
    // Pooled upstream connections expire after 4 s idle.
    eventually("fds back to baseline", Duration::from_secs(15), || {
        open_fds(proxy_pid) <= baseline + 2
    });
}

/// Send `raw`, return everything the proxy answers before closing (or 5 s of silence).
fn exchange(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn smuggling_shapes_never_give_the_backend_a_request_the_proxy_did_not_answer() {
    let sb = Sandbox::new();
    let p = sb.serve("api", &[]);
    let port = p.url_port();
    p.report();
    let cases: [&[u8]; 4] = [
        // CL + TE: the proxy must pick one framing and re-frame; the "hidden" request is either
        // refused or answered by the proxy as a request of its own.
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n\r\n",
        // TE + TE.
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n\r\n",
        // An obfuscated TE the proxy cannot honour.
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n\r\n",
        // Bare LF line endings.
        b"GET / HTTP/1.1\nHost: api.localhost\nConnection: close\n\n",
    ];
    for raw in cases {
        let before = p.count_lines(|l| l.starts_with("REQ "));
        let answer = exchange(port, raw);
        let answered = answer.matches("HTTP/1.1 ").count();
        // Give the backend's log a moment to show what it received, bounded.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && p.count_lines(|l| l.starts_with("REQ ")) - before < answered
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let reached = p.count_lines(|l| l.starts_with("REQ ")) - before;
        assert!(
            reached <= answered,
            "{} requests reached the backend but the proxy answered {answered}:\n{}\n---\n{answer}",
            reached,
            String::from_utf8_lossy(raw)
        );
    }
}
