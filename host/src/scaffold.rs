//! `modalis plugin new`: scaffolds a modality plugin crate for a device vendor.
//!
//! The crate is meant to live outside the modalis repository, so it depends on the SDK by path
//! (the SDK is not on crates.io) and carries a `[workspace]` table of its own. As scaffolded it
//! passes its own unit tests, builds for `wasm32-wasip2`, passes `modalis plugin check`, and its
//! sample plan passes the governor's pre-check against the matching example device profile
//! (`host/tests/it/plugin_new.rs` does all of that through the real binary).
//!
//! The files are templates under `host/templates/plugin/`, compiled into the binary; this
//! module only picks the template for the modality and fills in names, numbers and the SDK
//! path. It writes files and nothing else: no cargo, no network.

use std::path::{Path, PathBuf};

use modalis_sdk::ModalityKind;

/// The SDK directory of the modalis source tree this binary was built from, the default for
/// `--sdk`. It exists as long as that checkout does; a binary copied elsewhere needs `--sdk`.
pub fn default_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// What to scaffold and where.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// Crate name, already checked by [`parse_name`].
    pub name: String,
    /// The modality; it picks the template.
    pub modality: ModalityKind,
    /// The crate's directory; it must not exist yet.
    pub dir: PathBuf,
    /// The SDK directory (`sdk/` of a modalis source tree).
    pub sdk: PathBuf,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Scaffolded {
    /// The new crate's directory.
    pub dir: PathBuf,
    /// The SDK directory the crate depends on, absolute.
    pub sdk: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// The modalis `Cargo.lock` the crate's lock file was seeded from, if there was one.
    pub lock_seeded_from: Option<PathBuf>,
    /// The component `cargo build --release --target wasm32-wasip2` produces, relative to
    /// `dir` (with the default target directory).
    pub wasm: PathBuf,
    /// The example device profile (relative to the modalis source tree) whose channel the
    /// plugin drives, when the governor has rules for the modality.
    pub example_profile: Option<&'static str>,
    /// Whether the crate landed inside the modalis source tree the SDK belongs to. It builds
    /// there too (it is its own workspace), but a vendor's plugin belongs in its own repository.
    pub inside_source_tree: bool,
}

/// Why a plugin could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The target directory exists.
    #[error(
        "{}: already exists; `modalis plugin new` never writes into an existing directory (choose another name or --dir)",
        path.display()
    )]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// The SDK directory is missing or is not the modalis SDK.
    #[error(
        "{}: {reason}; pass --sdk PATH with the sdk/ directory of a modalis source tree",
        path.display()
    )]
    Sdk {
        /// The directory given or defaulted.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Names `cargo` refuses or that would clash with the crates the scaffold depends on. Rust
/// keywords cannot name a library crate; `test`, `std`, `core`, `alloc` and `proc_macro`
/// shadow built-in crates; the Windows device names cannot be directories there.
const RESERVED: &[&str] = &[
    // Rust keywords (2024 edition, strict and reserved).
    "abstract as async await become box break const continue crate do dyn else enum extern",
    "false final fn for gen if impl in let loop macro match mod move mut override priv pub",
    "ref return self static struct super trait true try type typeof unsafe unsized use virtual",
    "where while yield",
    // Built-in crates.
    "alloc core proc_macro proc-macro std test",
    // The scaffold's own dependencies.
    "modalis-sdk modalis_sdk serde schemars",
    // Windows device names.
    "con prn aux nul com1 com2 com3 com4 com5 com6 com7 com8 com9",
    "lpt1 lpt2 lpt3 lpt4 lpt5 lpt6 lpt7 lpt8 lpt9",
];

/// Checks a plugin crate name: 1-64 lower-case ASCII letters, digits, `-` and `_`, starting
/// with a letter, not ending with `-` or `_`, not reserved. The plugin id is the name with `_`
/// as `-`, which then satisfies the manifest's id rule (lower-case kebab, at most 64).
pub fn parse_name(name: &str) -> Result<String, String> {
    const RULE: &str = "expected 1-64 lower-case letters, digits, '-' or '_', starting with a letter and not ending with '-' or '_' (e.g. acme-lllt)";
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!("{name:?} is not a plugin crate name: {RULE}"));
    }
    if RESERVED
        .iter()
        .any(|line| line.split_whitespace().any(|r| r == name))
    {
        return Err(format!(
            "{name:?} is reserved (a Rust keyword, a built-in crate, a crate the plugin depends on, or a Windows device name); choose another name"
        ));
    }
    Ok(name.to_string())
}

/// Parses a modality kind by the SDK's kebab-case name.
pub fn parse_modality(s: &str) -> Result<ModalityKind, String> {
    ModalityKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = ModalityKind::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "unknown modality {s:?}: expected one of {}",
                names.join(", ")
            )
        })
}

/// The four plan skeletons, one per kind of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Template {
    /// A probe held still on one site after another (photobiomodulation, laser acupuncture).
    Optical,
    /// A beam scanned over areas (Class IV).
    Scanned,
    /// A heat setpoint held for the session (infrared pads and lamps).
    Heat,
    /// A ramped electrical stimulus (TENS).
    Electrical,
}

/// Everything about a modality that the templates need.
#[derive(Debug, Clone, Copy)]
struct Kind {
    template: Template,
    /// Must match a channel of the example device profile, so the sample plan pre-checks.
    channel: &'static str,
    channel_description: &'static str,
    /// `examples/profiles/...` with that channel; `None` where the governor has no rules.
    example_profile: Option<&'static str>,
    /// The optical template's numbers and words (unused by the others).
    optical: Optical,
}

#[derive(Debug, Clone, Copy)]
struct Optical {
    device_noun: &'static str,
    clinical_context: &'static str,
    wavelength_nm: f64,
    power_mw: f64,
    beam_area_cm2: f64,
    dose_j: f64,
    /// Sample sites in their text form, `region:side` or `CODE:side`.
    sites: &'static [&'static str],
}

/// The defaults of the photobiomodulation skeleton: an 808 nm probe, 80 mW on 1 cm2 (below
/// the 100 mW/cm2 LLLT irradiance), 3 J per site (3 J/cm2, inside the 2.5-4 J/cm2 of the
/// neuropathy trials; clinical-facts.md, "LLLT / photobiomodulation").
const PBM: Optical = Optical {
    device_noun: "probe",
    clinical_context: "clinical-facts.md, \"LLLT / photobiomodulation\": 780-860 nm, 5-500 mW, 1-8 J per point, about 2.5-4 J/cm2 in neuropathy trials, irradiance below about 100 mW/cm2",
    wavelength_nm: 808.0,
    power_mw: 80.0,
    beam_area_cm2: 1.0,
    dose_j: 3.0,
    sites: &["foot_dorsum:left", "foot_dorsum:right"],
};

fn kind(m: ModalityKind) -> Kind {
    match m {
        ModalityKind::Photobiomodulation => Kind {
            template: Template::Optical,
            channel: "probe",
            channel_description: "808 nm probe",
            example_profile: Some("examples/profiles/lllt-808.toml"),
            optical: PBM,
        },
        ModalityKind::LaserAcupuncture => Kind {
            template: Template::Optical,
            channel: "probe",
            channel_description: "808 nm acupuncture probe",
            example_profile: Some("examples/profiles/laser-acupuncture-probe.toml"),
            // clinical-facts.md, "Laser acupuncture": Class 3B probe, 100-400 mW, 10-50 s and
            // 0.5-8 J per point; ST36 is on every neuropathy point list there.
            optical: Optical {
                device_noun: "probe",
                clinical_context: "clinical-facts.md, \"Laser acupuncture\": Class 3B probe, 100-400 mW, 10-50 s and 0.5-8 J per point (about 4 J/cm2), points such as ST36, SP6, GB34",
                power_mw: 200.0,
                dose_j: 4.0,
                sites: &["ST36:left", "ST36:right"],
                ..PBM
            },
        },
        ModalityKind::Class4Laser => Kind {
            template: Template::Scanned,
            channel: "handpiece",
            channel_description: "scanning handpiece",
            example_profile: Some("examples/profiles/class4-15w.toml"),
            optical: PBM,
        },
        ModalityKind::InfraredHeat => Kind {
            template: Template::Heat,
            channel: "pad-1",
            channel_description: "infrared pad",
            example_profile: Some("examples/profiles/mire-pads.toml"),
            optical: PBM,
        },
        ModalityKind::Tens => Kind {
            template: Template::Electrical,
            channel: "ch1",
            channel_description: "stimulator output 1",
            example_profile: Some("examples/profiles/tens-2ch.toml"),
            optical: PBM,
        },
        // The governor has no rules for "other" and refuses device profiles of that modality;
        // the skeleton is the most common output (light) so the vendor sees the whole contract.
        ModalityKind::Other => Kind {
            template: Template::Optical,
            channel: "output",
            channel_description: "optical output",
            example_profile: None,
            optical: Optical {
                device_noun: "applicator",
                clinical_context: "a neutral skeleton: choose the modality closest to your device before you ship",
                ..PBM
            },
        },
    }
}

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.tmpl");
const README: &str = include_str!("../templates/plugin/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore.tmpl");
const LIB_OPTICAL: &str = include_str!("../templates/plugin/lib-optical.rs.tmpl");
const LIB_SCANNED: &str = include_str!("../templates/plugin/lib-scanned.rs.tmpl");
const LIB_HEAT: &str = include_str!("../templates/plugin/lib-heat.rs.tmpl");
const LIB_ELECTRICAL: &str = include_str!("../templates/plugin/lib-electrical.rs.tmpl");
const PARAMS_OPTICAL: &str = include_str!("../templates/plugin/params-optical.json.tmpl");
const PARAMS_SCANNED: &str = include_str!("../templates/plugin/params-scanned.json.tmpl");
const PARAMS_HEAT: &str = include_str!("../templates/plugin/params-heat.json.tmpl");
const PARAMS_ELECTRICAL: &str = include_str!("../templates/plugin/params-electrical.json.tmpl");

/// The note the README carries for the modality.
fn modality_note(m: ModalityKind, k: &Kind) -> String {
    match k.example_profile {
        Some(profile) => format!(
            "\nThe example device profile `{profile}` in the modalis source tree has a `{}` channel;\nthe scaffold's sample plan passes the governor's pre-check with it.\n",
            k.channel
        ),
        None => format!(
            "\n**`{m}` drives no device yet.** The governor has no safety rules for `{m}` and refuses\ndevice profiles that declare it, so a controller will not run this plugin on a device. It\nbuilds and passes `modalis plugin check`, so you can develop against the contract; scaffold\nagain with the `--modality` closest to your device before you ship.\n"
        ),
    }
}

/// The library file name stem cargo gives the crate (`-` becomes `_`).
fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `acme-heat_2` -> `AcmeHeat2`: the plugin's type name.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `acme-heat_2` -> `Acme heat 2`: the plugin's display name until the vendor sets one.
fn title(name: &str) -> String {
    let words: Vec<&str> = name.split(['-', '_']).filter(|w| !w.is_empty()).collect();
    let mut t = words.join(" ");
    if let Some(f) = t.get_mut(..1) {
        f.make_ascii_uppercase();
    }
    t
}

/// A Rust `f64` literal (`808.0`).
fn rs_f64(x: f64) -> String {
    format!("{x:?}")
}

/// A site as a Rust expression building it from the SDK's types.
fn rs_site(site: &str) -> String {
    let (loc, side) = site.split_once(':').unwrap_or((site, "left"));
    let side = match side {
        "right" => "Side::Right",
        "midline" => "Side::Midline",
        _ => "Side::Left",
    };
    match modalis_sdk::BodyRegion::parse(loc) {
        Some(r) => format!("BodySite::region(BodyRegion::{r:?}, {side})"),
        None => format!("BodySite::point({loc:?}, {side})"),
    }
}

/// Replaces every `{{key}}` in `template` with its value, in one pass, so a value that happens
/// to contain braces (a directory name) is never read as a placeholder. Unknown keys stay as
/// they are, where the placeholder test finds them.
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| {
            let key = &after[..end];
            vars.iter().find(|(k, _)| *k == key).map(|(_, v)| (v, end))
        }) {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The scaffold's files (relative path, contents) for `name` and `modality`, depending on the
/// SDK at `sdk` (written into Cargo.toml as given).
pub fn render(name: &str, modality: ModalityKind, sdk: &Path) -> Vec<(PathBuf, String)> {
    let k = kind(modality);
    let o = k.optical;
    // One site a line, as rustfmt lays out a list that long.
    let sites_rs: String = o
        .sites
        .iter()
        .map(|s| format!("\n                {},", rs_site(s)))
        .collect();
    let sites_json: Vec<String> = o.sites.iter().map(|s| format!("{s:?}")).collect();
    let sdk_text = sdk.display().to_string();
    let vars = [
        ("crate_name", name.to_string()),
        ("lib_name", lib_name(name)),
        ("plugin_id", name.replace('_', "-")),
        ("type_name", type_name(name)),
        ("title", title(name)),
        ("vendor", "Your company".to_string()),
        ("modality", modality.as_str().to_string()),
        ("modality_variant", format!("{modality:?}")),
        ("modality_note", modality_note(modality, &k)),
        ("modalis_version", env!("CARGO_PKG_VERSION").to_string()),
        // A TOML string, so quotes and backslashes (Windows paths) in the path stay valid.
        (
            "sdk_path_toml",
            toml::Value::String(sdk_text.clone()).to_string(),
        ),
        ("sdk_path", sdk_text),
        ("channel", k.channel.to_string()),
        ("channel_description", k.channel_description.to_string()),
        ("device_noun", o.device_noun.to_string()),
        ("clinical_context", o.clinical_context.to_string()),
        ("sample_sites_rs", sites_rs),
        ("sample_sites_json", sites_json.join(", ")),
        ("wavelength_nm_rs", rs_f64(o.wavelength_nm)),
        ("wavelength_nm_json", o.wavelength_nm.to_string()),
        ("power_mw_rs", rs_f64(o.power_mw)),
        ("power_mw_json", o.power_mw.to_string()),
        ("beam_area_cm2_rs", rs_f64(o.beam_area_cm2)),
        ("beam_area_cm2_json", o.beam_area_cm2.to_string()),
        ("dose_j_rs", rs_f64(o.dose_j)),
        ("dose_j_json", o.dose_j.to_string()),
    ];
    let (lib, params) = match k.template {
        Template::Optical => (LIB_OPTICAL, PARAMS_OPTICAL),
        Template::Scanned => (LIB_SCANNED, PARAMS_SCANNED),
        Template::Heat => (LIB_HEAT, PARAMS_HEAT),
        Template::Electrical => (LIB_ELECTRICAL, PARAMS_ELECTRICAL),
    };
    [
        ("Cargo.toml", CARGO_TOML),
        ("README.md", README),
        (".gitignore", GITIGNORE),
        ("src/lib.rs", lib),
        ("params.example.json", params),
    ]
    .into_iter()
    .map(|(path, t)| (PathBuf::from(path), fill(t, &vars)))
    .collect()
}

/// Checks that `sdk` is the modalis SDK (a `Cargo.toml` whose package is `modalis-sdk`) and
/// returns it absolute, so the scaffold builds from wherever it is moved.
fn resolve_sdk(sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    let bad = |reason: String| ScaffoldError::Sdk {
        path: sdk.to_path_buf(),
        reason,
    };
    let dir = sdk
        .canonicalize()
        .map_err(|e| bad(format!("cannot open the SDK directory: {e}")))?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| bad(format!("cannot read {}: {e}", manifest.display())))?;
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| bad(format!("{} is not TOML: {e}", manifest.display())))?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str);
    if package != Some("modalis-sdk") {
        return Err(bad(format!(
            "{} is package {package:?}, expected \"modalis-sdk\"",
            manifest.display()
        )));
    }
    Ok(dir)
}

/// Writes the scaffold. Refuses an existing directory; on a failure part-way, removes the
/// directory it created, so a retry starts clean.
pub fn create(req: &NewPlugin) -> Result<Scaffolded, ScaffoldError> {
    let sdk = resolve_sdk(&req.sdk)?;
    let io = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source: std::io::Error| ScaffoldError::Io {
            path,
            action,
            source,
        }
    };
    // `symlink_metadata` so that a dangling symlink counts as existing too.
    if req.dir.symlink_metadata().is_ok() {
        return Err(ScaffoldError::Exists {
            path: req.dir.clone(),
        });
    }
    if let Some(parent) = req.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent, "cannot create the directory"))?;
    }
    // `create_dir` (not `_all`) fails if another process created it in the meantime.
    std::fs::create_dir(&req.dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ScaffoldError::Exists {
            path: req.dir.clone(),
        },
        _ => io(&req.dir, "cannot create the directory")(e),
    })?;
    let written = write_files(req, &sdk);
    if written.is_err() {
        // Only this call created the directory, so removing it loses nothing of the user's.
        let _ = std::fs::remove_dir_all(&req.dir);
    }
    let (files, lock_seeded_from) = written?;
    let k = kind(req.modality);
    let inside_source_tree = match (req.dir.canonicalize(), sdk.parent()) {
        (Ok(dir), Some(root)) => dir.starts_with(root),
        _ => false,
    };
    Ok(Scaffolded {
        dir: req.dir.clone(),
        sdk,
        files,
        lock_seeded_from,
        wasm: Path::new("target/wasm32-wasip2/release")
            .join(format!("{}.wasm", lib_name(&req.name))),
        example_profile: k.example_profile,
        inside_source_tree,
    })
}

fn write_files(
    req: &NewPlugin,
    sdk: &Path,
) -> Result<(Vec<PathBuf>, Option<PathBuf>), ScaffoldError> {
    let mut files = Vec::new();
    for (rel, text) in render(&req.name, req.modality, sdk) {
        let path = req.dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Io {
                path: parent.to_path_buf(),
                action: "cannot create the directory",
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            action: "cannot write",
            source,
        })?;
        files.push(rel);
    }
    // Seed the lock file from the modalis workspace's, so the plugin builds with the exact
    // dependency versions (wit-bindgen above all) that modalis is tested with; cargo drops the
    // packages the plugin does not use on its first build and keeps the versions of the rest.
    let lock = sdk.parent().map(|root| root.join("Cargo.lock"));
    let seeded = match lock.filter(|l| l.is_file()) {
        Some(lock) => {
            let to = req.dir.join("Cargo.lock");
            std::fs::copy(&lock, &to).map_err(|source| ScaffoldError::Io {
                path: to.clone(),
                action: "cannot copy the modalis Cargo.lock",
                source,
            })?;
            files.push(PathBuf::from("Cargo.lock"));
            Some(lock)
        }
        None => None,
    };
    Ok((files, seeded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["acme-lllt", "x", "heat_pad2", "a-b_c"] {
            assert_eq!(parse_name(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "Acme",
            "2heat",
            "-x",
            "x-",
            "x_",
            "has space",
            "é",
            "a.b",
            "test",
            "fn",
            "std",
            "serde",
            "modalis-sdk",
            "con",
        ] {
            assert!(parse_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_name(&"a".repeat(64)).is_ok());
        assert!(parse_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn modalities_by_their_sdk_names() {
        for k in ModalityKind::ALL {
            assert_eq!(parse_modality(k.as_str()), Ok(k));
        }
        let e = parse_modality("laser").expect_err("unknown");
        assert!(e.contains("photobiomodulation, class-4-laser"), "{e}");
    }

    #[test]
    fn placeholders_are_filled_once_and_unknown_ones_are_kept() {
        let vars = [("a", "{{b}}".to_string()), ("b", "B".to_string())];
        assert_eq!(fill("x{{a}}y{{b}}z{{c}}{{", &vars), "x{{b}}yBz{{c}}{{");
    }

    #[test]
    fn type_names_and_titles() {
        assert_eq!(type_name("acme-heat_2"), "AcmeHeat2");
        assert_eq!(title("acme-heat_2"), "Acme heat 2");
        assert_eq!(
            rs_site("foot_dorsum:left"),
            "BodySite::region(BodyRegion::FootDorsum, Side::Left)"
        );
        assert_eq!(
            rs_site("ST36:right"),
            "BodySite::point(\"ST36\", Side::Right)"
        );
    }

    /// Every placeholder of every template is filled for every modality, and the sample sites
    /// are in the SDK's vocabulary.
    #[test]
    fn every_placeholder_is_filled() {
        for m in ModalityKind::ALL {
            for (path, text) in render("acme-x", m, Path::new("/opt/modalis/sdk")) {
                assert!(
                    !text.contains("{{"),
                    "{m}: {} keeps a placeholder",
                    path.display()
                );
            }
            for s in kind(m).optical.sites {
                let site: modalis_sdk::BodySite = s.parse().expect("site parses");
                assert!(site.is_known(), "{s}");
            }
        }
    }

    /// The scaffold asks for the same serde and schemars the workspace builds the SDK with.
    #[test]
    fn dependency_versions_follow_the_workspace() {
        let ws: toml::Table = toml::from_str(include_str!("../../Cargo.toml")).expect("TOML");
        let deps = &ws["workspace"]["dependencies"];
        let rendered = render("acme-x", ModalityKind::Tens, Path::new("/opt/modalis/sdk"));
        let cargo: toml::Table = toml::from_str(&rendered[0].1).expect("scaffold Cargo.toml");
        let ours = &cargo["dependencies"];
        assert_eq!(ours["serde"]["version"], deps["serde"]["version"]);
        assert_eq!(ours["serde"]["features"], deps["serde"]["features"]);
        assert_eq!(ours["schemars"], deps["schemars"]);
        assert_eq!(
            ours["modalis-sdk"]["path"].as_str(),
            Some("/opt/modalis/sdk")
        );
        assert!(cargo.contains_key("workspace"), "a workspace of its own");
    }

    #[test]
    fn sdk_paths_with_quotes_stay_valid_toml() {
        let rendered = render("acme-x", ModalityKind::Tens, Path::new(r#"C:\a "b"\sdk"#));
        let cargo: toml::Table = toml::from_str(&rendered[0].1).expect("scaffold Cargo.toml");
        assert_eq!(
            cargo["dependencies"]["modalis-sdk"]["path"].as_str(),
            Some(r#"C:\a "b"\sdk"#)
        );
    }
}
