//! JSON Schemas of the configuration files, and checking TOML text against them.
//!
//! The schemas are generated with schemars from the very types the loaders deserialise, and
//! published in `schemas/` for integrators. Each loader checks its file against its schema
//! with a validator compiled once per schema (see [`compile`]); a violation names the JSON
//! pointer of the offending value, and [`pointer_span`] finds where that value is written so
//! that errors still carry a line and column.
//!
//! The protocol loader in the `modalis` crate uses the same helpers for protocol files.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The schema of a body site as a configuration file may write it. The SDK's `BodySite`
/// schema describes the canonical form the host writes (`ST36:left`); the loaders parse more
/// leniently (any case, `l`/`r`/`m`, `centre`, spaces around the parts, `-` for `_`), and a
/// file's schema must not refuse what its loader accepts. Which locations exist is the
/// loader's check (the acupoint table is too long for a pattern).
#[derive(Debug)]
pub struct SiteName;

impl schemars::JsonSchema for SiteName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SiteName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A body site as LOCATION:side, where LOCATION is a body region (e.g. foot_dorsum, lower_leg_lateral) or a WHO acupuncture point code (e.g. ST36, EX-LE10-1) and side is left, right or midline (any case; l, r, m, centre and center also accepted).",
            "examples": ["ST36:left", "foot_dorsum:right", "EX-LE10-1:left"],
            "type": "string",
            "pattern": "^\\s*[A-Za-z0-9_-]+\\s*:\\s*([Ll]([Ee][Ff][Tt])?|[Rr]([Ii][Gg][Hh][Tt])?|[Mm]([Ii][Dd][Ll][Ii][Nn][Ee])?|[Cc][Ee][Nn][Tt]([Rr][Ee]|[Ee][Rr]))\\s*$"
        })
    }
}

/// A value that breaks its file's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value (`""` for the document as a whole).
    pub pointer: String,
    /// What is wrong, in the validator's words (it says what was expected).
    pub message: String,
}

/// Compiles the schema of `T` into a validator.
///
/// # Panics
///
/// When the schema schemars generates for `T` does not compile: that is a bug in the type's
/// derive, not bad input, and the tests (which load every example) catch it.
pub fn compile<T: schemars::JsonSchema>() -> jsonschema::Validator {
    let schema = schemars::schema_for!(T);
    #[allow(clippy::expect_used)]
    jsonschema::validator_for(schema.as_value()).expect("a generated schema compiles")
}

/// The first violation of `validator` by `value`, if any.
pub fn first_violation(
    validator: &jsonschema::Validator,
    value: &serde_json::Value,
) -> Option<Violation> {
    validator.iter_errors(value).next().map(|e| {
        let e = most_specific(&e);
        let mut message = e.to_string();
        // TOML has no null: a null here was a nan or inf (see `toml_to_json`), and saying
        // "null" would point the reader at something they never wrote.
        if let Some(rest) = message.strip_prefix("null ") {
            message = format!("a non-finite number (nan or inf) {rest}");
        }
        Violation {
            pointer: e.instance_path().to_string(),
            message,
        }
    })
}

/// For "not valid under any of anyOf/oneOf" (how schemars writes an optional table or an
/// enum), the error of the alternative that got deepest into the value: for an optional
/// `[channels.optical]` with a wrong field, that field's error rather than "not an object and
/// not null".
fn most_specific<'a>(
    e: &'a jsonschema::ValidationError<'a>,
) -> &'a jsonschema::ValidationError<'a> {
    use jsonschema::error::ValidationErrorKind;
    let context = match e.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context
        }
        _ => return e,
    };
    let depth = |x: &jsonschema::ValidationError<'_>| x.instance_path().to_string().len();
    let deepest = context
        .iter()
        .filter_map(|branch| branch.first())
        .max_by_key(|x| depth(x));
    match deepest {
        Some(inner) if depth(inner) > depth(e) => most_specific(inner),
        _ => e,
    }
}

/// `text` (TOML) as the JSON value a schema validates: tables become objects, arrays arrays.
/// TOML has no null; a non-finite float becomes `null`, which no number schema accepts, and
/// a date-time becomes an object, which no string schema accepts. `None` when the text is
/// not TOML (the deserialiser reports that, with its position).
pub fn toml_to_json(text: &str) -> Option<serde_json::Value> {
    toml::from_str(text).ok()
}

/// Escapes one JSON pointer reference token (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// A JSON pointer as the TOML path used in messages: `/channels/0/optical` ->
/// `channels[0].optical`.
pub fn toml_path(pointer: &str) -> String {
    let mut out = String::new();
    for token in pointer.split('/').skip(1) {
        let token = unescape(token);
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{token}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&token);
        }
    }
    out
}

/// A TOML path as the loaders write them (`channels[0].optical.max_power_mw`) as a JSON
/// pointer (`/channels/0/optical/max_power_mw`). Only for the loaders' own paths, whose keys
/// hold no `.` or `[`.
pub fn pointer_of_toml_path(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            out.push('/');
            out.push_str(&escape(key));
        }
        for index in pieces {
            out.push('/');
            out.push_str(index.trim_end_matches(']'));
        }
    }
    out
}

/// Where the value at `pointer` is written in the parsed document: its own span, or that of
/// the nearest enclosing value that is written (a missing key's table, for instance).
pub fn pointer_span(tree: &Spanned<DeTable<'_>>, pointer: &str) -> Range<usize> {
    let mut span = tree.span();
    let mut node: Option<&Spanned<DeValue<'_>>> = None;
    for token in pointer.split('/').skip(1) {
        let token = unescape(token);
        let next = match node {
            None => tree.get_ref().get(token.as_str()),
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => t.get(token.as_str()),
                DeValue::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            },
        };
        match next {
            Some(v) => {
                span = v.span();
                node = Some(v);
            }
            None => break,
        }
    }
    span
}

/// The JSON pointer of the innermost key or value written at byte `offset`: where a parser
/// error points, as a pointer (`""` when it is outside every key and value).
///
/// A table or array of tables written with a header (`[channels.optical]`, `[[channels]]`)
/// spans only its header, so the innermost span containing the offset is searched over the
/// whole document rather than by descending.
pub fn pointer_at(tree: &Spanned<DeTable<'_>>, offset: usize) -> String {
    fn visit(table: &DeTable<'_>, prefix: &str, offset: usize, best: &mut Option<(usize, String)>) {
        for (key, value) in table.iter() {
            let pointer = format!("{prefix}/{}", escape(key.get_ref()));
            visit_value(value, &pointer, offset, best);
            consider(key.span(), &pointer, offset, best);
        }
    }
    fn visit_value(
        value: &Spanned<DeValue<'_>>,
        pointer: &str,
        offset: usize,
        best: &mut Option<(usize, String)>,
    ) {
        consider(value.span(), pointer, offset, best);
        match value.get_ref() {
            DeValue::Table(t) => visit(t, pointer, offset, best),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    visit_value(item, &format!("{pointer}/{i}"), offset, best);
                }
            }
            _ => {}
        }
    }
    fn consider(
        span: Range<usize>,
        pointer: &str,
        offset: usize,
        best: &mut Option<(usize, String)>,
    ) {
        let len = span.len();
        // `<=`: of equal spans (an array of tables and its last element share the header)
        // the deeper one, visited later, wins.
        if span.contains(&offset) && best.as_ref().is_none_or(|(l, _)| len <= *l) {
            *best = Some((len, pointer.to_string()));
        }
    }
    let mut best = None;
    visit(tree.get_ref(), "", offset, &mut best);
    best.map(|(_, p)| p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "id = \"a\"\n[[channels]]\nname = \"x\"\n[channels.optical]\nmax_power_mw = \"lots\"\n";

    fn tree() -> Spanned<DeTable<'static>> {
        match DeTable::parse(DOC) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_site_schema_accepts_what_the_site_parser_accepts() {
        let v = compile::<SiteName>();
        for site in [
            "ST36:left",
            "st36:Left",
            "foot-dorsum:r",
            " foot_dorsum : RIGHT ",
            "lower_back:m",
            "lower_back:centre",
            "lower-back:Center",
        ] {
            assert!(
                site.parse::<modalis_sdk::BodySite>().is_ok(),
                "{site} parses"
            );
            assert!(v.is_valid(&serde_json::json!(site)), "{site} validates");
        }
        for site in ["ST36", "ST36:up", "ST36:lefty", ":left", "ST36:left:right"] {
            assert!(!v.is_valid(&serde_json::json!(site)), "{site} is refused");
        }
    }

    #[test]
    fn pointers_and_toml_paths_convert_both_ways() {
        assert_eq!(
            toml_path("/channels/0/optical/max_power_mw"),
            "channels[0].optical.max_power_mw"
        );
        assert_eq!(
            pointer_of_toml_path("channels[0].optical.max_power_mw"),
            "/channels/0/optical/max_power_mw"
        );
        assert_eq!(pointer_of_toml_path(""), "");
        assert_eq!(toml_path("/a~1b/c~0d"), "a/b.c~d");
    }

    #[test]
    fn a_pointer_finds_where_its_value_is_written() {
        let t = tree();
        let span = pointer_span(&t, "/channels/0/optical/max_power_mw");
        assert_eq!(DOC.get(span), Some("\"lots\""));
        // A key that is not there: the enclosing table.
        let missing = pointer_span(&t, "/channels/0/optical/min_beam_area_cm2");
        assert_eq!(missing, pointer_span(&t, "/channels/0/optical"));
    }

    #[test]
    fn an_offset_finds_its_pointer() {
        let t = tree();
        let at = DOC.find("\"lots\"").unwrap_or(0);
        assert_eq!(pointer_at(&t, at), "/channels/0/optical/max_power_mw");
        let key = DOC.find("name").unwrap_or(0);
        assert_eq!(pointer_at(&t, key), "/channels/0/name");
    }
}
