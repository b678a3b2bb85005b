//! An ECDSA P-256 key from graviola, in the shapes the CA needs: signing for rcgen, PKCS#8 for
//! the key file and for rustls, and its key identifier.

use graviola::hashing::Sha256;
use graviola::signing::ecdsa::{P256, SigningKey};
use rcgen::{PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm};

/// A P-256 public key is 65 bytes uncompressed; its SubjectPublicKeyInfo, 91.
const POINT_LEN: usize = 65;
const SPKI_LEN: usize = 91;

pub(crate) struct Key {
    key: SigningKey<P256>,
    /// The uncompressed public point: what a certificate's SubjectPublicKeyInfo carries.
    point: [u8; POINT_LEN],
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(String);

fn failed(what: &str, e: graviola::Error) -> KeyError {
    KeyError(format!("{what}: {e:?}"))
}

impl Key {
    pub(crate) fn generate() -> Result<Key, KeyError> {
        let key = SigningKey::<P256>::generate().map_err(|e| failed("generating a key", e))?;
        Key::from(key)
    }

    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Key, KeyError> {
        let key = SigningKey::<P256>::from_pkcs8_der(der)
            .map_err(|e| failed("reading a PKCS#8 P-256 key", e))?;
        Key::from(key)
    }

    fn from(key: SigningKey<P256>) -> Result<Key, KeyError> {
        let mut spki = [0u8; SPKI_LEN + 16];
        let spki = key
            .to_spki_der(&mut spki)
            .map_err(|e| failed("encoding a public key", e))?;
        let point = spki
            .get(spki.len().saturating_sub(POINT_LEN)..)
            .and_then(|p| <[u8; POINT_LEN]>::try_from(p).ok())
            .ok_or_else(|| KeyError("a P-256 public key of an unexpected size".into()))?;
        Ok(Key { key, point })
    }

    pub(crate) fn pkcs8(&self) -> Result<Vec<u8>, KeyError> {
        let mut buf = [0u8; 256];
        let der = self
            .key
            .to_pkcs8_der(&mut buf)
            .map_err(|e| failed("encoding a key", e))?;
        Ok(der.to_vec())
    }

    /// RFC 7093's first method: the leftmost 160 bits of the SHA-256 of the public key.
    pub(crate) fn identifier(&self) -> Vec<u8> {
        let mut digest = graviola::hashing::sha2::Sha256Context::new();
        digest.update(&self.point);
        digest.finish()[..20].to_vec()
    }
}

impl PublicKeyData for Key {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut sig = [0u8; 80];
        let sig = self
            .key
            .sign_asn1::<Sha256>(&[msg], &mut sig)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_vec())
    }
}
