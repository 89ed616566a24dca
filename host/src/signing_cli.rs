//! `modalis plugin keygen | sign | verify`, and the trust options of `modalis run`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::controller::PluginTrust;
use crate::plugin::signing::{self, TrustStore};

/// `modalis plugin keygen`
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Who the key belongs to, for the trust store entry printed.
    #[arg(long, default_value = "my company")]
    pub name: String,
}

/// `modalis plugin sign`
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// The private key file (from `modalis plugin keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The signer's name written into the signature.
    #[arg(long, default_value = "unnamed signer")]
    pub signer: String,
    /// Where to write the signature [default: FILE.sig].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `modalis plugin verify`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// The signature [default: FILE.sig].
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Whose plugin signatures a command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The trust store: a TOML file of `[[keys]]` with `name`, `public_key` (hex) and
    /// optionally `development = true`.
    #[arg(long, value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// Also trust the development key the bundled plugins are signed with. Anyone can sign
    /// with it: development and simulation only.
    #[arg(long)]
    pub trust_dev_key: bool,
    /// DEVELOPMENT ONLY: load plugins whose signature is missing, broken or by an unknown
    /// key. Logged, audited and shown in the controller's retained MQTT state.
    #[arg(long)]
    pub allow_unsigned_plugins: bool,
}

impl TrustArgs {
    /// The trust store these options describe.
    pub fn store(&self) -> anyhow::Result<TrustStore> {
        let mut store = match &self.trust {
            Some(p) => TrustStore::from_toml_file(p)?,
            None => TrustStore::new(),
        };
        if self.trust_dev_key {
            store.add(signing::development_key()?);
        }
        Ok(store)
    }

    /// The controller's plugin policy.
    pub fn policy(&self) -> anyhow::Result<PluginTrust> {
        Ok(PluginTrust {
            store: self.store()?,
            allow_unsigned: self.allow_unsigned_plugins,
        })
    }
}

/// Writes a new signing key and prints the trust store entry for its public half.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&args.out).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            args.out.display()
        )
    })?;
    writeln!(
        f,
        "# modalis plugin signing key of {}: PRIVATE, keep it off the controller.\n{}",
        args.name,
        hex::encode(key.to_bytes())
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    let public = key.verifying_key();
    println!("private key  {}", args.out.display());
    println!("key id       {}", signing::key_id(&public));
    println!("\nAdd this to a controller's trust store to accept plugins it signs:\n");
    println!(
        "[[keys]]\nname = {:?}\npublic_key = \"{}\"",
        args.name,
        hex::encode(public.as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// Signs a plugin file.
pub fn sign(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let key = signing::read_signing_key(&args.key)?;
    let wasm = read(&args.file, "plugin")?;
    let sig = signing::sign(&wasm, &key, &args.signer);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| signing::signature_path(&args.file));
    let text = serde_json::to_string_pretty(&sig)?;
    std::fs::write(&out, format!("{text}\n"))
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "signed {} (sha256 {}) with key {}\nsignature {}",
        args.file.display(),
        sig.wasm_sha256,
        signing::key_id(&key.verifying_key()),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Verifies a plugin file against a trust store; exits 1 when it would be refused.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.trust.trust.is_none() && !args.trust.trust_dev_key {
        bail!("verify against what? give --trust FILE and/or --trust-dev-key");
    }
    let store = args.trust.store()?;
    let wasm = read(&args.file, "plugin")?;
    let sig_path = args
        .signature
        .clone()
        .unwrap_or_else(|| signing::signature_path(&args.file));
    let sig = match std::fs::read(&sig_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "REFUSED {}: unsigned: no signature at {}",
                args.file.display(),
                sig_path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    match store.verify(&wasm, &sig) {
        Ok(v) => {
            println!(
                "OK {}: signed by {:?} (key {}){}",
                args.file.display(),
                v.key_name,
                v.key_id,
                if v.development {
                    " — a DEVELOPMENT key: anyone can sign with it"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("REFUSED {}: {e}", args.file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}
