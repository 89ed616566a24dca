//! [`ProtocolError`]: every failure names the protocol file, the line and column in it (when
//! there is one), the block (when the problem belongs to one) and what was expected.

use std::fmt;
use std::path::PathBuf;

use modalis_governor::LoadError;

use crate::plugin::PluginError;

/// A 1-based line and column in the protocol file (columns count characters, not bytes, so
/// they match what an editor shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text, and to a character
    /// boundary, so that a span from a parser can never make this panic).
    pub(crate) fn of(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Position { line, column }
    }

    /// The byte offset of this position in `text`; `None` when it is past the text.
    pub(crate) fn offset_in(self, text: &str) -> Option<usize> {
        let mut start = 0;
        for _ in 1..self.line {
            start += text.get(start..)?.find('\n')? + 1;
        }
        let line = text.get(start..)?;
        match line.char_indices().nth(self.column.checked_sub(1)?) {
            Some((i, _)) => Some(start + i),
            None => Some(start + line.len()),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A protocol file that cannot be loaded, scheduled or whose parameters a plugin refuses.
///
/// Displays as `path:line:col: block "id": what was wrong (expected ...) (at /json/pointer)`;
/// the position, the block and the pointer are left out when the problem has none.
#[derive(Debug, thiserror::Error)]
pub struct ProtocolError {
    /// The protocol file.
    pub path: PathBuf,
    /// Where in the protocol file, when the problem has a place there.
    pub position: Option<Position>,
    /// The block the problem belongs to, if any.
    pub block: Option<String>,
    /// JSON pointer to the offending key or value in the protocol file, as its JSON Schema
    /// (`schemas/protocol.schema.json`) sees it, e.g. `/block/1/start`; `None` when the
    /// problem is not at a place in the file. A plugin's parameter errors carry their pointer
    /// into the parameters in [`ProtocolErrorKind::Param`] instead.
    pub pointer: Option<String>,
    /// What went wrong (boxed: the error travels through every `Result` of the loader, and
    /// the variants that carry a governor or plugin error are large).
    #[source]
    pub kind: Box<ProtocolErrorKind>,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(p) = self.position {
            write!(f, ":{p}")?;
        }
        f.write_str(": ")?;
        if let Some(block) = &self.block {
            write!(f, "block {block:?}: ")?;
        }
        write!(f, "{}", self.kind)?;
        // Not after a referenced file's error: that message ends with its own file's pointer,
        // and the key that referenced the file is already named in front of it.
        if let Some(pointer) = &self.pointer
            && !matches!(*self.kind, ProtocolErrorKind::Load { .. })
        {
            write!(f, " (at {pointer})")?;
        }
        Ok(())
    }
}

/// What is wrong with a protocol. Each message says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    /// The protocol file itself could not be read.
    #[error("cannot read the protocol file: {0}")]
    Read(#[source] std::io::Error),
    /// Not valid TOML, or not the shape of a protocol (unknown key, missing key, wrong type).
    /// The message is the TOML parser's, or the protocol schema's, and already says what was
    /// expected.
    #[error("{message}")]
    Toml {
        /// The parser's message.
        message: String,
    },
    /// A block id that cannot be referred to unambiguously.
    #[error(
        "block id {id:?} is not valid (expected a non-empty id of letters, digits, '-' or '_')"
    )]
    InvalidId {
        /// The id as written.
        id: String,
    },
    /// Two blocks with the same id.
    #[error("duplicate block id {id:?}, first used on line {} (expected each block id once)", first.line)]
    DuplicateBlock {
        /// The id.
        id: String,
        /// Where it was first used.
        first: Position,
    },
    /// `device` names a role that `[devices]` does not bind.
    #[error(
        "device {role:?} is not a role in [devices] (expected one of: {})",
        list(known)
    )]
    UnknownDevice {
        /// The role as written.
        role: String,
        /// The roles `[devices]` binds.
        known: Vec<String>,
    },
    /// `start` is not exactly one of the forms.
    #[error("start {problem} (expected exactly one of at_s, at_ms, after, with)")]
    BadStart {
        /// What is wrong with it.
        problem: String,
    },
    /// `at_s` is negative, not finite or too large.
    #[error(
        "start at_s = {seconds} is not a usable offset (expected a finite number of seconds >= 0)"
    )]
    BadOffset {
        /// The offset as written.
        seconds: f64,
    },
    /// `after`, `with` or `alternative_to` names a block that does not exist.
    #[error("{key} = {target:?} names no block (expected one of: {})", list(known))]
    UnknownBlock {
        /// `start.after`, `start.with` or `alternative_to`.
        key: &'static str,
        /// The id as written.
        target: String,
        /// The ids of the protocol's blocks.
        known: Vec<String>,
    },
    /// `after` or `with` names a disabled block, which has no place on the timeline.
    #[error("{key} = {target:?} names a disabled block (expected an enabled block)")]
    DisabledBlock {
        /// `start.after` or `start.with`.
        key: &'static str,
        /// The id as written.
        target: String,
    },
    /// `alternative_to` names the block itself.
    #[error("alternative_to names the block itself (expected another block's id)")]
    SelfAlternative,
    /// A block and its alternative are both enabled.
    #[error(
        "this block and its alternative {other:?} are both enabled (expected at most one of them enabled)"
    )]
    BothAlternatives {
        /// The other block.
        other: String,
    },
    /// The `after`/`with` references go round in a circle, so no block in it can start.
    #[error("start order is circular: {} (expected the after/with chain to end at a block with a fixed at_s start)", chain.join(" -> "))]
    Cycle {
        /// The block ids round the circle, the first repeated at the end.
        chain: Vec<String>,
    },
    /// `[patient]` is neither `file = "..."` alone nor an inline patient context.
    #[error(
        "[patient] has `file` and other keys (expected either file = \"...\" alone or an inline patient context)"
    )]
    PatientForm,
    /// A file the protocol references cannot be read.
    #[error("{key} = {file:?}: cannot read {}: {source}", resolved.display())]
    MissingFile {
        /// The key that references it, e.g. `devices.heat` or `patient.file`.
        key: String,
        /// The path as written in the protocol.
        file: String,
        /// The path it was read from (relative to the protocol file's folder).
        resolved: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A referenced device profile or patient context is not valid; the governor's error
    /// names that file, its line and column and the field.
    #[error("{key}: {source}")]
    Load {
        /// The key that references it, e.g. `devices.heat`, `patient.file` or `patient` for
        /// an inline patient.
        key: String,
        /// The governor's error.
        #[source]
        source: Box<LoadError>,
    },
    /// A parameter value that has no JSON form (a date-time, a non-finite float).
    #[error("params {pointer}: {message}")]
    ParamValue {
        /// JSON pointer to the value.
        pointer: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The plugin (its JSON Schema or its own `validate`) refused a parameter.
    #[error("params {}: {message}", if pointer.is_empty() { "(whole table)" } else { pointer.as_str() })]
    Param {
        /// JSON pointer to the offending value; empty for the params table as a whole.
        pointer: String,
        /// The plugin's or the schema's message.
        message: String,
    },
    /// The block names a plugin that is not loaded.
    #[error(
        "plugin {plugin:?} is not loaded (expected one of: {})",
        list(available)
    )]
    UnknownPlugin {
        /// The plugin id as written.
        plugin: String,
        /// The ids of the loaded plugins.
        available: Vec<String>,
    },
    /// The plugin failed in the sandbox while validating (not a parameter problem).
    #[error("plugin failed while validating the parameters: {0}")]
    Plugin(#[source] Box<PluginError>),
    /// `schedule` was not given the plan duration of an enabled block.
    #[error("no plan duration given for this block (expected one for every enabled block)")]
    MissingDuration,
    /// A start offset beyond what a `u64` of milliseconds holds.
    #[error(
        "start offset overflows (expected a timeline shorter than {} ms)",
        u64::MAX
    )]
    Overflow,
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}
