//! The lines of a head as the lane reads and writes them: status and header lines, the framing
//! and `Date` lines it adds, room enough for a whole head, and a header's decimal value.
//! Both request planning (`request`) and response heads (`response`) use them.

pub(super) fn status_line(out: &mut Vec<u8>, code: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn content_length_line(out: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    header_line(out, b"content-length", digits.format(n).as_bytes());
}

/// Bytes enough for a head (its first line's variable part, its headers) and the lines the
/// lane adds (`X-Forwarded-*`, `Via`, `Date`, framing): growing a head by doubling cost a
/// new connection's first request about ten reallocations.
pub(super) fn head_room(first_line: usize, headers: &[httparse::Header<'_>]) -> usize {
    let lines: usize = headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    first_line + lines + 256
}

pub(super) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Date` header, formatted at most once a second per thread.
pub(super) fn date_line(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        header_line(out, b"date", text.as_bytes());
    });
}

/// A Content-Length value: digits only (no sign, no space), within u64.
pub(super) fn decimal(value: &[u8]) -> Option<u64> {
    if !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
