//! Upgraded connections (WebSockets): bytes go both ways, with no HTTP timers, until both
//! sides have ended. Once one side has ended (or failed), the other direction gets a bounded
//! linger to finish, then both close: a peer that never ends its side would otherwise hold two
//! descriptors forever.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Relay between `client` and `upstream` until both directions have ended, or one has and
/// `linger` has passed since.
pub(crate) async fn relay<C, U>(client: C, upstream: U, linger: Duration)
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let mut up = std::pin::pin!(one_way(&mut client_read, &mut upstream_write));
    let mut down = std::pin::pin!(one_way(&mut upstream_read, &mut client_write));
    tokio::select! {
        _ = up.as_mut() => { let _ = tokio::time::timeout(linger, down).await; }
        _ = down.as_mut() => { let _ = tokio::time::timeout(linger, up).await; }
    }
}

/// Copy until `from` ends, then end `to` likewise (a half-close passes on).
async fn one_way<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::io::copy(from, to).await?;
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    /// One side ends its half; the other keeps silent: both close after the linger.
    #[tokio::test(start_paused = true)]
    async fn a_half_closed_tunnel_closes_after_the_linger() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let linger = Duration::from_secs(3);
        let relay = tokio::spawn(relay(client, upstream, linger));
        client_peer.write_all(b"hi").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi", "the half-close passed on");
        let ended = tokio::time::Instant::now();
        // The upstream can still answer during the linger.
        upstream_peer.write_all(b"late").await.unwrap();
        let mut late = [0u8; 4];
        client_peer.read_exact(&mut late).await.unwrap();
        assert_eq!(&late, b"late");
        relay.await.unwrap();
        assert_eq!(ended.elapsed(), linger);
        assert_eq!(client_peer.read(&mut late).await.unwrap(), 0, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn both_sides_ending_closes_at_once_and_an_open_tunnel_stays() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!relay.is_finished(), "no timer while both sides are open");
        client_peer.shutdown().await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let started = tokio::time::Instant::now();
        relay.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
