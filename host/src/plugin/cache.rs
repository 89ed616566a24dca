//! The on-disk cache of precompiled plugins.
//!
//! Compiling a component takes ~150 ms; loading a precompiled one ~0.3 ms (design brief). But
//! deserialising a precompiled artifact is `unsafe` in wasmtime: it is native code that will be
//! mapped executable. So the cache only ever deserialises artifacts it wrote itself:
//!
//! * entries are keyed by the wasm's SHA-256 and the engine's compatibility hash, so a changed
//!   plugin or engine never reuses a stale artifact;
//! * each entry carries a keyed BLAKE3 tag (a MAC) over (wasm hash, engine hash, artifact)
//!   under a random key that lives in the cache directory with mode 0600; an entry whose tag
//!   does not verify (written by someone else, truncated, corrupted) is discarded and
//!   recompiled. BLAKE3 rather than HMAC-SHA256 because the tag is checked on every load of a
//!   ~1.3 MB artifact, and loading from the cache has a 1 ms budget.
//! * the directory is created 0700 and refused if group or others can write to it.

use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

const TAG_LEN: usize = 32;
const KEY_FILE: &str = "cache-key";

/// The cache directory and its key.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    engine_hash: String,
}

fn cache_err(dir: &Path, message: impl Into<String>) -> PluginError {
    PluginError::Cache {
        dir: dir.to_path_buf(),
        message: message.into(),
    }
}

impl ArtifactCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self, PluginError> {
        fs::create_dir_all(dir).map_err(|e| cache_err(dir, format!("cannot create: {e}")))?;
        let meta = fs::metadata(dir).map_err(|e| cache_err(dir, format!("cannot stat: {e}")))?;
        if !meta.is_dir() {
            return Err(cache_err(dir, "is not a directory"));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            // Someone else could plant artifacts; tighten if we own it, else refuse.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                cache_err(
                    dir,
                    format!(
                        "is writable by group or others (mode {:o}) and cannot be restricted: {e}",
                        mode & 0o777
                    ),
                )
            })?;
        }
        let key = load_or_create_key(dir)?;
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // The compatibility hash covers the engine's settings; the version pins the hasher.
        let engine_hash = format!("{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish());
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            key,
            engine_hash,
        })
    }

    fn path_for(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", self.engine_hash))
    }

    fn tag(&self, wasm_sha256: &str, artifact: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(wasm_sha256.as_bytes());
        mac.update(b"\0");
        mac.update(self.engine_hash.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac.finalize()
    }

    /// The cached component for this wasm, if a valid entry exists.
    pub(crate) fn get(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let path = self.path_for(wasm_sha256);
        let bytes = fs::read(&path).ok()?;
        if bytes.len() <= TAG_LEN {
            tracing::warn!(path = %path.display(), "discarding truncated plugin cache entry");
            let _ = fs::remove_file(&path);
            return None;
        }
        let (tag, artifact) = bytes.split_at(TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
        // `blake3::Hash` compares in constant time.
        if self.tag(wasm_sha256, artifact) != blake3::Hash::from_bytes(tag) {
            tracing::warn!(path = %path.display(), "discarding plugin cache entry whose tag does not verify (not written by this cache)");
            let _ = fs::remove_file(&path);
            return None;
        }
        // SAFETY: `Component::deserialize` maps the artifact as native code. It is sound for
        // artifacts produced by `Engine::precompile_component` of a compatible engine. The MAC
        // above proves this cache wrote these exact bytes for this wasm hash and this engine's
        // compatibility hash, and only `put` below writes entries, from `precompile_component`.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        match component {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable plugin cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a precompiled artifact, atomically (write to a temporary file, then rename).
    pub(crate) fn put(&self, wasm_sha256: &str, artifact: &[u8]) -> Result<(), PluginError> {
        let tag = self.tag(wasm_sha256, artifact);
        let path = self.path_for(wasm_sha256);
        // Unique per process and per call: concurrent loads of the same plugin must not share
        // a temporary file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{wasm_sha256}.{}.{n}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(tag.as_bytes())?;
            f.write_all(artifact)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            cache_err(&self.dir, format!("cannot write {}: {e}", path.display()))
        })
    }
}

fn load_or_create_key(dir: &Path) -> Result<[u8; 32], PluginError> {
    let path = dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(cache_err(
                    dir,
                    format!(
                        "{} is readable by group or others (mode {:o}); remove it to regenerate",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            bytes.try_into().map_err(|_| {
                cache_err(
                    dir,
                    format!(
                        "{} is not a 32-byte key; remove it to regenerate",
                        path.display()
                    ),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key)
                .map_err(|e| cache_err(dir, format!("no randomness for the cache key: {e}")))?;
            // Write under a temporary name and link it into place: a concurrent opener either
            // sees no key or a whole one, and exactly one key wins.
            let tmp = dir.join(format!(
                ".{KEY_FILE}.{}.{}.tmp",
                std::process::id(),
                hex::encode(&key[..8])
            ));
            let write = || -> std::io::Result<()> {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()
            };
            write().map_err(|e| cache_err(dir, format!("cannot write {}: {e}", tmp.display())))?;
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(dir),
                Err(e) => Err(cache_err(
                    dir,
                    format!("cannot create {}: {e}", path.display()),
                )),
            }
        }
        Err(e) => Err(cache_err(
            dir,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}
