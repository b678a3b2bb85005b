//! wharf's block in a hosts file (`wharf hosts sync`): which host names it lists, how it is
//! written, and how it is put into, replaced in and taken out of a file's bytes, every other
//! byte left as it was. Pure: reading and writing the file is `state::hosts`'s.
//!
//! The block is the lines from [`BEGIN`] to [`END`]. Appended to a file that does not end in
//! a newline, it comes after one and ends without one, so that removing it gives back the
//! file's exact bytes; the file's line ending (CRLF when it has any) is the block's.

use std::collections::BTreeSet;

use crate::model::instance::Instance;

/// The first line of the block (a line that starts with this is a begin marker).
pub(crate) const BEGIN: &str = "# BEGIN wharf";
/// The whole first line as written.
const BEGIN_LINE: &str =
    "# BEGIN wharf: names of wharf's instances (`wharf hosts clean` removes this block)";
/// The last line of the block.
pub(crate) const END: &str = "# END wharf";

/// The host names to list for `instances`: `NAME.localhost`, and `SUB.NAME.localhost` for
/// each extra socket, sorted.
pub(crate) fn hostnames<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for i in instances {
        out.insert(format!("{}.localhost", i.name));
        for sub in i
            .sockets
            .keys()
            .filter(|s| *s != crate::model::ports::MAIN_SOCKET)
        {
            out.insert(format!("{sub}.{}.localhost", i.name));
        }
    }
    out
}

/// True for a name the block may list: DNS labels (lowercase letters, digits, inner `-`)
/// ending in `.localhost`. What a hosts file gets from `--names` is checked with it.
pub(crate) fn is_local_hostname(host: &str) -> bool {
    let Some(labels) = host.strip_suffix(".localhost") else {
        return false;
    };
    !labels.is_empty()
        && labels
            .split('.')
            .all(|l| l.parse::<crate::model::name::Name>().is_ok())
}

/// What is wrong with a file's wharf block; the file is left alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BlockError {
    #[error(
        "line {0} begins wharf's block (\"{BEGIN}\") but no \"{END}\" line ends it; \
         remove the block's lines by hand (or add the end line), then try again"
    )]
    Unterminated(usize),
    #[error(
        "line {0} (\"{END}\") ends a wharf block that no \"{BEGIN}\" line begins; remove it \
         by hand, then try again"
    )]
    StrayEnd(usize),
    #[error(
        "line {0} begins a second wharf block; keep one (remove the other's lines by hand), \
         then try again"
    )]
    Twice(usize),
}

/// Where the block is in a file: `before` ends where its first line starts, `after` starts
/// at the end of its last line's text (with that line's ending, if it has one).
struct Found {
    start: usize,
    end: usize,
}

/// The file's block, if it has one; an error if its markers do not pair up.
fn find(file: &[u8]) -> Result<Option<Found>, BlockError> {
    let mut found: Option<Found> = None;
    let mut open: Option<(usize, usize)> = None; // (line number, byte offset)
    let mut offset = 0;
    for (n, raw) in file.split_inclusive(|b| *b == b'\n').enumerate() {
        let text = trim_eol(raw);
        let line = text.trim_ascii_end();
        if line.starts_with(BEGIN.as_bytes()) {
            if open.is_some() || found.is_some() {
                return Err(BlockError::Twice(n + 1));
            }
            open = Some((n + 1, offset));
        } else if line == END.as_bytes() {
            let Some((_, start)) = open.take() else {
                return Err(BlockError::StrayEnd(n + 1));
            };
            found = Some(Found {
                start,
                end: offset + text.len(),
            });
        }
        offset += raw.len();
    }
    match open {
        Some((n, _)) => Err(BlockError::Unterminated(n)),
        None => Ok(found),
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The file's line ending: CRLF if any line has one, else LF.
fn eol(file: &[u8]) -> &'static str {
    if file.windows(2).any(|w| w == b"\r\n") {
        "\r\n"
    } else {
        "\n"
    }
}

/// The block's lines for `names`, joined by `eol`, without a final line ending.
pub(crate) fn block(names: &BTreeSet<String>, eol: &str) -> String {
    let mut lines = vec![BEGIN_LINE.to_string()];
    for n in names {
        lines.push(format!("127.0.0.1 {n}"));
        lines.push(format!("::1 {n}"));
    }
    lines.push(END.to_string());
    lines.join(eol)
}

/// `file` with its block listing exactly `names`: replaced where it is, else appended.
pub(crate) fn with_block(file: &[u8], names: &BTreeSet<String>) -> Result<Vec<u8>, BlockError> {
    let eol = eol(file);
    let block = block(names, eol);
    let mut out = Vec::with_capacity(file.len() + block.len() + 2);
    match find(file)? {
        Some(f) => {
            out.extend_from_slice(&file[..f.start]);
            out.extend_from_slice(block.as_bytes());
            out.extend_from_slice(&file[f.end..]);
        }
        None if file.is_empty() || file.ends_with(b"\n") => {
            out.extend_from_slice(file);
            out.extend_from_slice(block.as_bytes());
            out.extend_from_slice(eol.as_bytes());
        }
        None => {
            out.extend_from_slice(file);
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(block.as_bytes());
        }
    }
    Ok(out)
}

/// `file` without its block (unchanged if it has none).
pub(crate) fn without_block(file: &[u8]) -> Result<Vec<u8>, BlockError> {
    let Some(f) = find(file)? else {
        return Ok(file.to_vec());
    };
    let (mut before, mut after) = (&file[..f.start], &file[f.end..]);
    if after.is_empty() {
        // It was appended after a line ending wharf added: take that away too.
        before = trim_eol(before);
    } else {
        after = after
            .strip_prefix(b"\r\n")
            .or_else(|| after.strip_prefix(b"\n"))
            .unwrap_or(after);
    }
    Ok([before, after].concat())
}

/// The block's lines in `file` (without line endings), if it has a block.
pub(crate) fn block_lines(file: &[u8]) -> Result<Option<Vec<String>>, BlockError> {
    Ok(find(file)?.map(|f| {
        String::from_utf8_lossy(&file[f.start..f.end])
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sync_then_clean_gives_back_every_byte() {
        for original in [
            &b""[..],
            b"127.0.0.1 localhost\n",
            b"127.0.0.1 localhost",
            b"# comment\r\n127.0.0.1 localhost\r\n\r\n",
            b"127.0.0.1 localhost\r\n::1 ip6-localhost",
            b"\n\n  # odd spacing\t\n",
        ] {
            let synced = with_block(original, &names(&["a.localhost", "b.a.localhost"])).unwrap();
            assert!(synced.starts_with(original), "{original:?}");
            assert_eq!(
                with_block(&synced, &names(&["a.localhost", "b.a.localhost"])).unwrap(),
                synced,
                "a second sync changes nothing"
            );
            let text = String::from_utf8(synced.clone()).unwrap();
            assert!(text.contains("127.0.0.1 b.a.localhost") && text.contains("::1 a.localhost"));
            if original.windows(2).any(|w| w == b"\r\n") {
                assert!(
                    !text.replace("\r\n", "").contains('\n'),
                    "CRLF kept: {text:?}"
                );
            }
            let fewer = with_block(&synced, &names(&["c.localhost"])).unwrap();
            assert!(!String::from_utf8_lossy(&fewer).contains("a.localhost"));
            assert_eq!(without_block(&fewer).unwrap(), original, "{original:?}");
            assert_eq!(without_block(&synced).unwrap(), original, "{original:?}");
        }
    }

    #[test]
    fn a_block_in_the_middle_is_replaced_in_place() {
        let file = format!("a\n{}\nz\n", block(&names(&["x.localhost"]), "\n"));
        let out = with_block(file.as_bytes(), &names(&["y.localhost"])).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("a\n# BEGIN wharf") && out.ends_with("# END wharf\nz\n"));
        assert!(out.contains("::1 y.localhost") && !out.contains("x.localhost"));
        assert_eq!(without_block(out.as_bytes()).unwrap(), b"a\nz\n");
    }

    #[test]
    fn markers_that_do_not_pair_are_refused() {
        let begin = format!("a\n{BEGIN_LINE}\n127.0.0.1 x.localhost\n");
        assert_eq!(
            with_block(begin.as_bytes(), &names(&[])),
            Err(BlockError::Unterminated(2))
        );
        assert_eq!(
            without_block(begin.as_bytes()),
            Err(BlockError::Unterminated(2))
        );
        assert_eq!(
            without_block(b"a\n# END wharf\n"),
            Err(BlockError::StrayEnd(2))
        );
        let twice = format!("{0}\n{END}\n{0}\n{END}\n", BEGIN_LINE);
        assert_eq!(without_block(twice.as_bytes()), Err(BlockError::Twice(3)));
    }

    #[test]
    fn names_come_from_instances_and_their_sockets() {
        let sockets = [
            ("http".to_string(), "127.0.0.1:4000".parse().unwrap()),
            ("admin".to_string(), "127.0.0.1:4001".parse().unwrap()),
        ]
        .into();
        let api = Instance::bare(
            "api".parse().unwrap(),
            1,
            crate::model::instance::State::Ready,
            sockets,
        );
        assert_eq!(
            hostnames([&api]),
            names(&["admin.api.localhost", "api.localhost"])
        );
        assert!(is_local_hostname("admin.api.localhost"));
        for bad in [
            "localhost",
            ".localhost",
            "a..localhost",
            "A.localhost",
            "a.localhost\n1.2.3.4 evil.com",
            "example.com",
        ] {
            assert!(!is_local_hostname(bad), "{bad:?}");
        }
    }
}
