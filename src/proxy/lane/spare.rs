//! The buffers of connections waiting for their next request. An idle keep-alive connection
//! holds none (nginx frees its header buffer so too): when the lane's next read would wait, it
//! gives its four buffers here and waits for the client's bytes without them (`Client::readable`),
//! then takes a set back; a new connection with bytes to read at once takes one too. A few sets
//! are kept per thread, so that a busy connection's round trip through the wait, and a new
//! connection from its first read to its close, cost no allocation; more are freed.
//!
//! `keep` and `take_kept` are the per-thread lists themselves, for the splice pipes too.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

use crate::proxy::lane::HEAD_BUF;

/// Sets kept per thread: the connections one thread wakes in a row between two waits.
const KEPT: usize = 16;

/// A lane connection's buffers (`Lane` says what each holds).
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) inbuf: BytesMut,
    pub(super) upbuf: BytesMut,
    pub(super) request: Vec<u8>,
    pub(super) out: Vec<u8>,
}

thread_local! {
    static SPARE: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// Keep `bufs` for another connection, emptied, if they are of the usual size and this
/// thread has room; free them otherwise.
pub(super) fn give(mut bufs: Buffers) {
    let usual = (1..=2 * HEAD_BUF).contains(&bufs.inbuf.capacity())
        && bufs.upbuf.capacity() <= HEAD_BUF
        && bufs.request.capacity() <= HEAD_BUF
        && bufs.out.capacity() <= HEAD_BUF;
    if !usual {
        return;
    }
    bufs.inbuf.clear();
    bufs.upbuf.clear();
    bufs.request.clear();
    bufs.out.clear();
    keep(&SPARE, bufs, KEPT);
}

/// A kept set, or new empty buffers (they grow as they are used).
pub(super) fn take() -> Buffers {
    take_kept(&SPARE, |_| true).unwrap_or_default()
}

/// Keep `item` in this thread's `list` if it holds fewer than `most`; drop it otherwise.
pub(super) fn keep<T>(list: &'static LocalKey<RefCell<Vec<T>>>, item: T, most: usize) {
    let _ = list.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut()
            && kept.len() < most
        {
            kept.push(item);
        }
    });
}

/// The item kept last in this thread's `list` of those that `fit`, taken out of it.
pub(super) fn take_kept<T>(
    list: &'static LocalKey<RefCell<Vec<T>>>,
    fit: impl Fn(&T) -> bool,
) -> Option<T> {
    list.try_with(|kept| {
        let mut kept = kept.try_borrow_mut().ok()?;
        let at = kept.iter().rposition(fit)?;
        // The last one, usually: popped, not copied over itself as `swap_remove` would.
        if at + 1 == kept.len() {
            kept.pop()
        } else {
            Some(kept.swap_remove(at))
        }
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_sets_are_kept_emptied_and_others_freed() {
        while take().inbuf.capacity() > 0 {}
        let mut bufs = Buffers {
            inbuf: BytesMut::with_capacity(HEAD_BUF),
            ..Buffers::default()
        };
        bufs.inbuf.extend_from_slice(b"GET");
        bufs.out.extend_from_slice(b"HTTP/1.1 200 OK");
        give(bufs);
        let kept = take();
        assert!(kept.inbuf.capacity() >= HEAD_BUF && kept.inbuf.is_empty());
        assert!(kept.out.capacity() > 0 && kept.out.is_empty());
        // None kept: empty ones.
        assert_eq!(take().inbuf.capacity(), 0);
        // A set that grew for a long head is freed.
        give(Buffers {
            inbuf: BytesMut::with_capacity(64 * 1024),
            ..Buffers::default()
        });
        assert_eq!(take().inbuf.capacity(), 0);
        for _ in 0..2 * KEPT {
            give(Buffers {
                inbuf: BytesMut::with_capacity(HEAD_BUF),
                ..Buffers::default()
            });
        }
        let mut kept = 0;
        while take().inbuf.capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }
}
