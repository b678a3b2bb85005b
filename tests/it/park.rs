//! The park of idle connections (issue 19 item 3, `proxy::park`): a plain-HTTP connection
//! idle for `park_after` leaves its task for an epoll instance of the proxy's own, and must
//! come back and be served when it speaks, close at the deadline it had, and give its slot
//! back when its client closes. What is parked is read from /proc/PID/fdinfo: the sockets
//! in the proxy's epoll instances with the park's one-shot interest (tokio registers its
//! own edge-triggered, never one-shot).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::util::*;

const EPOLLIN: u32 = 0x1;
const EPOLLONESHOT: u32 = 1 << 30;

/// Connections parked in proxy `pid` now.
fn parked(pid: i32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut n = 0;
    for fd in fds.flatten() {
        let epoll = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[eventpoll]");
        if !epoll {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let info = std::fs::read_to_string(info).unwrap_or_default();
        n += info
            .lines()
            .filter(|l| l.starts_with("tfd:"))
            .filter_map(|l| l.split("events:").nth(1)?.split_whitespace().next())
            .filter_map(|mask| u32::from_str_radix(mask, 16).ok())
            .filter(|mask| mask & (EPOLLIN | EPOLLONESHOT) == EPOLLIN | EPOLLONESHOT)
            .count();
    }
    n
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn status(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

h1test!(
    a_parked_connection_is_served_when_it_speaks,
    |sb: Sandbox| {
        let sb = sb.limited("park_after=50ms");
        let p = sb.serve("parky", &[]);
        let port = p.url_port();
        let (pid, _) = sb.proxy().expect("a proxy was started");
        let get = b"GET / HTTP/1.1\r\nHost: parky.localhost\r\n\r\n";

        // A new connection that has not spoken yet parks in its first-byte wait...
        let mut s = connect(port);
        eventually("the new connection is parked", PATIENCE, || {
            parked(pid) == 1
        });
        // ...and is served when it does, by the lane or (express = false) by hyper.
        s.write_all(get).unwrap();
        let (head, _) = read_response(&mut s);
        assert_eq!(status(&head), "200", "{head}");

        if sb.engine() == Engine::Lane {
            // Idle between two requests, it parks again; a request the lane hands to hyper
            // (a chunked body) is then served by hyper, with the bytes the lane read.
            eventually("the idle connection is parked", PATIENCE, || {
                parked(pid) == 1
            });
            s.write_all(
                b"POST /up HTTP/1.1\r\nHost: parky.localhost\r\n\
                  Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            .unwrap();
            let (head, body) = read_response(&mut s);
            assert_eq!(status(&head), "200", "{head}");
            assert!(body.contains("\"received\": 5"), "{body}");
        }
        // And the connection goes on.
        s.write_all(get).unwrap();
        let (head, _) = read_response(&mut s);
        assert_eq!(status(&head), "200", "{head}");
        let requests = if sb.engine() == Engine::Lane { 3 } else { 2 };
        eventually("the instance saw each request once", PATIENCE, || {
            p.count_lines(|l| l.starts_with("REQ ")) == requests
        });
    }
);

/// Parked or not, a silent new connection closes at its first-byte deadline, and an idle
/// keep-alive one at its header deadline, counted from when its wait began.
#[test]
fn a_parked_connection_closes_at_its_deadline() {
    let sb = Sandbox::with_limits("park_after=50ms,first_byte=2,header_read=3");
    let p = sb.serve("sleepy", &[]);
    let port = p.url_port();
    let (pid, _) = sb.proxy().expect("a proxy was started");

    let started = Instant::now();
    let mut silent = connect(port);
    let mut idle = connect(port);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: sleepy.localhost\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut idle);
    assert_eq!(status(&head), "200", "{head}");
    let answered = Instant::now();
    eventually("both connections are parked", PATIENCE, || parked(pid) == 2);

    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).unwrap_or(0), 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    eventually("the park is empty", PATIENCE, || parked(pid) == 0);
}

/// Parked connections count among the clients (the cap holds), and one whose client closes
/// gives its place back without waiting for its deadline.
#[test]
fn a_client_closing_while_parked_frees_its_slot() {
    let sb = Sandbox::with_limits("park_after=50ms");
    // 64 fds → a budget of 48 (16 in reserve), a cap of 24 connections.
    let (proxy, port) = proxy_with_fds(&sb, 64);
    let mut held: Vec<TcpStream> = (0..24).map(|_| connect(port)).collect();
    eventually("24 connections are parked", PATIENCE, || {
        parked(proxy.pid()) == 24
    });
    let mut over = connect(port);
    let mut answer = String::new();
    let _ = over.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");

    held.truncate(20);
    eventually("the closed ones leave the park", PATIENCE, || {
        parked(proxy.pid()) == 20
    });
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), "200", "{head}");
}
