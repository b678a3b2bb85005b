//! wharf's local certificate authority: one per user, made on first use, good only for
//! `localhost` and the names under it. Its certificate carries X.509 name constraints that
//! permit the DNS names `localhost` and `*.localhost` and exclude every IP address, so even a
//! stolen key cannot vouch for a real site. (mkcert's and portless's CAs can sign anything.)
//!
//! Files, in `STATE/ca/` (0700, ours): `wharf-ca.pem`, the CA certificate, which trust stores,
//! `NODE_EXTRA_CA_CERTS` and `curl --cacert` take; `wharf-ca-key.pem`, its key (PKCS#8, 0600),
//! which never leaves the directory; `bundle.pem`, the system's roots plus the CA (`bundle`).
//! `leaves` issues the certificates the proxy shows, per name, on demand.

pub(crate) mod bundle;
mod key;
pub(crate) mod leaves;

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, NameConstraints, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::state::dirs;

pub(crate) use key::Key;

/// The CA certificate's file name, in `STATE/ca/`.
pub(crate) const CERT_FILE: &str = "wharf-ca.pem";
const KEY_FILE: &str = "wharf-ca-key.pem";
const LOCK_FILE: &str = "lock";
/// Written by `wharf trust` (the stores it added the CA to, a line each), removed by
/// `wharf untrust`: with it, URLs say `https://` unless config.toml says otherwise.
const TRUSTED_FILE: &str = "trusted";
/// How long a new CA is good for.
const CA_LIFETIME: Duration = Duration::days(10 * 365);
/// How far back a certificate's validity starts, for clocks that disagree a little.
const BACKDATE: Duration = Duration::days(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    #[error(
        "HTTPS needs a CPU with AES-NI, PCLMULQDQ, AVX2, BMI1 and ADX (x86_64 from 2013 on) or \
         ARMv8 crypto extensions; this one lacks some, so wharf serves plain HTTP only"
    )]
    Cpu,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Dir(#[from] dirs::DirError),
    #[error(
        "{path} cannot be used ({why}); move it away (and {key}) to make a new CA, then run \
         `wharf trust` again"
    )]
    Unreadable {
        path: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("making a certificate: {0}")]
    Make(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn make_error(e: impl std::fmt::Display) -> CaError {
    CaError::Make(e.to_string())
}

/// The CA: its certificate and the key that signs leaves.
pub(crate) struct Authority {
    cert_pem: String,
    cert_path: PathBuf,
    /// The CA's subject, key identifier and usages, for the leaves it signs.
    issuer: Issuer<'static, Key>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// `STATE/ca`, where the CA's files are.
pub(crate) fn dir(state: &Path) -> PathBuf {
    state.join("ca")
}

impl Authority {
    /// The CA in `state`, made now if there is none yet. Several processes may ask at once:
    /// a lock makes exactly one of them make it.
    pub(crate) fn open_or_create(state: &Path) -> Result<Authority, CaError> {
        if !graviola::util::is_cpu_supported() {
            return Err(CaError::Cpu);
        }
        let dir = dir(state);
        dirs::ensure_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = dirs::open_private(&lock_path).map_err(io_error(&lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_error(&lock_path)(e.into()))?;
        match Authority::open(state)? {
            Some(ca) => Ok(ca),
            None => Authority::create(&dir),
        }
    }

    /// The CA in `state`, if one was made. A CA that has expired counts as none.
    pub(crate) fn open(state: &Path) -> Result<Option<Authority>, CaError> {
        let dir = dir(state);
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let read = |path: &Path| dirs::read_private(path).map_err(io_error(path));
        let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) else {
            return Ok(None);
        };
        let unreadable = |why: String| CaError::Unreadable {
            path: cert_path.clone(),
            key: key_path.clone(),
            why,
        };
        let cert_pem = String::from_utf8(cert).map_err(|_| unreadable("not PEM".into()))?;
        let cert_der = pem_body(&cert_pem, "CERTIFICATE").ok_or(unreadable("not PEM".into()))?;
        let key_pem =
            String::from_utf8(key).map_err(|_| unreadable("its key is not PEM".into()))?;
        let key_der =
            pem_body(&key_pem, "PRIVATE KEY").ok_or(unreadable("its key is not PEM".into()))?;
        let key = Key::from_pkcs8(&key_der).map_err(|e| unreadable(e.to_string()))?;
        let (subject, not_after) = read_cert(&cert_der).map_err(unreadable)?;
        if not_after <= OffsetDateTime::now_utc() {
            return Ok(None);
        }
        let params = authority_params(subject, &key);
        Ok(Some(Authority {
            cert_pem,
            cert_path,
            issuer: Issuer::new(params, key),
            not_after,
        }))
    }

    fn create(dir: &Path) -> Result<Authority, CaError> {
        let key = Key::generate().map_err(make_error)?;
        let now = OffsetDateTime::now_utc();
        let mut params = authority_params(subject(now), &key);
        params.serial_number = Some(serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(make_error)?;
        let key_pem = pem("PRIVATE KEY", &key.pkcs8().map_err(make_error)?);
        let cert_pem = cert.pem();
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        // The key first: a certificate without its key would be a CA that cannot sign.
        dirs::write_atomic(&key_path, key_pem.as_bytes()).map_err(io_error(&key_path))?;
        dirs::write_atomic(&cert_path, cert_pem.as_bytes()).map_err(io_error(&cert_path))?;
        let not_after = params.not_after;
        Ok(Authority {
            cert_pem,
            cert_path,
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub(crate) fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    fn issuer(&self) -> &Issuer<'static, Key> {
        &self.issuer
    }
}

/// What the CA is, as far as the leaves it signs are concerned: its subject, key identifier
/// and usages; and its constraints when it is made.
fn authority_params(subject: DistinguishedName, key: &Key) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        // A DNS constraint covers the name and every name under it (RFC 5280 §4.2.1.10).
        permitted_subtrees: vec![GeneralSubtree::DnsName("localhost".into())],
        // Constraints bind only the name types they list: without these, a certificate for
        // an IP address would pass.
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    params.key_identifier_method = KeyIdMethod::PreSpecified(key.identifier());
    params
}

/// Whether `wharf trust` has put the CA in a trust store (and `untrust` not taken it out).
pub(crate) fn is_trusted(state: &Path) -> bool {
    dir(state).join(TRUSTED_FILE).is_file()
}

/// The stores `mark_trusted` noted, a line each.
pub(crate) fn trusted_stores(state: &Path) -> Vec<String> {
    dirs::read_private(&dir(state).join(TRUSTED_FILE))
        .ok()
        .flatten()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Note the stores the CA was added to (none: forget it was trusted).
pub(crate) fn mark_trusted(state: &Path, stores: &[String]) -> Result<(), CaError> {
    let path = dir(state).join(TRUSTED_FILE);
    if stores.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(e)),
            _ => Ok(()),
        };
    }
    dirs::ensure_private_dir(&dir(state))?;
    let text: String = stores.iter().map(|s| format!("{s}\n")).collect();
    dirs::write_atomic(&path, text.as_bytes()).map_err(io_error(&path))
}

/// `wharf local CA (USER@HOST, DATE)`: trust stores list CAs by name, and a user with CAs from
/// several machines or dates can tell them apart.
fn subject(now: OffsetDateTime) -> DistinguishedName {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::getuid().to_string(), |u| u.name);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wharf (development only)");
    dn.push(
        DnType::CommonName,
        format!("wharf local CA ({user}@{host}, {})", now.date()),
    );
    dn
}

/// 16 random bytes, positive.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    graviola::random::fill(&mut bytes).map_err(|e| CaError::Make(format!("{e:?}")))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A CA certificate's subject, as `subject` made it (organization, then common name, which
/// must come back in the same order for leaves to name their issuer byte for byte), and its
/// end of validity.
fn read_cert(cert_der: &[u8]) -> Result<(DistinguishedName, OffsetDateTime), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("not X.509: {e}"))?;
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let subject = cert.subject();
    let (Some(org), Some(cn)) = (
        text(subject.iter_organization().next()),
        text(subject.iter_common_name().next()),
    ) else {
        return Err("not a CA wharf made (its subject has no O and CN)".into());
    };
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    Ok((dn, cert.validity().not_after.to_datetime()))
}

/// The DER inside the first PEM block labelled `label`.
pub(crate) fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    pem::parse_many(text)
        .ok()?
        .into_iter()
        .find(|p| p.tag() == label)
        .map(pem::Pem::into_contents)
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
