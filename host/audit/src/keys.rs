//! The controller's Ed25519 checkpoint-signing key.
//!
//! The secret key lives in `controller.key` (hex, mode 0600), the public key beside it in
//! `controller.pub` (hex, world-readable) so that `verify` can run without the secret.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::AuditError;
use crate::layout;

/// Loads the signing key from `dir`, creating it on first start.
pub(crate) fn load_or_create(dir: &Path) -> Result<SigningKey, AuditError> {
    let path = dir.join(layout::KEY_FILE);
    let key = match fs::metadata(&path) {
        Ok(meta) => {
            // Refuse a key others could read: a leaked key lets anyone forge checkpoints.
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::KeyPermissions { path, mode });
            }
            let text = fs::read_to_string(&path).map_err(|e| AuditError::io(&path, e))?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).map_err(|e| AuditError::BadKeyFile {
                path: path.clone(),
                reason: format!("expected 64 hex characters: {e}"),
            })?;
            SigningKey::from_bytes(&secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path)?,
        Err(e) => return Err(AuditError::io(&path, e)),
    };
    write_public(dir, &key.verifying_key())?;
    Ok(key)
}

fn create(dir: &Path, path: &Path) -> Result<SigningKey, AuditError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    // Write to a temporary name and rename, so a crash never leaves a half-written key
    // under the real name (which would stop the next start).
    let tmp = dir.join(format!("{}.tmp", layout::KEY_FILE));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AuditError::io(&tmp, e))?;
    // A stale temporary from an earlier crash may carry other bits; `mode` applies only to
    // newly created files.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| AuditError::io(&tmp, e))?;
    writeln!(f, "{}", hex::encode(key.to_bytes())).map_err(|e| AuditError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AuditError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| AuditError::io(path, e))?;
    sync_dir(dir)?;
    tracing::info!(path = %path.display(), "generated the controller's audit signing key");
    Ok(key)
}

/// Writes `controller.pub` unless it already holds this key.
fn write_public(dir: &Path, public: &VerifyingKey) -> Result<(), AuditError> {
    let path = dir.join(layout::PUBLIC_KEY_FILE);
    let want = hex::encode(public.as_bytes());
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == want => return Ok(()),
        Ok(_) => {
            return Err(AuditError::BadKeyFile {
                path,
                reason: format!(
                    "does not match the signing key in {}; \
                     restore the original pair or move both aside",
                    layout::KEY_FILE
                ),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuditError::io(&path, e)),
    }
    let tmp = dir.join(format!("{}.tmp", layout::PUBLIC_KEY_FILE));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| AuditError::io(&tmp, e))?;
    writeln!(f, "{want}").map_err(|e| AuditError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AuditError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| AuditError::io(&path, e))?;
    sync_dir(dir)
}

/// Reads `controller.pub`.
pub(crate) fn read_public(dir: &Path) -> Result<VerifyingKey, AuditError> {
    let path = dir.join(layout::PUBLIC_KEY_FILE);
    let text = fs::read_to_string(&path).map_err(|e| AuditError::io(&path, e))?;
    parse_public(text.trim()).map_err(|reason| AuditError::BadKeyFile { path, reason })
}

/// Parses a public key given as 64 hex characters.
pub fn parse_public(hex_key: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes)
        .map_err(|e| format!("expected 64 hex characters: {e}"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// fsyncs a directory so that a file created or renamed in it survives a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}
