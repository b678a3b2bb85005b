//! Reading a chunked body (RFC 9112 §7.1) from an upstream response, one buffer at a time, so
//! the express lane can re-frame it for the client: the data goes on, sizes, extensions and
//! trailers are rebuilt or dropped, never copied (HARDENING.md: rebuild framing).

use crate::proxy::limits::Limits;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` so far (at most 255 counted: it tells none from
    /// some).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the line's end.
    SizeWs {
        size: u64,
    },
    /// Extensions up to the line's end (ignored); `len` bytes seen.
    Extension {
        size: u64,
        len: usize,
    },
    /// The size line's CR was seen; LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one; `line` bytes in the current
    /// line, `total` in all of them.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        empty: bool,
        total: usize,
    },
    Done,
}

/// Incremental chunked-body reader.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Longest chunk-size line with its extensions (`Limits::chunk_line`).
    max_line: usize,
    /// Largest trailer section (`Limits::chunk_trailers`).
    max_trailers: usize,
}

impl Default for Decoder {
    /// A decoder under the default limits.
    fn default() -> Self {
        Decoder::new(&Limits::default())
    }
}

impl Decoder {
    pub(crate) fn new(limits: &Limits) -> Decoder {
        Decoder {
            state: State::Size { size: 0, digits: 0 },
            max_line: limits.chunk_line,
            max_trailers: limits.chunk_trailers,
        }
    }

    /// Read what `input` holds, handing each run of body data to `data`. Returns how many
    /// bytes were used: all of them, or fewer when the body ended inside `input` (the rest is
    /// whatever the server sent after it).
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            let b = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match (b as char).to_digit(16) {
                    // Too large is by value, as for hyper: leading zeros are not counted.
                    Some(d) if size >> 60 == 0 => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits.saturating_add(1),
                    },
                    Some(_) => return Err(ChunkError("chunk size too large")),
                    None if digits == 0 => return Err(ChunkError("missing chunk size")),
                    None => match b {
                        b'\r' => State::SizeLf { size },
                        b';' => State::Extension { size, len: 0 },
                        b' ' | b'\t' => State::SizeWs { size },
                        _ => return Err(ChunkError("invalid byte in chunk size")),
                    },
                },
                State::SizeWs { size } => match b {
                    b' ' | b'\t' => State::SizeWs { size },
                    b';' => State::Extension { size, len: 0 },
                    b'\r' => State::SizeLf { size },
                    _ => return Err(ChunkError("invalid byte after chunk size")),
                },
                State::Extension { size, len } => match b {
                    b'\r' => State::SizeLf { size },
                    _ if len >= self.max_line => {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    b'\n' => return Err(ChunkError("bare LF after chunk size")),
                    _ => State::Extension { size, len: len + 1 },
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::Trailer { line: 0, total: 0 },
                    b'\n' => State::Data(size),
                    _ => return Err(ChunkError("expected LF after chunk size")),
                },
                State::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
                State::DataCr | State::DataLf => {
                    return Err(ChunkError("expected CRLF after data"));
                }
                State::Trailer { line, total } => match b {
                    b'\r' => State::TrailerLf {
                        empty: line == 0,
                        total,
                    },
                    _ if total >= self.max_trailers => return Err(ChunkError("trailers too long")),
                    b'\n' => return Err(ChunkError("bare LF in trailers")),
                    _ => State::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                },
                State::TrailerLf { empty, total } => match b {
                    b'\n' if empty => State::Done,
                    b'\n' => State::Trailer { line: 0, total },
                    _ => return Err(ChunkError("expected LF in trailers")),
                },
                State::Done => unreachable!("the loop stops at Done"),
            };
            i += 1;
        }
        Ok(i)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece) {
            let n = d.decode(part, |b| out.extend_from_slice(b))?;
            used += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn data_comes_out_whatever_the_read_boundaries() {
        let body =
            b"5\r\nhello\r\n6;ext=\"x\"\r\n world\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let (out, used, done) = decode_in_pieces(body, piece).unwrap();
            assert_eq!(out, b"hello world0123456789", "piece {piece}");
            assert!(done);
            assert_eq!(&body[used..], b"NEXT", "piece {piece}");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (out, used, done) = decode_in_pieces(b"3\r\nab", 64).unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"ab"[..], 5, false));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"3\nabc\r\n",
            b"3\r\nabcd\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX\n",
            b"3\r\x00",
            b"5 junk\r\nhello\r\n",
        ] {
            assert!(decode_in_pieces(bad, 64).is_err(), "{bad:?}");
        }
        let long_ext = [b"1;".to_vec(), vec![b'x'; Limits::default().chunk_line + 1]].concat();
        assert!(decode_in_pieces(&long_ext, 64).is_err());
    }

    #[test]
    fn a_size_is_too_large_by_its_value_not_its_digits() {
        let zeros = b"00000000000000003\r\nabc\r\n0\r\n\r\n";
        let (out, _, done) = decode_in_pieces(zeros, 4).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
        let (_, _, done) = decode_in_pieces(b"ffffffffffffffff\r\n", 64).unwrap();
        assert!(!done);
        assert!(decode_in_pieces(b"10000000000000000\r\n", 64).is_err());
    }
}
