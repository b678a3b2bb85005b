//! The forwarding and routing rules (HARDENING.md). Each case runs with both engines
//! (`h1test!`), and within each sends its requests in origin form (the lane's, when it is on)
//! and in absolute form (which the lane hands to hyper): a recording backend shows what
//! reached the instance, and each case demands the same there whichever path carried it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::express::{alias, connect, read_head};
use super::util::*;

/// One request as the backend received it.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    /// The request line before it on its connection ("" for the first).
    after: String,
    /// The header lines, names lowercased (hyper writes them so), sorted.
    headers: Vec<String>,
}

/// What the backend does with a request, once it has its head.
struct Reply {
    bytes: &'static [u8],
    /// Read the body first (`Content-Length` or chunked); else answer at once and close
    /// without reading it, as a server refusing an upload does.
    read_body: bool,
}

/// A backend that records every request head and answers as `script(request)` says.
struct Backend {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    fn start(script: fn(&Seen) -> Reply) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, script, &log);
                });
            }
        });
        Backend { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    script: fn(&Seen) -> Reply,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut after = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
            let (name, value) = header.trim_end().split_once(':').unwrap();
            headers.push(format!("{}: {}", name.to_ascii_lowercase(), value.trim()));
        }
        headers.sort();
        let seen = Seen {
            line: line.trim_end().to_string(),
            after: std::mem::take(&mut after),
            headers,
        };
        after.clone_from(&seen.line);
        log.lock().unwrap().push(seen.clone());
        let reply = script(&seen);
        if !reply.read_body {
            writer.write_all(reply.bytes)?;
            return Ok(());
        }
        read_body(&mut reader, &seen.headers)?;
        writer.write_all(reply.bytes)?;
    }
}

fn read_body(reader: &mut impl BufRead, headers: &[String]) -> std::io::Result<()> {
    if headers.iter().any(|h| h == "transfer-encoding: chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim_end(), 16).map_err(std::io::Error::other)?;
            if size == 0 {
                let mut end = String::new();
                reader.read_line(&mut end)?;
                return Ok(());
            }
            let mut data = vec![0u8; size + 2];
            reader.read_exact(&mut data)?;
        }
    }
    let length = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length: "))
        .map_or(0, |n| n.parse().unwrap());
    std::io::copy(&mut reader.take(length), &mut std::io::sink())?;
    Ok(())
}

const HOST: &str = "rules.localhost";

/// A request target's two forms, and how to write a bodiless request in each.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `/path`: the lane's, when it is on.
    Origin,
    /// `http://rules.localhost/path`: always hyper's (the lane hands it over).
    Absolute,
}

impl Form {
    const BOTH: [Form; 2] = [Form::Origin, Form::Absolute];

    /// A `method` request for `path` with `host` and the `extra` header lines, in this form.
    fn get(self, method: &str, path: &str, host: &str, extra: &str) -> String {
        let target = match self {
            Form::Origin => path.to_string(),
            Form::Absolute => format!("http://{HOST}{path}"),
        };
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
    }
}

fn ok(seen: &Seen) -> Reply {
    let _ = seen;
    Reply {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        read_body: true,
    }
}

/// The headers that reached the backend for one request sent in `form`.
fn headers_at_instance(backend: &Backend, port: u16, form: Form, extra: &str) -> Vec<String> {
    let before = backend.seen().len();
    let mut s = connect(port);
    s.write_all(form.get("GET", "/h", HOST, extra).as_bytes())
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok",
        "{form:?}: {head}"
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(last.line, "GET /h HTTP/1.1", "{form:?}");
    last.headers.clone()
}

h1test!(
    spoofed_forwarding_headers_are_dropped_the_same_on_both_paths,
    |sb: Sandbox| {
        let backend = Backend::start(ok);
        let port = alias(&sb, "rules", backend.port);
        let spoofs = "X_Forwarded_Host: evil.example\r\nX-Forwarded-Host: evil.example\r\n\
                  x_forwarded_proto: https\r\nX-Forwarded-Prefix: /evil\r\n\
                  X_Forwarded_For: 6.6.6.6\r\nForwarded: for=6.6.6.6;host=evil.example\r\n\
                  X-Real-IP: 6.6.6.6\r\nX_Real_Ip: 6.6.6.6\r\n\
                  X-Forwarded-For: 10.0.0.1\r\nVia: 1.0 fred\r\nX-Public: 1\r\n";
        let origin = headers_at_instance(&backend, port, Form::Origin, spoofs);
        let absolute = headers_at_instance(&backend, port, Form::Absolute, spoofs);
        assert_eq!(
            origin, absolute,
            "both paths give the instance the same headers"
        );
        assert_eq!(
            origin,
            [
                "host: rules.localhost",
                "via: 1.0 fred",
                "via: 1.1 wharf",
                "x-forwarded-for: 10.0.0.1, 127.0.0.1",
                "x-forwarded-host: rules.localhost",
                "x-forwarded-proto: http",
                "x-public: 1",
            ],
            "no underscore spelling, no Forwarded or X-Real-IP, the proxy's own X-Forwarded-*"
        );

        // A prior hop named by `Connection` is hop-by-hop: dropped on both paths alike.
        let named = "Connection: X-Forwarded-For\r\nX-Forwarded-For: 10.0.0.1\r\n";
        let origin = headers_at_instance(&backend, port, Form::Origin, named);
        let absolute = headers_at_instance(&backend, port, Form::Absolute, named);
        assert_eq!(origin, absolute);
        assert!(
            origin.contains(&"x-forwarded-for: 127.0.0.1".to_string()),
            "{origin:?}"
        );
    }
);

h1test!(
    a_via_naming_wharf_in_any_case_and_odd_host_ports_never_reach_the_instance,
    |sb: Sandbox| {
        let backend = Backend::start(ok);
        let port = alias(&sb, "rules", backend.port);
        let cases = [
            (HOST.to_string(), "Via: 1.1 WHARF\r\n", "508"),
            (HOST.to_string(), "Via: 1.0 fred, 1.1 Wharf\r\n", "508"),
            (format!("{HOST}:+80"), "", "400"),
            (format!("{HOST}:00080"), "", "400"),
        ];
        for form in Form::BOTH {
            for (host, extra, status) in &cases {
                let mut s = connect(port);
                s.write_all(form.get("GET", "/", host, extra).as_bytes())
                    .unwrap();
                let (head, _) = read_response(&mut s);
                assert!(
                    head.starts_with(&format!("HTTP/1.1 {status}")),
                    "{form:?} {host} {extra}: {head}"
                );
            }
        }
        assert!(backend.seen().is_empty(), "{:?}", backend.seen());
        // The plain spelling of the port still routes.
        let mut s = connect(port);
        s.write_all(
            Form::Origin
                .get("GET", "/", &format!("{HOST}:80"), "")
                .as_bytes(),
        )
        .unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
);

/// A backend whose bodiless answers (to HEAD, a 304) announce a body it sends later, where
/// the next request's answer is read: a stray answer, `STRAY`, to whatever follows them on
/// their connection.
fn late_bodies(seen: &Seen) -> Reply {
    let target = |line: &str| line.split(' ').nth(1).unwrap_or_default().to_string();
    let bytes: &[u8] = match (target(&seen.line).as_str(), target(&seen.after).as_str()) {
        (_, "/head" | "/cached") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY",
        ("/head", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        ("/cached", _) => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
    };
    Reply {
        bytes,
        read_body: true,
    }
}

h1test!(
    a_connection_after_a_bodiless_answer_that_announced_a_body_is_not_reused,
    |sb: Sandbox| {
        let backend = Backend::start(late_bodies);
        let port = alias(&sb, "rules", backend.port);
        for form in Form::BOTH {
            for (method, what) in [("HEAD", "/head"), ("GET", "/cached")] {
                let mut s = connect(port);
                s.write_all(form.get(method, what, HOST, "").as_bytes())
                    .unwrap();
                let head = read_head(&mut s);
                let status = if method == "HEAD" { "200" } else { "304" };
                assert!(
                    head.starts_with(&format!("HTTP/1.1 {status}")),
                    "{form:?} {what}: {head}"
                );
                s.write_all(form.get("GET", "/next", HOST, "").as_bytes())
                    .unwrap();
                let (head, body) = read_response(&mut s);
                assert_eq!(
                    body, "next",
                    "{form:?} {what}: the next answer is the next request's: {head}"
                );
            }
        }
    }
);

/// A backend that refuses an upload at its head, and closes without reading the body.
fn refuses_uploads(_: &Seen) -> Reply {
    Reply {
        bytes: b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!",
        read_body: false,
    }
}

h1test!(
    an_early_answer_to_a_large_upload_reaches_the_client_on_both_paths,
    |sb: Sandbox| {
        let backend = Backend::start(refuses_uploads);
        let port = alias(&sb, "rules", backend.port);
        const SIZE: usize = 20 << 20;
        for chunked in [false, true] {
            let mut s = connect(port);
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {SIZE}")
            };
            write!(
                s,
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\n{framing}\r\n\r\n"
            )
            .unwrap();
            // The body goes on meanwhile, as a client's upload does; the proxy may stop reading.
            let mut writer = s.try_clone().unwrap();
            let upload = std::thread::spawn(move || {
                let block = vec![b'x'; 64 * 1024];
                for _ in 0..SIZE / block.len() {
                    let sent = if chunked {
                        write!(writer, "{:x}\r\n", block.len())
                            .and_then(|()| writer.write_all(&block))
                            .and_then(|()| writer.write_all(b"\r\n"))
                    } else {
                        writer.write_all(&block)
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                let _ = chunked.then(|| writer.write_all(b"0\r\n\r\n"));
            });
            let (head, body) = read_response(&mut s);
            assert!(
                head.starts_with("HTTP/1.1 413"),
                "chunked {chunked}: {head}{body}"
            );
            assert_eq!(body, "too big!", "chunked {chunked}");
            upload.join().unwrap();
        }
        assert_eq!(backend.seen().len(), 2, "{:?}", backend.seen());
    }
);

h1test!(
    an_invalid_chunked_body_from_the_client_is_its_400,
    |sb: Sandbox| {
        let backend = Backend::start(ok);
        let port = alias(&sb, "rules", backend.port);
        // Only hyper's path reads chunked request bodies (the lane hands them over).
        let mut s = connect(port);
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz\r\n"
        )
        .unwrap();
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}{body}");
        assert!(body.contains("request body"), "{body}");
        assert!(
            !body.contains("rules ("),
            "the instance is not blamed: {body}"
        );
    }
);
