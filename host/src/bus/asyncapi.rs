//! The AsyncAPI 3.0 description of the MQTT API, generated from the topic table
//! ([`TopicKind`]), the payload schemas ([`payload::schema`]) and the bus defaults, so that it
//! cannot drift from what the code publishes and subscribes to. `schemas/asyncapi.yaml` is
//! its committed copy (kept fresh by a test, like the JSON Schemas beside it).
//!
//! Point of view: the application described is the modalis binary. Operations are the
//! controller's (`send` what it publishes, `receive` what its subscriptions match), except on
//! `sim/{device}/fault`, which only its device simulator (`modalis sim`) receives. Who else
//! publishes or subscribes (devices, e-stop panels, dashboards) is said in each channel's
//! description. QoS and retain come from the topic table through the MQTT operation bindings.
//!
//! Payloads are not copied in: each message `$ref`s its committed JSON Schema under
//! `schemas/mqtt/` (relative to the document). Telemetry has one message per measurement kind
//! (skin temperature, optical power, impedance), because what a device sends differs by
//! modality: each narrows the telemetry schema to one variant of `measurement`, taken from the
//! generated schema. Examples come from a real demo run, captured into `schemas/examples/`
//! and handed to [`document`].

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::payload::{self, schema_file};
use super::topics::{PREFIX, Publisher, TopicKind, Topics};
use super::{BusConfig, Qos};

/// The AsyncAPI version of the document.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The MQTT bindings version used for servers and operations.
const MQTT_BINDING_VERSION: &str = "0.2.0";

/// JSON Schema as the payload format. The generated schemas declare draft 2020-12, but use
/// nothing that reads differently under draft-07 (checked by a test: no `prefixItems`,
/// `unevaluated*`, `dependent*`, `$dynamicRef`), and draft-07 is the newest JSON Schema
/// version AsyncAPI 3.0 names as a schema format.
pub const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-07";

/// One message of the document: a payload that can travel on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSpec {
    /// Message id, also the name of its example file (`schemas/examples/<id>.json`).
    pub id: String,
    /// The channel (kind of topic) it travels on.
    pub kind: TopicKind,
    /// For telemetry: the `measurement.kind` it carries.
    pub measurement: Option<String>,
    /// The JSON Schema of the payload, as it appears in the document (with `$ref`s to the
    /// files under `schemas/`, relative to the document).
    pub payload: Value,
    /// What it is.
    pub description: String,
}

/// The channel id of `kind`: its schema file's stem (`device-telemetry`).
pub fn channel_id(kind: TopicKind) -> String {
    schema_file(kind)
        .trim_start_matches("mqtt/")
        .trim_end_matches(".schema.json")
        .to_string()
}

/// The channel address: `modalis/v1/{controller}/<pattern>`.
pub fn address(kind: TopicKind) -> String {
    format!("{PREFIX}/{{controller}}/{}", kind.pattern())
}

fn description_of(schema: &Value) -> String {
    schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The variants of the telemetry's `measurement` as generated from the code's types:
/// (`kind` value, the variant's schema).
fn measurement_variants() -> Vec<(String, Value)> {
    let telemetry = payload::schema(TopicKind::DeviceTelemetry).to_value();
    let variants = telemetry
        .pointer("/$defs/Measurement/oneOf")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    variants
        .into_iter()
        .filter_map(|v| {
            let kind = v.pointer("/properties/kind/const")?.as_str()?.to_string();
            Some((kind, v))
        })
        .collect()
}

/// Every message, channel by channel in the order of the topic table.
pub fn messages() -> Vec<MessageSpec> {
    let mut out = Vec::new();
    for kind in TopicKind::ALL {
        let file_ref = json!({ "$ref": schema_file(kind) });
        let description = description_of(&payload::schema(kind).to_value());
        if kind == TopicKind::DeviceTelemetry {
            for (measurement, variant) in measurement_variants() {
                let what = description_of(&variant);
                out.push(MessageSpec {
                    id: format!("{}-{}", channel_id(kind), measurement.replace('_', "-")),
                    kind,
                    payload: json!({
                        "allOf": [
                            file_ref.clone(),
                            {
                                "type": "object",
                                "properties": { "measurement": variant },
                                "required": ["measurement"],
                            },
                        ],
                    }),
                    description: format!(
                        "{description} This message: `measurement.kind` = `{measurement}` ({}).",
                        what.trim_end_matches('.').to_lowercase()
                    ),
                    measurement: Some(measurement),
                });
            }
        } else {
            out.push(MessageSpec {
                id: channel_id(kind),
                kind,
                measurement: None,
                payload: file_ref,
                description,
            });
        }
    }
    out
}

/// The message id a payload received on a topic of `kind` belongs to, or `None` when none
/// fits (telemetry with an unknown measurement kind).
pub fn message_id(kind: TopicKind, payload: &Value) -> Option<String> {
    let measurement = payload.pointer("/measurement/kind").and_then(Value::as_str);
    messages()
        .into_iter()
        .find(|m| {
            m.kind == kind && (m.measurement.is_none() || m.measurement.as_deref() == measurement)
        })
        .map(|m| m.id)
}

/// The controller's subscription ([`Topics::controller_filters`]) that matches topics of
/// `kind`, written with `{controller}`, or `None` when it does not subscribe to them.
fn controller_filter(kind: TopicKind) -> Option<String> {
    let topics = Topics::new("c").ok()?;
    let sample = sample_topic(&topics, kind);
    let filter = topics
        .controller_filters()
        .into_iter()
        .find(|f| filter_matches(f, &sample))?;
    let rest = filter.strip_prefix(topics.root())?;
    Some(format!("{PREFIX}/{{controller}}{rest}"))
}

/// A concrete topic of `kind` (ids `c`, `s`, `d`).
fn sample_topic(topics: &Topics, kind: TopicKind) -> String {
    let rest = kind
        .pattern()
        .replace("{session}", "s")
        .replace("{device}", "d");
    format!("{}/{rest}", topics.root())
}

/// MQTT filter matching (one implementation, in `topics`).
pub use super::topics::filter_matches;

fn qos_number(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
    }
}

fn who(kind: TopicKind) -> String {
    let publisher = match kind.publisher() {
        Publisher::Controller => "Published by the modalis controller",
        Publisher::Device => "Published by each device (or `modalis sim` standing in for it)",
        Publisher::Panel => "Published by any authorised e-stop panel or client",
        Publisher::Operator => "Published by an operator or a test rig",
    };
    let subscribers = match kind {
        TopicKind::DeviceCommand => {
            "subscribed to by the device it names (its own command topic only)"
        }
        TopicKind::DeviceAck | TopicKind::DeviceTelemetry => "subscribed to by the controller",
        TopicKind::Estop => {
            "subscribed to by the controller and by every device: a device stops every output \
             on any valid message here by itself (one broker hop, and it works with the \
             controller hung or gone); the controller's audited per-channel stops follow on each \
             device's command topic"
        }
        TopicKind::SimFault => {
            "subscribed to only by the simulated device it names; no controller or real device \
             subscription matches it"
        }
        TopicKind::State | TopicKind::SessionStatus | TopicKind::DoseReport | TopicKind::Alarm => {
            "subscribed to by dashboards and panels"
        }
    };
    let qos = qos_number(kind.qos());
    let retained = if kind.retained() {
        "retained: a late subscriber gets the latest at once"
    } else {
        "not retained"
    };
    format!(
        "{publisher}; {subscribers}. Dashboards may read every topic (`{PREFIX}/{{controller}}/#`). QoS {qos}, {retained}."
    )
}

fn parameters(kind: TopicKind) -> Value {
    let mut p = Map::new();
    p.insert(
        "controller".into(),
        json!({ "$ref": "#/components/parameters/controller" }),
    );
    for (name, placeholder) in [("session", "{session}"), ("device", "{device}")] {
        if kind.pattern().contains(placeholder) {
            p.insert(
                name.into(),
                json!({ "$ref": format!("#/components/parameters/{name}") }),
            );
        }
    }
    Value::Object(p)
}

fn operation_id(action: &str, kind: TopicKind) -> String {
    let mut id = action.to_string();
    for word in channel_id(kind).split('-') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

/// The AsyncAPI document, with `examples` (message id -> one captured payload) embedded in
/// their messages. A message without an example gets none; the freshness test insists on one
/// per message.
pub fn document(examples: &BTreeMap<String, Value>) -> Value {
    let messages = messages();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut component_messages = Map::new();
    for kind in TopicKind::ALL {
        let cid = channel_id(kind);
        let mine: Vec<&MessageSpec> = messages.iter().filter(|m| m.kind == kind).collect();
        let mut channel_messages = Map::new();
        for m in &mine {
            channel_messages.insert(
                m.id.clone(),
                json!({ "$ref": format!("#/components/messages/{}", m.id) }),
            );
            let mut message = json!({
                "name": m.id,
                "title": m.id,
                "contentType": "application/json",
                "description": m.description,
                "payload": { "schemaFormat": SCHEMA_FORMAT, "schema": m.payload },
            });
            if let (Some(example), Some(obj)) = (examples.get(&m.id), message.as_object_mut()) {
                obj.insert(
                    "examples".into(),
                    json!([{
                        "name": format!("{}-demo", m.id),
                        "summary": "Captured from a demo run (modalis demo on the embedded broker).",
                        "payload": example,
                    }]),
                );
            }
            component_messages.insert(m.id.clone(), message);
        }
        channels.insert(
            cid.clone(),
            json!({
                "address": address(kind),
                "title": kind.pattern(),
                "description": who(kind),
                "parameters": parameters(kind),
                "messages": channel_messages,
            }),
        );
        let filter = controller_filter(kind);
        let operation = if kind.publisher() == Publisher::Controller {
            Some(("send", "The controller sends it.".to_string()))
        } else if let Some(filter) = &filter {
            Some((
                "receive",
                format!(
                    "The controller receives it (subscribes to {filter}); every payload is checked against its schema before it is acted on, and a rejected one is counted and audited."
                ),
            ))
        } else if kind == TopicKind::SimFault {
            Some((
                "receive",
                "The device simulator (`modalis sim`), not the controller, receives it."
                    .to_string(),
            ))
        } else {
            None
        };
        if let Some((action, summary)) = operation {
            let refs: Vec<Value> = mine
                .iter()
                .map(|m| json!({ "$ref": format!("#/channels/{cid}/messages/{}", m.id) }))
                .collect();
            operations.insert(
                operation_id(action, kind),
                json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{cid}") },
                    "summary": summary,
                    "messages": refs,
                    "bindings": { "mqtt": {
                        "qos": qos_number(kind.qos()),
                        "retain": kind.retained(),
                        "bindingVersion": MQTT_BINDING_VERSION,
                    } },
                }),
            );
        }
    }

    let (keep_alive, max_packet) = match Topics::new("c")
        .ok()
        .and_then(|t| BusConfig::new("mqtt://127.0.0.1:1883", "modalis", t).ok())
    {
        Some(c) => (c.keep_alive.as_secs(), u64::from(c.max_packet_bytes)),
        None => (0, 0),
    };
    let id_rule = format!(
        "1-{} letters, digits, '-', '_' or '.'",
        super::topics::MAX_ID_LEN
    );
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "modalis MQTT API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Every topic of a modalis controller, under `{PREFIX}/{{controller}}/`. Payloads are JSON with `seq` (per publisher, +1 per message) and `ts_ms` (the publisher's wall clock, Unix ms); units are in the field names; unknown fields are refused. The application described is the modalis binary: operations are the controller's, except on `sim/{{device}}/fault`, which its device simulator receives. Generated from the code (`modalis::bus::asyncapi`); do not edit by hand."
            ),
            "license": { "name": "Apache-2.0" },
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "The embedded rumqttd broker of `modalis demo` and `modalis run` (127.0.0.1 only, no ACL: single-machine use).",
                "bindings": { "mqtt": {
                    "clientId": "modalis-{controller}",
                    "cleanSession": true,
                    "keepAlive": keep_alive,
                    "maximumPacketSize": max_packet,
                    "lastWill": {
                        "topic": address(TopicKind::State),
                        "qos": qos_number(TopicKind::State.qos()),
                        "retain": TopicKind::State.retained(),
                    },
                    "bindingVersion": MQTT_BINDING_VERSION,
                } },
            },
            "clinic": {
                "host": "{host}:{port}",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "A clinic's mosquitto 2.0 with a password file and an ACL: the controller writes commands, devices write their acks and telemetry, dashboards read.",
                "variables": {
                    "host": { "description": "Broker host name or address." },
                    "port": { "default": "1883", "description": "Broker TCP port." },
                },
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "controller": {
                    "description": format!("Controller id ({id_rule}); `modalis demo` and `modalis run` use `{}` unless told otherwise.", crate::DEFAULT_CONTROLLER_ID),
                    "examples": [crate::DEFAULT_CONTROLLER_ID],
                },
                "session": {
                    "description": format!("Session id ({id_rule})."),
                    "examples": ["s1"],
                },
                "device": {
                    "description": format!("Device id, as in the device profile ({id_rule})."),
                    "examples": ["mire-pads"],
                },
            },
            "messages": component_messages,
        },
    })
}

/// The document as YAML, with a header saying where it comes from.
pub fn to_yaml(document: &Value) -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(document)?;
    Ok(format!(
        "# Generated by modalis::bus::asyncapi from the topic table and the payload types; do not edit.\n\
         # Refresh with: MODALIS_BLESS=1 cargo test -p modalis --test it asyncapi\n{body}"
    ))
}
