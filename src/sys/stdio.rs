//! What wharf's commands print: results on stdout, messages on stderr. Nothing here panics: a
//! reader that went away (`wharf ls | head`) or a full disk ends the command with an error
//! (which `main` turns into a quiet exit for a closed pipe, like other Unix tools), and a
//! message that cannot reach stderr is dropped, since there is nowhere left to say so.

use std::io::{self, Write as _};

/// Write `text` to stdout and flush it. The error keeps its kind (see `is_broken_pipe`) and
/// says it was stdout that failed.
pub(crate) fn out(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| io::Error::new(e.kind(), format!("writing to stdout: {e}")))
}

/// A line of progress on stdout while a command changes things (`install`, `up`): the work
/// must not stop halfway because nobody reads any more, so errors are dropped.
pub(crate) fn progress(text: &str) {
    let _ = out(text);
}

/// Write `text` to stderr if it is still there.
pub(crate) fn err(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// `rows` as lines of left-aligned columns two spaces apart, each column as wide as its
/// widest cell (`wharf ls`, `wharf up`'s summary).
pub(crate) fn columns<R: AsRef<[String]>>(rows: &[R]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.len()),
                None => widths.push(cell.len()),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .as_ref()
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// `outln!("…", args)`: one line on stdout, an `io::Result` to pass on with `?`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::sys::stdio::out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `progressln!("…", args)`: one line of progress on stdout, never a panic nor an error.
#[macro_export]
macro_rules! progressln {
    ($($arg:tt)*) => {
        $crate::sys::stdio::progress(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `errln!("…", args)`: one line on stderr, never a panic.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::sys::stdio::err(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// True if `e` (or what caused it) is a write to a pipe nobody reads any more: the reader has
/// what it wanted, so the command ends quietly and successfully.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
