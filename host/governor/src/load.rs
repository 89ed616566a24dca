//! Reading trusted configuration (device profiles, patient context) from TOML text.
//!
//! The governor does no I/O: callers read the file and hand over its text plus a name (the
//! path) that errors will carry.
//!
//! Each file is checked against its published JSON Schema (`schemas/`) as well as
//! deserialised, so that what the schema promises integrators is what the loader accepts.

use serde::de::DeserializeOwned;

use crate::schema;

/// A configuration file that could not be read or is not valid. It names the file, the field
/// (as a TOML path such as `channels[0].optical.max_power_mw`, and as the JSON pointer
/// `/channels/0/optical/max_power_mw` into the file's schema), the line and column where the
/// problem is written, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The name the caller gave the text (usually its path).
    pub origin: String,
    /// The TOML path of the offending field; empty for the document as a whole.
    pub field: String,
    /// 1-based line, when the parser gave a position.
    pub line: Option<usize>,
    /// 1-based column, when the parser gave a position.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {} (at {})", self.field, self.pointer())?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// The field as a JSON pointer into the document, as the file's JSON Schema sees it
    /// (`/channels/0/optical/max_power_mw`); empty for the document as a whole. Derived from
    /// [`LoadError::field`], which is exact because every key in these files is a fixed field
    /// name (no `.` or `[` in it); kept out of the struct so the error stays small.
    pub fn pointer(&self) -> String {
        schema::pointer_of_toml_path(&self.field)
    }

    /// An error about a field, found after parsing (no position).
    pub(crate) fn field(
        origin: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        LoadError {
            origin: origin.to_string(),
            field: field.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Deserialises `text` as TOML into `T` and checks it against `T`'s JSON Schema (`schema`,
/// compiled once by the caller), with the field path, JSON pointer and position of any error.
///
/// Both run on every file. When serde refuses the file its error wins: it is located by the
/// parser and says precisely what was expected (an unknown key's message lists the known
/// ones). A file serde accepts but the schema refuses gets the schema's message.
pub(crate) fn from_toml<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    validator: &jsonschema::Validator,
) -> Result<T, LoadError> {
    let violation = schema::toml_to_json(text).and_then(|v| schema::first_violation(validator, &v));
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(text, origin, String::new(), &e))?;
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        toml_error(text, origin, field, e.inner())
    })?;
    match violation {
        None => Ok(value),
        Some(v) => {
            let (line, column) = match toml::de::DeTable::parse(text) {
                Ok(tree) => {
                    let (l, c) = line_col(text, schema::pointer_span(&tree, &v.pointer).start);
                    (Some(l), Some(c))
                }
                Err(_) => (None, None),
            };
            Err(LoadError {
                origin: origin.to_string(),
                field: schema::toml_path(&v.pointer),
                line,
                column,
                message: v.message,
            })
        }
    }
}

fn toml_error(text: &str, origin: &str, field: String, e: &toml::de::Error) -> LoadError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    LoadError {
        origin: origin.to_string(),
        field,
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

/// `value` must be finite and strictly positive.
pub(crate) fn positive(origin: &str, field: &str, value: f64, unit: &str) -> Result<(), LoadError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(LoadError::field(
            origin,
            field,
            format!("expected a finite number > 0 {unit}, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("a\n", 99), (2, 1));
    }
}
