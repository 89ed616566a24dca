//! Block parameters: TOML to JSON (keeping the position of every key), and validation by
//! the block's plugin.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::DeValue;

use super::{Position, Protocol, ProtocolError, ProtocolErrorKind};
use crate::plugin::Plugin;

/// A params table as JSON, with the position of every key and array element by JSON pointer.
pub(super) struct Converted {
    pub value: serde_json::Value,
    pub keys: BTreeMap<String, Position>,
}

/// Converts a params value from the spanned TOML tree. Date-times and non-finite floats have
/// no JSON form; they are refused here rather than turned into something the clinician did
/// not write (serde_json would make a NaN `null`).
pub(super) fn convert(
    text: &str,
    tree: &Spanned<DeValue<'_>>,
) -> Result<Converted, (Position, ProtocolErrorKind)> {
    let mut keys = BTreeMap::new();
    let value = to_json(text, tree, String::new(), &mut keys)?;
    Ok(Converted { value, keys })
}

fn to_json(
    text: &str,
    v: &Spanned<DeValue<'_>>,
    pointer: String,
    keys: &mut BTreeMap<String, Position>,
) -> Result<serde_json::Value, (Position, ProtocolErrorKind)> {
    let at = Position::of(text, v.span().start);
    let bad = |message: String| {
        (
            at,
            ProtocolErrorKind::ParamValue {
                pointer: pointer.clone(),
                message,
            },
        )
    };
    Ok(match v.get_ref() {
        DeValue::String(s) => serde_json::Value::String(s.to_string()),
        DeValue::Boolean(b) => serde_json::Value::Bool(*b),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => {
                return Err(bad(format!(
                    "integer {i} is out of range (expected a 64-bit integer)"
                )));
            }
        },
        DeValue::Float(f) => {
            let n = f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64);
            match n {
                Some(n) => serde_json::Value::Number(n),
                None => return Err(bad(format!("{f} is not a finite number (expected one)"))),
            }
        }
        DeValue::Datetime(d) => {
            return Err(bad(format!(
                "date-time {d} cannot be a plugin parameter (expected a string, number, \
                 boolean, array or table)"
            )));
        }
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for (i, item) in a.iter().enumerate() {
                let p = format!("{pointer}/{i}");
                keys.insert(p.clone(), Position::of(text, item.span().start));
                out.push(to_json(text, item, p, keys)?);
            }
            serde_json::Value::Array(out)
        }
        DeValue::Table(t) => {
            let mut out = serde_json::Map::new();
            for (k, item) in t.iter() {
                let p = format!("{pointer}/{}", escape(k.get_ref()));
                keys.insert(p.clone(), Position::of(text, k.span().start));
                out.insert(k.get_ref().to_string(), to_json(text, item, p, keys)?);
            }
            serde_json::Value::Object(out)
        }
    })
}

/// One JSON pointer reference token (RFC 6901: `~` as `~0`, `/` as `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Protocol {
    /// Has each enabled block's plugin validate its parameters: the host's check against the
    /// plugin's JSON Schema, then the plugin's own `validate`. `plugins` are keyed by plugin
    /// id. Returns every problem found, each at the line and column of the offending key (or
    /// of the block's params table when the plugin names no key this file has).
    pub fn check_params(
        &self,
        plugins: &mut BTreeMap<String, Plugin>,
    ) -> Result<(), Vec<ProtocolError>> {
        let mut errors = Vec::new();
        for b in self.enabled_blocks() {
            let available: Vec<String> = plugins.keys().cloned().collect();
            let Some(plugin) = plugins.get_mut(&b.plugin) else {
                errors.push(self.error(
                    Some(b.spans.plugin),
                    Some(&b.id),
                    ProtocolErrorKind::UnknownPlugin {
                        plugin: b.plugin.clone(),
                        available,
                    },
                ));
                continue;
            };
            let json = b.params.to_string();
            match plugin.validate(&json) {
                Ok(Ok(())) => {}
                Ok(Err(fields)) => {
                    for f in fields {
                        errors.push(self.error(
                            Some(b.spans.params_position(&f.pointer)),
                            Some(&b.id),
                            ProtocolErrorKind::Param {
                                pointer: f.pointer,
                                message: f.message,
                            },
                        ));
                    }
                }
                Err(e) => errors.push(self.error(
                    Some(b.spans.params),
                    Some(&b.id),
                    ProtocolErrorKind::Plugin(Box::new(e)),
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
