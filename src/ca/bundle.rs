//! What an instance needs to trust wharf's CA when it calls `https://NAME.localhost`: Node
//! adds `NODE_EXTRA_CA_CERTS` to its own roots, but OpenSSL, Python's `ssl`, requests and curl
//! take one file that replaces the roots (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
//! `CURL_CA_BUNDLE`). So each gets a file in `STATE/ca/`: what it would have read without
//! wharf (the user's own file if the variable is set, else the system's roots, or nothing for
//! Node), followed by the CA; written again when either changes. The user's choice of roots
//! is kept, and wharf's CA added to it.

use std::path::{Path, PathBuf};

use crate::ca::{Authority, CaError, dir, io_error};
use crate::state::dirs;

/// Where each system keeps its roots as one PEM file, most common first.
const SYSTEM_ROOTS: &[&str] = &[
    // Debian, Ubuntu, Arch, Alpine, Gentoo
    "/etc/ssl/certs/ca-certificates.crt",
    // Fedora, RHEL
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    // openSUSE
    "/etc/ssl/ca-bundle.pem",
    // macOS, FreeBSD, Alpine
    "/etc/ssl/cert.pem",
];

/// The variables `environment` sets.
pub(crate) const VARS: [&str; 4] = [
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

/// The environment that makes an instance's clients trust wharf's CA: each of `VARS` with
/// its file. `user` is the value the user gave a variable, if any.
pub(crate) fn environment(
    state: &Path,
    ca: &Authority,
    user: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<(&'static str, PathBuf)>, CaError> {
    let mut vars = Vec::new();
    // The system's roots plus the CA, read and written once for every variable that uses it.
    let mut system = None;
    for var in VARS {
        // A value that is already one of these files (an instance's own, or an earlier
        // `wharf env --ca`) says nothing of the user's roots.
        let base = user(var).filter(|p| !p.starts_with(dir(state)));
        let path = match (var, &base) {
            // Node's are extra certificates: the CA alone will do.
            ("NODE_EXTRA_CA_CERTS", None) => ca.cert_path().to_path_buf(),
            (_, Some(base)) => write(state, ca, &format!("{var}.pem"), &read(base))?,
            (_, None) => match &system {
                Some(path) => PathBuf::clone(path),
                None => system
                    .insert(write(state, ca, "bundle.pem", &system_roots())?)
                    .clone(),
            },
        };
        vars.push((var, path));
    }
    Ok(vars)
}

fn system_roots() -> String {
    SYSTEM_ROOTS
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `STATE/ca/NAME`: `certs` then the CA, rewritten only when that changed.
fn write(state: &Path, ca: &Authority, name: &str, certs: &str) -> Result<PathBuf, CaError> {
    let path = dir(state).join(name);
    let mut bundle = certs.to_string();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca.cert_pem());
    let current = dirs::read_private(&path).map_err(io_error(&path))?;
    if current.as_deref() != Some(bundle.as_bytes()) {
        dirs::write_atomic(&path, bundle.as_bytes()).map_err(io_error(&path))?;
    }
    Ok(path)
}
