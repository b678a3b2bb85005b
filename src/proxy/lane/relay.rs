//! Bodies: the request body on to the instance, the response body back (by length, chunked,
//! or until close; spliced when long), and the client-side I/O both need.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proxy::deadline;
use crate::proxy::lane::chunked::Decoder;
use crate::proxy::lane::client::Client;
use crate::proxy::lane::response::Framing;
use crate::proxy::lane::splice::Pipe;
use crate::proxy::lane::{BODY_BUF, Lane, read_more};
use crate::proxy::upstream::Upstream;

/// Why a request body did not get through.
pub(super) enum BodyFailure {
    /// The head could not be written: nothing of the request was used, it may go again.
    HeadNotSent(io::Error),
    Upstream(io::Error),
    /// The client sent nothing for `Limits::body_idle`.
    Stalled,
    ClientGone,
}

/// The rest of a long request body, `unread` bytes, from the client's socket through `pipe`
/// to the instance: each read within `body_idle`, each write within `patience`. Boxed by its
/// caller: long bodies are rare, and idle connections should not carry room for this state.
async fn splice_rest(
    pipe: Pipe,
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    unread: &mut u64,
    body_idle: Duration,
    patience: Duration,
) -> Result<(), BodyFailure> {
    while *unread > 0 {
        let filled = match tokio::time::timeout(body_idle, pipe.fill(from, *unread)).await {
            Err(_) => return Err(BodyFailure::Stalled),
            Ok(Ok(0) | Err(_)) => return Err(BodyFailure::ClientGone),
            Ok(Ok(n)) => n,
        };
        let what = "the server stopped reading the request";
        pipe.drain(to, filled, patience, what)
            .await
            .map_err(BodyFailure::Upstream)?;
        *unread -= filled as u64;
    }
    pipe.keep();
    Ok(())
}

impl<C: Client> Lane<'_, C> {
    /// Send the request head and its body: what the head read brought, then the rest from the
    /// client (spliced when long), each read within `Limits::body_idle`, each write within the
    /// upstream timeout.
    pub(super) async fn send_with_body(&mut self, up: &mut Upstream) -> Result<(), BodyFailure> {
        let (patience, body_idle) = (
            self.forwarder.limits.upstream_head,
            self.forwarder.limits.body_idle,
        );
        let write = async |up: &mut Upstream, bytes: &[u8]| {
            let what = "the server stopped reading the request";
            deadline::within(patience, what, up.stream.write_all(bytes)).await
        };
        write(up, &self.request)
            .await
            .map_err(BodyFailure::HeadNotSent)?;
        loop {
            let take = body_part(self.inbuf.len(), self.unread);
            if take > 0 {
                write(up, &self.inbuf[..take])
                    .await
                    .map_err(BodyFailure::Upstream)?;
                self.inbuf.advance(take);
                self.unread -= take as u64;
            }
            if self.unread == 0 {
                return Ok(());
            }
            // The buffer holds no more of the body: a long rest goes through a pipe.
            if self.unread > BODY_BUF as u64
                && self.client.watch().is_ok()
                && let Some(from) = self.client.splice_target()
                && let Some(pipe) = Pipe::open(&self.forwarder.budget)
            {
                let to = &up.stream;
                let rest = splice_rest(pipe, from, to, &mut self.unread, body_idle, patience);
                return Box::pin(rest).await;
            }
            self.inbuf.reserve(BODY_BUF);
            match tokio::time::timeout(
                body_idle,
                read_more(&mut self.client, &mut self.inbuf, true),
            )
            .await
            {
                Err(_) => return Err(BodyFailure::Stalled),
                Ok(Ok(0) | Err(_)) => return Err(BodyFailure::ClientGone),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Send the head in `out` and the body after it. False if the body ended early (the
    /// client connection must close so the client sees the truncation). `closing`: the
    /// connection closes after this response (its last write says so).
    pub(super) async fn relay_body(
        &mut self,
        up: &mut Upstream,
        framing: Framing,
        closing: bool,
    ) -> io::Result<bool> {
        match framing {
            Framing::Empty => self
                .client
                .send(&self.out, self.forwarder.limits.write_stall, closing)
                .await
                .map(|()| true),
            Framing::Length(mut left) => {
                let take = body_part(self.upbuf.len(), left);
                self.out.extend_from_slice(&self.upbuf[..take]);
                self.upbuf.advance(take);
                left -= take as u64;
                self.client
                    .send(
                        &self.out,
                        self.forwarder.limits.write_stall,
                        closing && left == 0,
                    )
                    .await?;
                if left > BODY_BUF as u64
                    && self.client.watch().is_ok()
                    && let Some(to) = self.client.splice_target()
                    && let Some(pipe) = Pipe::open(&self.forwarder.budget)
                {
                    let stall = self.forwarder.limits.write_stall;
                    return Box::pin(pipe.relay(&up.stream, to, left, stall)).await;
                }
                if left > 0 {
                    up.ack_now();
                }
                while left > 0 {
                    if read_upstream(up, &mut self.upbuf, &mut self.client).await? == 0 {
                        return Ok(false);
                    }
                    let take = body_part(self.upbuf.len(), left);
                    let last = closing && left == take as u64;
                    self.client
                        .send(&self.upbuf[..take], self.forwarder.limits.write_stall, last)
                        .await?;
                    self.upbuf.advance(take);
                    left -= take as u64;
                }
                Ok(true)
            }
            Framing::Chunked => {
                let mut decoder = Decoder::new(&self.forwarder.limits);
                let mut first_read = true;
                loop {
                    let out = &mut self.out;
                    let decoded = decoder.decode(&self.upbuf, |data| {
                        let _ = write!(Append(out), "{:x}\r\n", data.len());
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                    });
                    let Ok(used) = decoded else {
                        // Pass on the head and what was valid; closing tells the rest.
                        self.client
                            .send(&self.out, self.forwarder.limits.write_stall, false)
                            .await?;
                        return Ok(false);
                    };
                    self.upbuf.advance(used);
                    if decoder.is_done() {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    if !self.out.is_empty() {
                        let last = closing && decoder.is_done();
                        self.client
                            .send(&self.out, self.forwarder.limits.write_stall, last)
                            .await?;
                        self.out.clear();
                    }
                    if decoder.is_done() {
                        return Ok(true);
                    }
                    if first_read {
                        up.ack_now();
                        first_read = false;
                    }
                    if read_upstream(up, &mut self.upbuf, &mut self.client).await? == 0 {
                        return Ok(false);
                    }
                }
            }
            Framing::UntilClose => {
                self.out.extend_from_slice(&self.upbuf);
                self.upbuf.clear();
                self.client
                    .send(&self.out, self.forwarder.limits.write_stall, false)
                    .await?;
                up.ack_now();
                loop {
                    if read_upstream(up, &mut self.upbuf, &mut self.client).await? == 0 {
                        return Ok(true);
                    }
                    self.client
                        .send(&self.upbuf, self.forwarder.limits.write_stall, false)
                        .await?;
                    self.upbuf.clear();
                }
            }
        }
    }
}

/// Read more of a response body; fails if the client hangs up meanwhile.
pub(super) async fn read_upstream(
    up: &mut Upstream,
    buf: &mut BytesMut,
    client: &mut impl Client,
) -> io::Result<usize> {
    buf.reserve(BODY_BUF);
    tokio::select! {
        biased;
        n = up.stream.read_buf(buf) => n,
        () = client.gone() => Err(went_away()),
    }
}

pub(super) fn went_away() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")
}

/// Close a connection whose request was answered before its body was all read: stop
/// writing, then discard what the client still sends for up to `within`, so that closing
/// with unread bytes does not reset the connection before the client has read the answer.
pub(crate) async fn linger(client: &mut (impl AsyncRead + AsyncWrite + Unpin), within: Duration) {
    let _ = client.shutdown().await;
    // On the heap: in the future, it would be copied with every connection's task.
    let mut sink = vec![0u8; 8 * 1024];
    let discard = async { while let Ok(1..) = client.read(&mut sink).await {} };
    let _ = tokio::time::timeout(within, discard).await;
}

/// How many of `buffered` bytes belong to a body with `left` bytes to go.
pub(super) fn body_part(buffered: usize, left: u64) -> usize {
    usize::try_from(left).map_or(buffered, |left| buffered.min(left))
}

/// `fmt::Write` into a byte buffer.
pub(super) struct Append<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Append<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
