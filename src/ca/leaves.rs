//! The certificates the proxy shows: one per host, for `HOST` and `*.HOST` (`shop.localhost`
//! also covers `api.shop.localhost`; bare `localhost` covers itself only), issued by the CA the first time a client asks for it,
//! kept in memory, and issued afresh once two thirds of its life are gone. Each has a key of
//! its own. Which hosts get one is the proxy's decision, not this file's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyIdMethod,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use crate::ca::{Authority, BACKDATE, CaError, Key, make_error, serial};

/// How long a leaf is good for; browsers accept at most 398 days for public CAs, and nothing
/// needs more here, since the proxy issues them as it goes.
const LIFETIME: Duration = Duration::days(30);
/// A leaf with less than this left is issued again.
const RENEW_BEFORE: Duration = Duration::days(10);
/// Hosts whose leaves are kept; past this the cache starts over (hosts are registered names,
/// so only a machine with this many instances gets there).
const KEEP: usize = 1024;

pub(crate) struct Leaves {
    ca: Authority,
    provider: Arc<CryptoProvider>,
    issued: Mutex<HashMap<String, Issued>>,
}

struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: OffsetDateTime,
}

impl Leaves {
    pub(crate) fn new(ca: Authority, provider: Arc<CryptoProvider>) -> Leaves {
        Leaves {
            ca,
            provider,
            issued: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    pub(crate) fn authority(&self) -> &Authority {
        &self.ca
    }

    /// The certificate and key for `host` (`localhost` or `NAME.localhost`, lowercase).
    pub(crate) fn get(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut issued = self
            .issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(leaf) = issued.get(host)
            && leaf.renew_at > now
        {
            return Ok(leaf.key.clone());
        }
        let (key, not_after) = self.issue(host, now)?;
        if issued.len() >= KEEP {
            issued.clear();
        }
        issued.insert(
            host.to_string(),
            Issued {
                key: key.clone(),
                renew_at: not_after - RENEW_BEFORE.min((not_after - now) / 3),
            },
        );
        Ok(key)
    }

    fn issue(
        &self,
        host: &str,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), CaError> {
        let key = Key::generate().map_err(make_error)?;
        let mut names = vec![host.to_string()];
        // Verifiers refuse a wildcard over a single label (`*.localhost`).
        if host.contains('.') {
            names.push(format!("*.{host}"));
        }
        let mut params = CertificateParams::new(names).map_err(make_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key.identifier());
        params.serial_number = Some(serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = (now + LIFETIME).min(self.ca.not_after());
        let cert = params
            .signed_by(&key, self.ca.issuer())
            .map_err(make_error)?;
        let pkcs8 =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8().map_err(make_error)?));
        let signer = self
            .provider
            .key_provider
            .load_private_key(pkcs8)
            .map_err(make_error)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        Ok((Arc::new(CertifiedKey::new(chain, signer)), params.not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn leaves(state: &std::path::Path) -> Leaves {
        let ca = Authority::open_or_create(state).unwrap();
        Leaves::new(ca, Arc::new(rustls_graviola::default_provider()))
    }

    /// Verify `chain` for `host` as a client that trusts only wharf's CA would.
    fn verify(
        ca: &Authority,
        leaf: &CertificateDer<'static>,
        host: &str,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let der = crate::ca::pem_body(ca.cert_pem(), "CERTIFICATE").unwrap();
        roots.add(CertificateDer::from(der)).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls_graviola::default_provider()),
        )
        .build()
        .unwrap();
        let name = ServerName::try_from(host.to_string()).unwrap();
        verifier
            .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_leaf_covers_its_host_and_the_names_under_it_only() {
        let tmp = tempfile::tempdir().unwrap();
        let leaves = leaves(tmp.path());
        let leaf = leaves.get("shop.localhost").unwrap();
        let cert = &leaf.cert[0];
        let ca = leaves.authority();
        verify(ca, cert, "shop.localhost").unwrap();
        verify(ca, cert, "api.shop.localhost").unwrap();
        assert!(verify(ca, cert, "other.localhost").is_err());
        // Cached: the same certificate again.
        assert_eq!(leaves.get("shop.localhost").unwrap().cert[0], *cert);
    }

    #[test]
    fn the_ca_cannot_vouch_for_a_real_site_or_an_address() {
        let tmp = tempfile::tempdir().unwrap();
        let leaves = leaves(tmp.path());
        let ca = leaves.authority();
        // What a thief with the CA's key would make.
        for (san, host) in [
            (
                rcgen::SanType::DnsName("example.com".try_into().unwrap()),
                "example.com",
            ),
            (
                rcgen::SanType::DnsName("localhost.example.com".try_into().unwrap()),
                "localhost.example.com",
            ),
            (
                rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
                "127.0.0.1",
            ),
        ] {
            let key = Key::generate().unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![san];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.serial_number = Some(serial().unwrap());
            let forged = params.signed_by(&key, ca.issuer()).unwrap();
            let forged = CertificateDer::from(forged.der().to_vec());
            let refused = verify(ca, &forged, host).unwrap_err();
            assert!(
                format!("{refused:?}").contains("NameConstraint")
                    || format!("{refused:?}").contains("NotValidForName"),
                "{host}: {refused:?}"
            );
        }
    }

    #[test]
    fn the_ca_survives_a_restart_and_signs_for_the_same_trust() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Authority::open_or_create(tmp.path()).unwrap();
        let again = Authority::open(tmp.path()).unwrap().unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        let leaves = Leaves::new(again, Arc::new(rustls_graviola::default_provider()));
        let leaf = leaves.get("localhost").unwrap();
        verify(&first, &leaf.cert[0], "localhost").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |f: &str| {
            std::fs::metadata(crate::ca::dir(tmp.path()).join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(crate::ca::KEY_FILE), 0o600);
        assert_eq!(mode(""), 0o700);
    }

    #[test]
    fn a_damaged_ca_file_is_an_error_that_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        Authority::open_or_create(tmp.path()).unwrap();
        let cert = crate::ca::dir(tmp.path()).join(crate::ca::CERT_FILE);
        std::fs::write(&cert, "garbage").unwrap();
        let e = Authority::open(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("move it away") && e.contains("wharf trust"),
            "{e}"
        );
    }
}
