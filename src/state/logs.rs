//! Output of instances started in the background (`wharf up`, `wharf mcp`): one file per
//! instance in the state directory, bounded (rotated to `NAME.log.1` past `LIMIT`), and the
//! readers behind `wharf logs NAME [-f]` and `instance_logs`. A supervisor started so has its
//! own stderr in the same file (`open_append`), so its errors are kept too.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A log is rotated when it passes this size; one old generation is kept.
pub(crate) const LIMIT: u64 = 1 << 20;

/// `state/logs/NAME.log`.
pub(crate) fn path(state_dir: &Path, name: &crate::model::name::Name) -> PathBuf {
    state_dir.join("logs").join(format!("{name}.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// An append-only, size-bounded log file shared by the supervisor and its server's output.
#[derive(Clone)]
pub(crate) struct Log {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: File,
    size: u64,
    /// This process's stderr is this file: it follows the file when it is rotated.
    is_stderr: bool,
}

/// Open (creating it 0600, never through a symlink) a log file for appending: every writer,
/// the supervisor's `Log` and its own stderr alike, adds at the end.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    // A directory that exists is the user's (`--log /tmp/x.log`, `--log ./x.log`): never
    // tightened. One that is missing is created private, as wharf's own `logs` is.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        crate::state::dirs::ensure_private_dir(dir).map_err(io::Error::other)?;
    }
    let file = File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

impl Log {
    pub(crate) fn open(path: &Path) -> io::Result<Log> {
        let mut file = open_append(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        let meta = file.metadata()?;
        let stderr = std::os::fd::AsFd::as_fd(&io::stderr()).try_clone_to_owned();
        let is_stderr = stderr
            .and_then(|fd| File::from(fd).metadata())
            .is_ok_and(|s| (s.dev(), s.ino()) == (meta.dev(), meta.ino()));
        Ok(Log {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                file,
                size,
                is_stderr,
            })),
        })
    }

    /// Whether this process's stderr already goes to this log (so a copy there would be a
    /// second one).
    pub(crate) fn is_stderr(&self) -> bool {
        self.inner.lock().expect("log lock").is_stderr
    }

    /// Append `bytes`, rotating first if the file would pass `LIMIT`.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().expect("log lock");
        if inner.size + bytes.len() as u64 > LIMIT && inner.size > 0 {
            let _ = std::fs::rename(&inner.path, rotated(&inner.path));
            if let Ok(f) = open_append(&inner.path) {
                let _ = f.set_len(0);
                if inner.is_stderr {
                    // SAFETY: dup2 onto fd 2 of descriptors this process owns.
                    unsafe { libc::dup2(f.as_raw_fd(), libc::STDERR_FILENO) };
                }
                inner.file = f;
                inner.size = 0;
            }
        }
        if inner.file.write_all(bytes).is_ok() {
            inner.size += bytes.len() as u64;
        }
    }

    /// Copy a child's output stream into the log until it ends.
    pub(crate) async fn copy_from(self, mut stream: impl tokio::io::AsyncRead + Unpin) {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            self.write(&buf[..n]);
        }
    }
}

/// Print an instance's log (the rotated part first); with `follow`, keep printing what is
/// appended until interrupted.
pub(crate) fn show(path: &Path, follow: bool, out: &mut impl Write) -> io::Result<()> {
    if let Ok(mut old) = File::open(rotated(path)) {
        io::copy(&mut old, out)?;
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow => wait_for(path)?,
        Err(e) => return Err(e),
    };
    let mut pos = io::copy(&mut file, out)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated: start over with the new file.
            file = File::open(path)?;
            pos = 0;
        }
        let mut chunk = Vec::new();
        file.seek(SeekFrom::Start(pos))?;
        pos += file.read_to_end(&mut chunk)? as u64;
        out.write_all(&chunk)?;
        out.flush()?;
    }
}

/// The last `lines` lines of an instance's log, the rotated part included, as text (bytes
/// that are not UTF-8 replaced).
pub(crate) fn tail(path: &Path, lines: usize) -> io::Result<String> {
    let mut bytes = match std::fs::read(rotated(path)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    bytes.extend(std::fs::read(path)?);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

fn wait_for(path: &Path) -> io::Result<File> {
    loop {
        match File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_the_limit_and_show_both_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/api.log");
        let log = Log::open(&path).unwrap();
        let line = vec![b'x'; 1000];
        for _ in 0..(LIMIT / 1000 + 10) {
            log.write(&line);
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= LIMIT);
        assert!(rotated(&path).exists());
        let mut shown = Vec::new();
        show(&path, false, &mut shown).unwrap();
        assert_eq!(shown.len() as u64, (LIMIT / 1000 + 10) * 1000);
    }

    #[test]
    fn the_tail_reaches_into_the_rotated_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.log");
        std::fs::write(rotated(&path), "one\ntwo\n").unwrap();
        std::fs::write(&path, "three\nfour\n").unwrap();
        assert_eq!(tail(&path, 1).unwrap(), "four");
        assert_eq!(tail(&path, 3).unwrap(), "two\nthree\nfour");
        assert_eq!(tail(&path, 100).unwrap().lines().count(), 4);
    }

    /// `wharf run --log /tmp/x.log` once made /tmp 0700, for every user of the machine.
    #[test]
    fn a_log_leaves_the_directory_it_is_put_in_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Log::open(&shared.join("x.log")).unwrap().write(b"hi\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&shared), 0o1777);
        assert_eq!(mode(&shared.join("x.log")), 0o600);
        Log::open(&shared.join("new/x.log")).unwrap();
        assert_eq!(
            mode(&shared.join("new")),
            0o700,
            "a directory wharf makes is private"
        );
        // A relative file name has an empty parent: the working directory, untouched.
        assert!(Path::new("x.log").parent().unwrap().as_os_str().is_empty());
    }
}
