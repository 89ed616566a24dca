//! Reading trusted configuration (device profiles, patient context) from TOML text.
//!
//! The governor does no I/O: callers read the file and hand over its text plus a name (the
//! path) that errors will carry.

use serde::de::DeserializeOwned;

/// A configuration file that could not be read or is not valid. It names the file, the field
/// (as a TOML path such as `channels[0].optical.max_power_mw`), the line and column where the
/// TOML parser located the problem, and what was expected.
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
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
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

/// Deserialises `text` as TOML into `T`, with the field path and position of any error.
pub(crate) fn from_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, LoadError> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(text, origin, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        toml_error(text, origin, field, e.inner())
    })
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
