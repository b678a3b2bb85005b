//! What an instance needs to trust wharf's CA when it calls `https://NAME.localhost`: Node
//! adds `NODE_EXTRA_CA_CERTS` to its own roots, but OpenSSL, Python's `ssl`, requests and curl
//! take one file that replaces the roots (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
//! `CURL_CA_BUNDLE`). So the bundle is the system's roots followed by the CA, in
//! `STATE/ca/bundle.pem`, written again when either changes.

use std::path::{Path, PathBuf};

use crate::ca::{Authority, CaError, dir, io_error};
use crate::state::dirs;

const BUNDLE_FILE: &str = "bundle.pem";

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

/// The environment that makes an instance's clients trust wharf's CA, each variable (`VARS`)
/// with its file.
pub(crate) fn environment(
    state: &Path,
    ca: &Authority,
) -> Result<Vec<(&'static str, PathBuf)>, CaError> {
    let bundle = write(state, ca)?;
    let [node, ssl, requests, curl] = VARS;
    Ok(vec![
        (node, ca.cert_path().to_path_buf()),
        (ssl, bundle.clone()),
        (requests, bundle.clone()),
        (curl, bundle),
    ])
}

/// Write the bundle if it is missing or out of date; its path.
fn write(state: &Path, ca: &Authority) -> Result<PathBuf, CaError> {
    let path = dir(state).join(BUNDLE_FILE);
    let roots = SYSTEM_ROOTS
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut bundle = roots;
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str("# wharf's local CA (name-constrained to localhost and *.localhost)\n");
    bundle.push_str(ca.cert_pem());
    let current = dirs::read_private(&path).map_err(io_error(&path))?;
    if current.as_deref() != Some(bundle.as_bytes()) {
        dirs::write_atomic(&path, bundle.as_bytes()).map_err(io_error(&path))?;
    }
    Ok(path)
}
