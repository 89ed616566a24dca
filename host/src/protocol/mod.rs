//! Protocol files: the TOML a clinician writes and reads.
//!
//! A protocol names a patient context, binds device profiles to roles and lists blocks, each
//! a plugin driving one device role, starting at a fixed offset, after another block ends or
//! together with another block, with the plugin's parameters:
//!
//! ```toml
//! [protocol]
//! name = "DPN combined"
//! description = "optional"
//! on_plugin_fault = "stop_block"          # optional; or "stop_session"
//!
//! [patient]
//! file = "../patients/dpn-example.toml"   # or the patient context inline, without `file`
//!
//! [devices]
//! heat = "../profiles/mire-pads.toml"     # role = device profile file
//!
//! [[block]]
//! id = "heat-feet"
//! plugin = "infrared-heat"
//! device = "heat"
//! start = { at_s = 0 }                    # or { at_ms = 0 }, { after = "id" }, { with = "id" }
//! enabled = true                          # optional
//! alternative_to = "other-block"          # optional
//!
//! [block.params]
//! session_minutes = 30
//! ```
//!
//! Paths are relative to the protocol file. [`Protocol::load`] checks the structure (unknown
//! keys, ids, roles, references, cycles) and loads the referenced files through the
//! governor's loaders; [`Protocol::check_params`] has each block's plugin validate its
//! parameters; [`Protocol::schedule`] puts the enabled blocks on one timeline. Every error is
//! a [`ProtocolError`] naming the file, line and column and what was expected.
//!
//! The protocol is data only: reading it starts nothing. Nothing here decides about safety;
//! the governor's pre-check does, on the plans the plugins make from these parameters.

mod error;
mod params;
mod schedule;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use modalis_governor::{DeviceProfile, PatientContext, schema};

pub use error::{Position, ProtocolError, ProtocolErrorKind};

/// A loaded, structurally valid protocol.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// `[protocol] name`.
    pub name: String,
    /// `[protocol] description` (empty when not given).
    pub description: String,
    /// The protocol file, as given to [`Protocol::load`].
    pub path: PathBuf,
    /// The patient context (from `[patient] file` or inline).
    pub patient: PatientContext,
    /// The file the patient context came from; `None` when it is inline.
    pub patient_file: Option<PathBuf>,
    /// Device profiles by role (`[devices]`).
    pub devices: BTreeMap<String, DeviceProfile>,
    /// The profile file of each role, resolved against the protocol's folder.
    pub device_files: BTreeMap<String, PathBuf>,
    /// The blocks in file order, disabled ones included.
    pub blocks: Vec<BlockSpec>,
    /// `[protocol] on_plugin_fault`.
    pub on_plugin_fault: PluginFaultPolicy,
}

/// One `[[block]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Unique id within the protocol.
    pub id: String,
    /// The id of the plugin that plans it.
    pub plugin: String,
    /// The device role (a key of [`Protocol::devices`]).
    pub device: String,
    /// When it starts.
    pub start: Start,
    /// Disabled blocks stay in the file (e.g. an alternative) but are not run or scheduled.
    pub enabled: bool,
    /// The block this one replaces when a clinic enables it instead.
    pub alternative_to: Option<String>,
    /// The plugin's parameters, converted from TOML to JSON.
    pub params: serde_json::Value,
    /// Where each part was written, for errors.
    pub spans: BlockSpans,
}

/// Where a block's parts are in the protocol file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpans {
    /// The `[[block]]` header (or inline table).
    pub block: Position,
    /// The `id` value.
    pub id: Position,
    /// The `plugin` value.
    pub plugin: Position,
    /// The `device` value.
    pub device: Position,
    /// The `start` value.
    pub start: Position,
    /// The `alternative_to` value.
    pub alternative_to: Option<Position>,
    /// The params table (the block's position when the block has none).
    pub params: Position,
    /// JSON pointer (e.g. `/electrodes/0/site`) to the position of that key, or of that array
    /// element, inside the params table.
    pub params_keys: BTreeMap<String, Position>,
}

impl BlockSpans {
    /// The position that best matches a JSON pointer into the params: the key itself, else
    /// its nearest enclosing key, else the params table.
    pub fn params_position(&self, pointer: &str) -> Position {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.params_keys.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return self.params,
            }
        }
    }
}

/// When a block starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At a fixed offset from the start of the session.
    At {
        /// Milliseconds from the session start.
        offset_ms: u64,
    },
    /// When the named block ends.
    After(String),
    /// When the named block starts.
    With(String),
}

impl Start {
    /// The block this one waits for, with the key that named it.
    pub(crate) fn reference(&self) -> Option<(&'static str, &str)> {
        match self {
            Start::At { .. } => None,
            Start::After(id) => Some(("start.after", id)),
            Start::With(id) => Some(("start.with", id)),
        }
    }
}

impl Protocol {
    /// Reads a protocol file and the patient and device profile files it references (paths
    /// relative to the protocol file), and checks its structure.
    pub fn load(path: &Path) -> Result<Protocol, ProtocolError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProtocolError {
            path: path.to_path_buf(),
            position: None,
            block: None,
            pointer: None,
            kind: Box::new(ProtocolErrorKind::Read(e)),
        })?;
        Protocol::from_toml_str(&text, path)
    }

    /// Like [`Protocol::load`] with the protocol's text already read: `path` names it in
    /// errors and anchors the relative paths of the files it references.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Protocol, ProtocolError> {
        Loader { text, path }.load()
    }

    /// The enabled blocks, in file order.
    pub fn enabled_blocks(&self) -> impl Iterator<Item = &BlockSpec> {
        self.blocks.iter().filter(|b| b.enabled)
    }

    /// The block with that id.
    pub fn block(&self, id: &str) -> Option<&BlockSpec> {
        self.blocks.iter().find(|b| b.id == id)
    }

    pub(crate) fn error(
        &self,
        position: Option<Position>,
        block: Option<&str>,
        kind: ProtocolErrorKind,
    ) -> ProtocolError {
        ProtocolError {
            path: self.path.clone(),
            position,
            block: block.map(str::to_string),
            pointer: None,
            kind: Box::new(kind),
        }
    }

    /// The JSON Schema of a protocol file (`schemas/protocol.schema.json`).
    pub fn file_schema() -> schemars::Schema {
        schemars::schema_for!(RawProtocol)
    }
}

// The file's shape, for serde and for its JSON Schema: `deny_unknown_fields` everywhere, so
// that a misspelt key is an error with its position instead of a silently ignored setting.
// The spans serde keeps are invisible in the schema (`schemars(with)`).

/// A combined treatment protocol file (TOML): the patient, the devices by role, and the
/// blocks, each a plugin driving one device role from a start, with the plugin's parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Protocol")]
struct RawProtocol {
    /// Name and description.
    protocol: RawHeader,
    /// The patient: `file = "..."` (relative to the protocol file) alone, or the patient
    /// context inline.
    // Read from the spanned tree (see `Loader::patient`), so here serde only requires it.
    #[schemars(with = "PatientSpec")]
    patient: Spanned<IgnoredAny>,
    /// Device roles, each bound to a device profile file (relative to the protocol file).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    devices: BTreeMap<Spanned<String>, Spanned<String>>,
    /// The blocks, in order.
    #[serde(default)]
    #[schemars(with = "Vec<RawBlock>")]
    block: Vec<Spanned<RawBlock>>,
}

/// `[patient]` in the protocol file.
// Only its schema is used: the loader reads `[patient]` from the spanned tree.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PatientSpec {
    /// A patient context file.
    File(PatientFile),
    /// The patient context inline.
    Inline(PatientContext),
}

/// `[patient] file = "..."`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PatientFile {
    /// The patient context file, relative to the protocol file.
    file: String,
}

/// `[protocol]`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ProtocolHeader")]
struct RawHeader {
    /// The protocol's name, shown in reports and the audit log.
    #[schemars(length(min = 1))]
    name: String,
    /// What the protocol is for (empty when absent).
    #[serde(default)]
    description: String,
    /// What a plugin failing mid-session (a trap, a hang, memory exhausted in its closed
    /// loop) stops: its own block (the default) or the whole session.
    #[serde(default)]
    on_plugin_fault: PluginFaultPolicy,
}

/// What a plugin failing mid-session stops (`[protocol] on_plugin_fault`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginFaultPolicy {
    /// Stop the failed plugin's block (its energised channels now, its later steps never);
    /// the other blocks go on.
    #[default]
    StopBlock,
    /// Abort the whole session: every source stops. For protocols whose blocks only make
    /// sense together.
    StopSession,
}

/// One `[[block]]`: a plugin driving one device role.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Block")]
struct RawBlock {
    /// Unique id within the protocol: letters, digits, '-' and '_'.
    #[schemars(with = "String", regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    id: Spanned<String>,
    /// The id of the plugin that plans it.
    #[schemars(with = "String")]
    plugin: Spanned<String>,
    /// The device role (a key of `[devices]`).
    #[schemars(with = "String")]
    device: Spanned<String>,
    /// When it starts: exactly one of `at_s`, `at_ms`, `after`, `with`.
    #[schemars(with = "RawStart")]
    start: Spanned<RawStart>,
    /// Disabled blocks stay in the file (an alternative, say) but are neither run nor
    /// scheduled.
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    /// The block this one replaces when a clinic enables it instead.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    alternative_to: Option<Spanned<String>>,
    /// The plugin's parameters, checked against the plugin's own schema
    /// (`schemas/plugins/<plugin>.params.schema.json`).
    // Converted from the spanned tree (see `params::convert`), which keeps the position of
    // every key for plugin errors.
    #[serde(default, rename = "params")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    _params: Option<IgnoredAny>,
}

fn enabled_by_default() -> bool {
    true
}

/// A block's start.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Start")]
#[schemars(extend("oneOf" = [
    { "required": ["at_s"] },
    { "required": ["at_ms"] },
    { "required": ["after"] },
    { "required": ["with"] }
]))]
struct RawStart {
    /// Seconds from the session start (at most a day).
    #[schemars(range(min = 0.0, max = MAX_OFFSET_S))]
    at_s: Option<f64>,
    /// Milliseconds from the session start.
    at_ms: Option<u64>,
    /// When the block with this id ends.
    after: Option<String>,
    /// When the block with this id starts.
    with: Option<String>,
}

/// The protocol file's validator, compiled once for every protocol loaded.
static PROTOCOL_SCHEMA: LazyLock<jsonschema::Validator> =
    LazyLock::new(schema::compile::<RawProtocol>);

/// Longest offset `at_s` may give: a day. Anything longer is a typo (minutes for seconds,
/// milliseconds for seconds), and the bound keeps the conversion to milliseconds exact.
const MAX_OFFSET_S: f64 = 86_400.0;

struct Loader<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Loader<'_> {
    fn pos(&self, span: Range<usize>) -> Position {
        Position::of(self.text, span.start)
    }

    fn err(
        &self,
        position: Option<Position>,
        block: Option<&str>,
        kind: ProtocolErrorKind,
    ) -> ProtocolError {
        // Every error the loader finds is at a place in this file: the pointer of what is
        // written there, so that tools can find it as well as people.
        let pointer = position
            .and_then(|p| p.offset_in(self.text))
            .and_then(|offset| {
                let tree = DeTable::parse(self.text).ok()?;
                Some(schema::pointer_at(&tree, offset))
            })
            .filter(|p| !p.is_empty());
        ProtocolError {
            path: self.path.to_path_buf(),
            position,
            block: block.map(str::to_string),
            pointer,
            kind: Box::new(kind),
        }
    }

    /// A TOML parser or serde error, at its span.
    fn toml_err(&self, e: &toml::de::Error) -> ProtocolError {
        let mut message = e.message().trim().replace('\n', "; ");
        // The parser says "duplicate key" without saying which; the span covers it.
        if message == "duplicate key"
            && let Some(key) = e.span().and_then(|s| self.text.get(s))
        {
            message = format!("duplicate key `{key}` (expected each key once per table)");
        }
        self.err(
            e.span().map(|s| self.pos(s)),
            None,
            ProtocolErrorKind::Toml { message },
        )
    }

    /// The file a relative path in the protocol names.
    fn resolve(&self, file: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new("")).join(file)
    }

    /// Reads a referenced file; errors name the key that referenced it.
    fn read(
        &self,
        key: &str,
        file: &str,
        at: Position,
        block: Option<&str>,
    ) -> Result<(PathBuf, String), ProtocolError> {
        let resolved = self.resolve(file);
        match std::fs::read_to_string(&resolved) {
            Ok(text) => Ok((resolved, text)),
            Err(source) => Err(self.err(
                Some(at),
                block,
                ProtocolErrorKind::MissingFile {
                    key: key.to_string(),
                    file: file.to_string(),
                    resolved,
                    source,
                },
            )),
        }
    }

    fn load(&self) -> Result<Protocol, ProtocolError> {
        // Two views of one parse: the spanned tree keeps the position of every key (for the
        // params and the inline patient), serde checks the shape.
        let tree = DeTable::parse(self.text).map_err(|e| self.toml_err(&e))?;
        let de = toml::de::Deserializer::parse(self.text).map_err(|e| self.toml_err(&e))?;
        let raw = RawProtocol::deserialize(de).map_err(|e| self.toml_err(&e))?;

        // The protocol file's own structure first: a clinician fixes one file at a time.
        let roles: Vec<String> = raw.devices.keys().map(|k| k.get_ref().clone()).collect();
        let block_trees = tree.get_ref().get("block").map(Spanned::get_ref);
        let mut blocks = Vec::with_capacity(raw.block.len());
        let mut first_use: BTreeMap<String, Position> = BTreeMap::new();
        for (i, rb) in raw.block.iter().enumerate() {
            let params_tree = block_trees
                .and_then(|b| b.get(i))
                .and_then(|b| b.get_ref().get("params"));
            let block = self.block(rb, params_tree, &roles)?;
            if let Some(first) = first_use.get(&block.id) {
                return Err(self.err(
                    Some(block.spans.id),
                    None,
                    ProtocolErrorKind::DuplicateBlock {
                        id: block.id.clone(),
                        first: *first,
                    },
                ));
            }
            first_use.insert(block.id.clone(), block.spans.id);
            blocks.push(block);
        }
        self.references(&blocks)?;
        if let Some((i, chain)) = schedule::find_cycle(&blocks) {
            let b = &blocks[i];
            return Err(self.err(
                Some(b.spans.start),
                Some(&b.id),
                ProtocolErrorKind::Cycle { chain },
            ));
        }

        // Then the files it references.
        let (patient, patient_file) = self.patient(&tree, raw.patient.span())?;
        let mut devices = BTreeMap::new();
        let mut device_files = BTreeMap::new();
        for (role, file) in &raw.devices {
            let key = format!("devices.{}", role.get_ref());
            let at = self.pos(file.span());
            let (resolved, text) = self.read(&key, file.get_ref(), at, None)?;
            let profile = DeviceProfile::from_toml_str(&text, &resolved.display().to_string())
                .map_err(|source| {
                    self.err(
                        Some(at),
                        None,
                        ProtocolErrorKind::Load {
                            key,
                            source: Box::new(source),
                        },
                    )
                })?;
            devices.insert(role.get_ref().clone(), profile);
            device_files.insert(role.get_ref().clone(), resolved);
        }

        // Last, the file against its published schema: everything above reports what it finds
        // in its own words; this keeps a file that the schema refuses from loading, so that
        // the schema integrators read is the contract the loader keeps.
        if let Some(v) = schema::toml_to_json(self.text)
            .and_then(|v| schema::first_violation(&PROTOCOL_SCHEMA, &v))
        {
            let at = self.pos(schema::pointer_span(&tree, &v.pointer));
            let mut err = self.err(
                Some(at),
                None,
                ProtocolErrorKind::Toml { message: v.message },
            );
            // The schema's own pointer: exact even where the position is the enclosing
            // table's (a missing key).
            err.pointer = Some(v.pointer).filter(|p| !p.is_empty());
            return Err(err);
        }

        Ok(Protocol {
            name: raw.protocol.name,
            description: raw.protocol.description,
            on_plugin_fault: raw.protocol.on_plugin_fault,
            path: self.path.to_path_buf(),
            patient,
            patient_file,
            devices,
            device_files,
            blocks,
        })
    }

    /// One block, checked on its own: id, device role, start, params.
    fn block(
        &self,
        rb: &Spanned<RawBlock>,
        params_tree: Option<&Spanned<DeValue<'_>>>,
        roles: &[String],
    ) -> Result<BlockSpec, ProtocolError> {
        let at_block = self.pos(rb.span());
        let r = rb.get_ref();
        let id = r.id.get_ref().clone();
        let id_at = self.pos(r.id.span());
        let valid_id = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            return Err(self.err(Some(id_at), None, ProtocolErrorKind::InvalidId { id }));
        }
        let device_at = self.pos(r.device.span());
        if !roles.iter().any(|role| role == r.device.get_ref()) {
            return Err(self.err(
                Some(device_at),
                Some(&id),
                ProtocolErrorKind::UnknownDevice {
                    role: r.device.get_ref().clone(),
                    known: roles.to_vec(),
                },
            ));
        }
        let start_at = self.pos(r.start.span());
        let start = self
            .start(r.start.get_ref())
            .map_err(|kind| self.err(Some(start_at), Some(&id), kind))?;
        let (params, params_at, params_keys) = match params_tree {
            Some(tree) => {
                let at = self.pos(tree.span());
                let converted = params::convert(self.text, tree)
                    .map_err(|(position, kind)| self.err(Some(position), Some(&id), kind))?;
                (converted.value, at, converted.keys)
            }
            None => (
                serde_json::Value::Object(serde_json::Map::new()),
                at_block,
                BTreeMap::new(),
            ),
        };
        Ok(BlockSpec {
            plugin: r.plugin.get_ref().clone(),
            device: r.device.get_ref().clone(),
            start,
            enabled: r.enabled,
            alternative_to: r.alternative_to.as_ref().map(|a| a.get_ref().clone()),
            params,
            spans: BlockSpans {
                block: at_block,
                id: id_at,
                plugin: self.pos(r.plugin.span()),
                device: device_at,
                start: start_at,
                alternative_to: r.alternative_to.as_ref().map(|a| self.pos(a.span())),
                params: params_at,
                params_keys,
            },
            id,
        })
    }

    fn start(&self, s: &RawStart) -> Result<Start, ProtocolErrorKind> {
        let given: Vec<&str> = [
            s.at_s.map(|_| "at_s"),
            s.at_ms.map(|_| "at_ms"),
            s.after.as_ref().map(|_| "after"),
            s.with.as_ref().map(|_| "with"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let problem = if given.is_empty() {
                "is empty".to_string()
            } else {
                format!("has {}", given.join(" and "))
            };
            return Err(ProtocolErrorKind::BadStart { problem });
        }
        if let Some(seconds) = s.at_s {
            if !(seconds.is_finite() && (0.0..=MAX_OFFSET_S).contains(&seconds)) {
                return Err(ProtocolErrorKind::BadOffset { seconds });
            }
            // Exact: the bound above keeps the product far below 2^53.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let offset_ms = (seconds * 1000.0).round() as u64;
            return Ok(Start::At { offset_ms });
        }
        if let Some(offset_ms) = s.at_ms {
            return Ok(Start::At { offset_ms });
        }
        if let Some(after) = &s.after {
            return Ok(Start::After(after.clone()));
        }
        match &s.with {
            Some(with) => Ok(Start::With(with.clone())),
            // Unreachable: exactly one form was given above; refused rather than assumed.
            None => Err(ProtocolErrorKind::BadStart {
                problem: "is empty".to_string(),
            }),
        }
    }

    /// `after`, `with` and `alternative_to` name existing blocks; `after`/`with` of an enabled
    /// block name an enabled one; a block and its alternative are not both enabled.
    fn references(&self, blocks: &[BlockSpec]) -> Result<(), ProtocolError> {
        let known: Vec<String> = blocks.iter().map(|b| b.id.clone()).collect();
        let find = |id: &str| blocks.iter().find(|b| b.id == id);
        for b in blocks {
            if let Some((key, target)) = b.start.reference() {
                match find(target) {
                    None => {
                        return Err(self.err(
                            Some(b.spans.start),
                            Some(&b.id),
                            ProtocolErrorKind::UnknownBlock {
                                key,
                                target: target.to_string(),
                                known,
                            },
                        ));
                    }
                    Some(t) if b.enabled && !t.enabled => {
                        return Err(self.err(
                            Some(b.spans.start),
                            Some(&b.id),
                            ProtocolErrorKind::DisabledBlock {
                                key,
                                target: target.to_string(),
                            },
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(alt) = &b.alternative_to {
                let at = b.spans.alternative_to.or(Some(b.spans.block));
                let kind = match find(alt) {
                    None => Some(ProtocolErrorKind::UnknownBlock {
                        key: "alternative_to",
                        target: alt.clone(),
                        known: known.clone(),
                    }),
                    Some(t) if t.id == b.id => Some(ProtocolErrorKind::SelfAlternative),
                    Some(t) if t.enabled && b.enabled => {
                        Some(ProtocolErrorKind::BothAlternatives {
                            other: t.id.clone(),
                        })
                    }
                    Some(_) => None,
                };
                if let Some(kind) = kind {
                    return Err(self.err(at, Some(&b.id), kind));
                }
            }
        }
        Ok(())
    }

    /// `[patient]`: `file = "..."` alone, or an inline patient context.
    fn patient(
        &self,
        tree: &Spanned<DeTable<'_>>,
        span: Range<usize>,
    ) -> Result<(PatientContext, Option<PathBuf>), ProtocolError> {
        let at = self.pos(span);
        let Some(value) = tree.get_ref().get("patient") else {
            // serde required `patient` already; this only guards the two views disagreeing.
            return Err(self.err(
                Some(at),
                None,
                ProtocolErrorKind::Toml {
                    message: "missing field `patient`".to_string(),
                },
            ));
        };
        if let Some(file) = value.get_ref().get("file") {
            let is_alone = value.get_ref().as_table().is_some_and(|t| t.len() == 1);
            if !is_alone {
                return Err(self.err(Some(at), None, ProtocolErrorKind::PatientForm));
            }
            let file_at = self.pos(file.span());
            let Some(name) = file.get_ref().as_str() else {
                return Err(self.err(
                    Some(file_at),
                    None,
                    ProtocolErrorKind::Toml {
                        message: format!(
                            "invalid type: {}, expected a path string",
                            file.get_ref().type_str()
                        ),
                    },
                ));
            };
            let (resolved, text) = self.read("patient.file", name, file_at, None)?;
            let patient = PatientContext::from_toml_str(&text, &resolved.display().to_string())
                .map_err(|source| {
                    self.err(
                        Some(file_at),
                        None,
                        ProtocolErrorKind::Load {
                            key: "patient.file".to_string(),
                            source: Box::new(source),
                        },
                    )
                })?;
            return Ok((patient, Some(resolved)));
        }
        // Inline: deserialised from the spanned tree, so serde errors point into this file.
        let patient = PatientContext::deserialize(toml::de::ValueDeserializer::from(value.clone()))
            .map_err(|e| {
                let mut err = self.toml_err(&e);
                if let ProtocolErrorKind::Toml { message } = &mut *err.kind {
                    *message = format!("patient: {message}");
                }
                err
            })?;
        patient.validate("[patient]").map_err(|e| {
            let field = if e.field.is_empty() {
                "patient".to_string()
            } else {
                format!("patient.{}", e.field)
            };
            self.err(
                Some(at),
                None,
                ProtocolErrorKind::Toml {
                    message: format!("{field}: {}", e.message),
                },
            )
        })?;
        Ok((patient, None))
    }
}
