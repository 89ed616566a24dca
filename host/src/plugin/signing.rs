//! Plugin signatures: a vendor signs the SHA-256 of its component with Ed25519; the controller
//! loads a plugin only when a key in its trust store signed exactly those bytes.
//!
//! The signature travels beside the component as `<file>.wasm.sig`, a small JSON document
//! ([`PluginSignature`]) a vendor can read. What is signed is [`CONTEXT`] followed by the
//! 32-byte SHA-256 of the `.wasm`: the context keeps a plugin signature from ever being
//! mistaken for a signature over anything else made with the same key.
//!
//! The trust store is a TOML file a clinic keeps ([`TrustStore::from_toml_file`]). The
//! bundled first-party plugins are signed at build time with a development key whose private
//! half is in the repository (`plugins/artifacts/dev-signing-key.txt`): trusting it trusts
//! anyone, so it is marked `development` wherever it appears.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The `format` every signature document carries.
pub const FORMAT: &str = "modalis-plugin-signature/1";

/// Bytes signed before the component's SHA-256 (domain separation).
pub const CONTEXT: &[u8] = b"modalis plugin signature v1\0";

/// The name the development key goes by in trust stores and controller state.
pub const DEV_KEY_NAME: &str = "modalis development key (public; trusts anyone)";

/// A detached plugin signature, as written to `<file>.wasm.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSignature {
    /// Always `modalis-plugin-signature/1`.
    pub format: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// SHA-256 of the signed `.wasm`, lowercase hex.
    pub wasm_sha256: String,
    /// Who signed, as the signer calls itself (informational; trust comes from the key).
    pub signer: String,
    /// The Ed25519 public key, 32 bytes in lowercase hex.
    pub public_key: String,
    /// The Ed25519 signature over the context and the SHA-256, 64 bytes in lowercase hex.
    pub signature: String,
}

/// Why a plugin's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature file or bytes.
    #[error("unsigned: no signature ({0})")]
    Missing(String),
    /// The signature document does not parse or has a wrong field.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The component is not the one that was signed.
    #[error(
        "tampered: the component's SHA-256 is {actual}, the signature is for {signed}; the file changed after it was signed"
    )]
    Tampered {
        /// Hash of the bytes at hand.
        actual: String,
        /// Hash the signature names.
        signed: String,
    },
    /// The signature does not verify under its public key.
    #[error("the Ed25519 signature does not verify under key {key_id}")]
    BadSignature {
        /// Short id of the key.
        key_id: String,
    },
    /// A valid signature by a key the trust store does not hold.
    #[error(
        "signed by {signer:?} with key {key_id}, which is not in the trust store (add its public key {public_key} to trust it)"
    )]
    Untrusted {
        /// The signer's own name for itself.
        signer: String,
        /// Short id of the key.
        key_id: String,
        /// The whole public key, hex.
        public_key: String,
    },
}

/// A signature that verified under a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The trust store's name for the key.
    pub key_name: String,
    /// Short id of the key.
    pub key_id: String,
    /// Whether that key is a development key.
    pub development: bool,
    /// SHA-256 of the component, hex.
    pub wasm_sha256: String,
}

/// The short id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
}

fn message(wasm_sha256: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + wasm_sha256.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(wasm_sha256);
    m
}

/// Signs a component.
pub fn sign(wasm: &[u8], key: &SigningKey, signer: &str) -> PluginSignature {
    let digest = sha2::Sha256::digest(wasm);
    let signature = key.sign(&message(&digest));
    PluginSignature {
        format: FORMAT.to_string(),
        algorithm: "ed25519".to_string(),
        wasm_sha256: hex::encode(digest),
        signer: signer.to_string(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

/// The path a component's signature is looked for at: `<file>.sig`.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut p = wasm.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// Parses a signature document.
pub fn parse(bytes: &[u8]) -> Result<PluginSignature, SignatureError> {
    let s: PluginSignature =
        serde_json::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if s.format != FORMAT {
        return Err(SignatureError::Malformed(format!(
            "format is {:?}, expected {FORMAT:?}",
            s.format
        )));
    }
    if s.algorithm != "ed25519" {
        return Err(SignatureError::Malformed(format!(
            "algorithm is {:?}, expected \"ed25519\"",
            s.algorithm
        )));
    }
    Ok(s)
}

fn hex_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|e| format!("{field}: not hex: {e}"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{field}: {} bytes, expected {N}", bytes.len()))
}

/// [`hex_array`] for a field of a signature document.
fn sig_field<const N: usize>(field: &str, text: &str) -> Result<[u8; N], SignatureError> {
    hex_array(field, text).map_err(SignatureError::Malformed)
}

/// A key a trust store holds.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// A name for messages and the audit log.
    pub name: String,
    /// The public key.
    pub key: VerifyingKey,
    /// A development key (its private half is not secret).
    pub development: bool,
}

/// The keys a controller accepts plugin signatures from.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: Vec<TrustedKey>,
}

/// One `[[keys]]` entry of a trust store file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// Who the key belongs to.
    name: String,
    /// Ed25519 public key, 32 bytes in hex.
    public_key: String,
    /// Whether it is a development key.
    #[serde(default)]
    development: bool,
}

/// A trust store file: `[[keys]]` tables with `name`, `public_key` and `development`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    /// The trusted keys.
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// Why a trust store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trust store {path}: {message}")]
pub struct TrustStoreError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with the field.
    pub message: String,
}

impl TrustStore {
    /// An empty store: every plugin is refused.
    pub fn new() -> TrustStore {
        TrustStore::default()
    }

    /// Adds a key.
    pub fn add(&mut self, key: TrustedKey) {
        self.keys.push(key);
    }

    /// The keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Whether any trusted key is a development key.
    pub fn trusts_development_key(&self) -> bool {
        self.keys.iter().any(|k| k.development)
    }

    /// Reads a trust store file.
    pub fn from_toml_file(path: &Path) -> Result<TrustStore, TrustStoreError> {
        let err = |message: String| TrustStoreError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: TrustFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut store = TrustStore::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let bytes = hex_array::<32>("public_key", k.public_key.trim())
                .map_err(|e| err(format!("keys[{i}] ({}): {e}", k.name)))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| err(format!("keys[{i}] ({}): public_key: {e}", k.name)))?;
            store.add(TrustedKey {
                name: k.name,
                key,
                development: k.development,
            });
        }
        Ok(store)
    }

    /// Checks a component against its signature document.
    pub fn verify(&self, wasm: &[u8], signature: &[u8]) -> Result<Verified, SignatureError> {
        let s = parse(signature)?;
        let actual = hex::encode(sha2::Sha256::digest(wasm));
        if !s.wasm_sha256.eq_ignore_ascii_case(&actual) {
            return Err(SignatureError::Tampered {
                actual,
                signed: s.wasm_sha256,
            });
        }
        let public = sig_field::<32>("public_key", &s.public_key)?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|e| SignatureError::Malformed(format!("public_key: {e}")))?;
        let sig = Signature::from_bytes(&sig_field::<64>("signature", &s.signature)?);
        let digest = sig_field::<32>("wasm_sha256", &actual)?;
        let id = key_id(&key);
        // verify_strict refuses the weak keys and malleable signatures plain verify allows.
        key.verify_strict(&message(&digest), &sig)
            .map_err(|_| SignatureError::BadSignature { key_id: id.clone() })?;
        let Some(trusted) = self.keys.iter().find(|k| k.key == key) else {
            return Err(SignatureError::Untrusted {
                signer: s.signer,
                key_id: id,
                public_key: s.public_key,
            });
        };
        Ok(Verified {
            key_name: trusted.name.clone(),
            key_id: id,
            development: trusted.development,
            wasm_sha256: actual,
        })
    }
}

/// Reads a signing key file: 32 bytes of hex (the Ed25519 seed) on the first line that is not
/// a `#` comment.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, TrustStoreError> {
    let err = |message: String| TrustStoreError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| err("no key: expected 64 hex digits".into()))?;
    let seed = hex_array::<32>("signing key", line).map_err(err)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The development key's public half, trusted by `modalis demo` and `--trust-dev-key`.
pub fn development_key() -> Result<TrustedKey, SignatureError> {
    let bytes = sig_field::<32>(
        "development public key",
        modalis_plugin_artifacts::DEV_PUBLIC_KEY,
    )?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|e| SignatureError::Malformed(format!("development public key: {e}")))?;
    Ok(TrustedKey {
        name: DEV_KEY_NAME.to_string(),
        key,
        development: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn store_with(k: &SigningKey) -> TrustStore {
        let mut s = TrustStore::new();
        s.add(TrustedKey {
            name: "Vendor".into(),
            key: k.verifying_key(),
            development: false,
        });
        s
    }

    fn doc(s: &PluginSignature) -> Vec<u8> {
        serde_json::to_vec(s).expect("serialises")
    }

    #[test]
    fn a_signature_by_a_trusted_key_verifies() {
        let k = key(7);
        let wasm = b"\0asm component bytes";
        let v = store_with(&k)
            .verify(wasm, &doc(&sign(wasm, &k, "Vendor")))
            .expect("verifies");
        assert_eq!(v.key_name, "Vendor");
        assert!(!v.development);
    }

    #[test]
    fn changed_bytes_are_tampered() {
        let k = key(7);
        let sig = doc(&sign(b"original", &k, "Vendor"));
        let e = store_with(&k).verify(b"originaL", &sig).err();
        assert!(matches!(e, Some(SignatureError::Tampered { .. })), "{e:?}");
    }

    #[test]
    fn a_forged_hash_does_not_verify() {
        let k = key(7);
        let mut s = sign(b"original", &k, "Vendor");
        // Claims to be for other bytes, with the signature of the original.
        s.wasm_sha256 = hex::encode(sha2::Sha256::digest(b"evil"));
        let e = store_with(&k).verify(b"evil", &doc(&s)).err();
        assert!(
            matches!(e, Some(SignatureError::BadSignature { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_key_outside_the_store_is_untrusted() {
        let e = store_with(&key(7))
            .verify(b"x", &doc(&sign(b"x", &key(8), "Someone")))
            .err();
        assert!(
            matches!(&e, Some(SignatureError::Untrusted { signer, .. }) if signer == "Someone"),
            "{e:?}"
        );
    }

    #[test]
    fn malformed_documents_say_which_field() {
        let k = key(7);
        let mut s = sign(b"x", &k, "Vendor");
        s.signature = "zz".into();
        let e = store_with(&k)
            .verify(b"x", &doc(&s))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("signature: not hex")),
            "{e:?}"
        );
        let e = store_with(&k)
            .verify(b"x", b"{}")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("missing field")),
            "{e:?}"
        );
    }

    #[test]
    fn the_bundled_plugins_carry_development_signatures() {
        let mut store = TrustStore::new();
        store.add(development_key().expect("dev key parses"));
        for a in modalis_plugin_artifacts::FIRST_PARTY {
            let v = store
                .verify(a.bytes, a.signature.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", a.package));
            assert!(v.development, "{}", a.package);
        }
    }
}
