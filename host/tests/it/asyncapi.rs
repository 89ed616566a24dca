//! `schemas/asyncapi.yaml`, the AsyncAPI 3.0 description of the MQTT API, is generated from the
//! code (`modalis::bus::asyncapi`) with examples captured from a real demo run
//! (`schemas/examples/<message>.json`). These tests keep it fresh, check that it parses, that
//! every topic the code publishes or subscribes to has a channel, and that every example
//! validates against the schema its message references.
//!
//! Refresh the examples (runs the demo protocol in-process, under a minute), then the document:
//!
//!     cargo test -p modalis --test it asyncapi::capture_demo_examples -- --ignored
//!     MODALIS_BLESS=1 cargo test -p modalis --test it asyncapi

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use modalis::broker::EmbeddedBroker;
use modalis::bus::asyncapi::{self, filter_matches};
use modalis::bus::payload::{self, EstopInput, FaultSpec, Inbound, SimFaultMessage};
use modalis::bus::topics::{Publisher, Topic, TopicKind, Topics};
use modalis::bus::{Bus, BusConfig, BusEvent, Qos};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn examples_dir() -> PathBuf {
    schemas_dir().join("examples")
}

fn document_path() -> PathBuf {
    schemas_dir().join("asyncapi.yaml")
}

/// The committed examples, by message id (file stem).
fn committed_examples() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(examples_dir()) else {
        return out;
    };
    for entry in dir {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read example");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.insert(id, value);
    }
    out
}

fn generated_yaml() -> String {
    let doc = asyncapi::document(&committed_examples());
    asyncapi::to_yaml(&doc).expect("serialises")
}

fn committed_document() -> Value {
    let text = std::fs::read_to_string(document_path()).expect(
        "schemas/asyncapi.yaml exists (MODALIS_BLESS=1 cargo test -p modalis --test it asyncapi)",
    );
    serde_norway::from_str(&text).expect("schemas/asyncapi.yaml is YAML")
}

#[test]
fn committed_document_is_fresh() {
    let text = generated_yaml();
    if std::env::var_os("MODALIS_BLESS").is_some() {
        std::fs::write(document_path(), &text).expect("write asyncapi.yaml");
        return;
    }
    let committed = std::fs::read_to_string(document_path()).unwrap_or_default();
    if committed != text {
        let first = committed
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(text.lines().count()));
        panic!(
            "schemas/asyncapi.yaml is stale from line {}:\n  committed: {}\n  generated: {}\nrefresh with: MODALIS_BLESS=1 cargo test -p modalis --test it asyncapi",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            text.lines().nth(first).unwrap_or("<end>")
        );
    }
}

#[test]
fn the_document_parses_as_asyncapi_3() {
    let doc = committed_document();
    assert_eq!(doc["asyncapi"], "3.0.0");
    // What was written is what the generator builds (YAML round trip loses nothing).
    assert_eq!(doc, asyncapi::document(&committed_examples()));
    for key in ["info", "servers", "channels", "operations", "components"] {
        assert!(doc.get(key).is_some(), "no {key}");
    }
    // Every operation points at a channel of the document and at messages of that channel,
    // and carries the table's QoS and retain flag.
    let ops = doc["operations"].as_object().expect("operations");
    // One operation per channel: the controller (or, for faults, the simulator) is on one
    // side of every topic.
    assert_eq!(ops.len(), TopicKind::ALL.len());
    for (id, op) in ops {
        let channel_ref = op["channel"]["$ref"].as_str().expect("channel ref");
        let cid = channel_ref
            .strip_prefix("#/channels/")
            .expect("local channel ref");
        let channel = &doc["channels"][cid];
        assert!(channel.is_object(), "{id}: {channel_ref}");
        let kind = TopicKind::ALL
            .into_iter()
            .find(|k| asyncapi::channel_id(*k) == cid)
            .expect("a kind");
        let mqtt = &op["bindings"]["mqtt"];
        let qos = match kind.qos() {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        };
        assert_eq!(mqtt["qos"], qos, "{id}");
        assert_eq!(mqtt["retain"], kind.retained(), "{id}");
        // send: what the controller publishes; receive: what its subscriptions match (and the
        // simulator's fault topic).
        let t = Topics::new("c").expect("valid");
        let topic = t.render(&sample(kind)).expect("renders");
        let subscribed = t
            .controller_filters()
            .iter()
            .any(|f| filter_matches(f, &topic));
        let expected = if kind.publisher() == Publisher::Controller {
            "send"
        } else if subscribed || kind == TopicKind::SimFault {
            "receive"
        } else {
            "none"
        };
        assert_eq!(op["action"], expected, "{id}");
        for m in op["messages"].as_array().expect("messages") {
            let r = m["$ref"].as_str().expect("message ref");
            let name = r
                .strip_prefix(&format!("#/channels/{cid}/messages/"))
                .unwrap_or_else(|| panic!("{id}: {r} is not a message of {cid}"));
            assert!(channel["messages"][name].is_object(), "{id}: {r}");
        }
    }
}

/// Whether a concrete topic or a filter (`+`, `#`) fits a channel address, whose
/// `{parameter}` levels stand for exactly one level each.
fn fits(address: &str, topic_or_filter: &str) -> bool {
    let a: Vec<&str> = address.split('/').collect();
    let t: Vec<&str> = topic_or_filter.split('/').collect();
    a.len() == t.len()
        && a.iter().zip(&t).all(|(a, t)| {
            let param = a.starts_with('{') && a.ends_with('}');
            match *t {
                "+" => param,
                "#" => false,
                t => param || *a == t,
            }
        })
}

/// One topic of each kind, through the enum (a new kind does not compile until it is here).
fn sample(kind: TopicKind) -> Topic {
    let s = || "s1".to_string();
    let d = || "mire-pads".to_string();
    match kind {
        TopicKind::State => Topic::State,
        TopicKind::SessionStatus => Topic::SessionStatus { session: s() },
        TopicKind::DoseReport => Topic::DoseReport { session: s() },
        TopicKind::DeviceCommand => Topic::DeviceCommand { device: d() },
        TopicKind::DeviceAck => Topic::DeviceAck { device: d() },
        TopicKind::DeviceTelemetry => Topic::DeviceTelemetry { device: d() },
        TopicKind::Alarm => Topic::Alarm,
        TopicKind::Estop => Topic::Estop,
        TopicKind::SimFault => Topic::SimFault { device: d() },
    }
}

#[test]
fn every_topic_the_code_uses_has_a_channel() {
    let doc = committed_document();
    let addresses: Vec<String> = doc["channels"]
        .as_object()
        .expect("channels")
        .values()
        .map(|c| c["address"].as_str().expect("address").to_string())
        .collect();
    let t = Topics::new("controller-1").expect("valid");
    let d = "mire-pads";
    let mut topics = vec![
        t.state(),
        t.alarm(),
        t.estop(),
        t.session_status("s1").expect("valid"),
        t.dose_report("s1").expect("valid"),
        t.device_command(d).expect("valid"),
        t.device_ack(d).expect("valid"),
        t.device_telemetry(d).expect("valid"),
        t.sim_fault(d).expect("valid"),
    ];
    for kind in TopicKind::ALL {
        let topic = t.render(&sample(kind)).expect("renders");
        // The table's pattern and the renderer agree.
        assert_eq!(
            asyncapi::address(kind)
                .replace("{controller}", "controller-1")
                .replace("{session}", "s1")
                .replace("{device}", d),
            topic,
            "{kind:?}"
        );
        topics.push(topic);
    }
    let mut filters = t.controller_filters();
    filters.extend(t.device_filters(d).expect("valid"));
    filters.push(t.sim_fault_filter(d).expect("valid"));

    for topic in topics.iter().chain(&filters) {
        let matching: Vec<&String> = addresses.iter().filter(|a| fits(a, topic)).collect();
        assert_eq!(
            matching.len(),
            1,
            "{topic} must fit exactly one channel address, fits {matching:?}"
        );
    }
    // Every channel is used by the code: no address the code never produces.
    for a in &addresses {
        assert!(topics.iter().any(|t| fits(a, t)), "{a}: no topic");
    }
    // The dashboards' wildcard covers every channel.
    for topic in &topics {
        assert!(filter_matches(&t.all_filter(), topic), "{topic}");
    }
}

#[test]
fn the_address_matcher_can_say_no() {
    assert!(fits(
        "modalis/v1/{controller}/device/{device}/ack",
        "modalis/v1/c/device/+/ack"
    ));
    assert!(!fits(
        "modalis/v1/{controller}/device/{device}/ack",
        "modalis/v1/c/device/x/telemetry"
    ));
    assert!(!fits("modalis/v1/{controller}/state", "modalis/v1/c/+"));
    assert!(!fits(
        "modalis/v1/{controller}/state",
        "modalis/v1/c/state/x"
    ));
}

/// Reads `$ref`ed schema files from `schemas/` for the validator (nothing else: any other
/// URI is an error, so a reference to the network fails the test instead of being fetched).
struct SchemasDir(PathBuf);

impl jsonschema::Retrieve for SchemasDir {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = PathBuf::from(uri.path().as_str());
        if uri.scheme().as_str() != "file" || !path.starts_with(&self.0) {
            return Err(format!("{uri} is outside {}", self.0.display()).into());
        }
        Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
    }
}

/// A validator for a message payload schema as it stands in the document, its `$ref`s
/// resolved against the document's directory.
fn payload_validator(schema: &Value) -> jsonschema::Validator {
    let dir = schemas_dir().canonicalize().expect("schemas/ exists");
    jsonschema::options()
        .with_base_uri(format!("file://{}/asyncapi.yaml", dir.display()))
        .with_retriever(SchemasDir(dir))
        .build(schema)
        .unwrap_or_else(|e| panic!("payload schema {schema} does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_message_has_an_example_that_validates_against_its_schema() {
    let doc = committed_document();
    let messages = doc["components"]["messages"].as_object().expect("messages");
    assert_eq!(messages.len(), asyncapi::messages().len());
    let examples = committed_examples();
    let topics = Topics::new("controller-1").expect("valid");
    for (id, m) in messages {
        assert_eq!(
            m["payload"]["schemaFormat"],
            asyncapi::SCHEMA_FORMAT,
            "{id}"
        );
        let validator = payload_validator(&m["payload"]["schema"]);
        let listed = m["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: no example (capture one: see this file's docs)"));
        assert!(!listed.is_empty(), "{id}: no example");
        for ex in listed {
            let payload = &ex["payload"];
            let errs = errors(&validator, payload);
            assert!(errs.is_empty(), "{id}: the example is invalid: {errs:?}");
        }
        // The committed file is the one embedded.
        assert_eq!(
            examples.get(id),
            Some(&listed[0]["payload"]),
            "{id}: schemas/examples/{id}.json"
        );
        // The controller's own decoder accepts it too, on the topic its ids name.
        let spec = asyncapi::messages()
            .into_iter()
            .find(|s| &s.id == id)
            .expect("a spec");
        let example = &listed[0]["payload"];
        let session = example["session"].as_str().unwrap_or("s1");
        let device = example["device"].as_str().unwrap_or("mire-pads");
        let topic = asyncapi::address(spec.kind)
            .replace("{controller}", topics.controller())
            .replace("{session}", session)
            .replace("{device}", device);
        let bytes = serde_json::to_vec(example).expect("encodes");
        if let Err(e) = payload::decode(&topics, &topic, &bytes) {
            panic!("{id}: the decoder rejects the example: {e}");
        }
    }
    // No stray example for a message that does not exist.
    for id in examples.keys() {
        assert!(
            messages.contains_key(id),
            "schemas/examples/{id}.json: no such message"
        );
    }
}

#[test]
fn telemetry_messages_differ_by_measurement_kind() {
    let doc = committed_document();
    let examples = committed_examples();
    let telemetry: Vec<asyncapi::MessageSpec> = asyncapi::messages()
        .into_iter()
        .filter(|m| m.kind == TopicKind::DeviceTelemetry)
        .collect();
    assert_eq!(telemetry.len(), 3, "one per measurement kind");
    // Each telemetry example is valid for its own message and for no other: the narrowing
    // is real.
    for m in &telemetry {
        let example = examples.get(&m.id).expect("example");
        for other in &telemetry {
            let schema = &doc["components"]["messages"][&other.id]["payload"]["schema"];
            let valid = payload_validator(schema).is_valid(example);
            assert_eq!(valid, m.id == other.id, "{} against {}", m.id, other.id);
        }
        assert_eq!(
            asyncapi::message_id(TopicKind::DeviceTelemetry, example).as_deref(),
            Some(m.id.as_str())
        );
    }
}

#[test]
fn the_schemas_mean_the_same_under_draft_07() {
    // The document declares the payloads as draft-07 (the newest JSON Schema AsyncAPI 3.0
    // names); schemars writes 2020-12. That is only honest while no keyword whose meaning
    // differs (or that draft-07 lacks) is used.
    let dir = schemas_dir().join("mqtt");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("schemas/mqtt") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for keyword in [
            "prefixItems",
            "unevaluatedProperties",
            "unevaluatedItems",
            "dependentRequired",
            "dependentSchemas",
            "$dynamicRef",
            "$anchor",
            "minContains",
            "maxContains",
        ] {
            assert!(
                !text.contains(&format!("\"{keyword}\"")),
                "{}: {keyword}",
                path.display()
            );
        }
        seen += 1;
    }
    assert_eq!(seen, TopicKind::ALL.len());
}

/// The kind of topic and the JSON of a decoded message.
fn as_json(message: &Inbound) -> (TopicKind, Value) {
    let v = |r: Result<Value, serde_json::Error>| r.expect("re-encodes");
    match message {
        Inbound::State(m) => (TopicKind::State, v(serde_json::to_value(m))),
        Inbound::SessionStatus(m) => (TopicKind::SessionStatus, v(serde_json::to_value(m))),
        Inbound::DoseReport(m) => (TopicKind::DoseReport, v(serde_json::to_value(m))),
        Inbound::Command(m) => (TopicKind::DeviceCommand, v(serde_json::to_value(m))),
        Inbound::Ack(m) => (TopicKind::DeviceAck, v(serde_json::to_value(m))),
        Inbound::Telemetry(m) => (TopicKind::DeviceTelemetry, v(serde_json::to_value(m))),
        Inbound::Alarm(m) => (TopicKind::Alarm, v(serde_json::to_value(m))),
        Inbound::Estop(m) => (TopicKind::Estop, v(serde_json::to_value(m))),
        Inbound::SimFault(m) => (TopicKind::SimFault, v(serde_json::to_value(m))),
    }
}

/// How telling a message is as an example: a running session's status over a planned one,
/// a `set` command over a lease renewal, telemetry of a channel that is delivering, a high
/// priority alarm.
fn telling(kind: TopicKind, v: &Value) -> u8 {
    match kind {
        TopicKind::SessionStatus => u8::from(v["state"] == "running" && v["block"].is_string()),
        TopicKind::DeviceCommand => u8::from(v["action"]["kind"] == "set"),
        TopicKind::DeviceAck => u8::from(v["outcome"] == "accepted"),
        TopicKind::DeviceTelemetry => u8::from(v["delivering"] == true),
        // The e-stop's alarm, not a lateness note.
        TopicKind::Alarm => u8::from(v["priority"] == "high"),
        _ => 0,
    }
}

fn has_telling(kind: TopicKind) -> bool {
    matches!(
        kind,
        TopicKind::SessionStatus
            | TopicKind::DeviceCommand
            | TopicKind::DeviceAck
            | TopicKind::DeviceTelemetry
    )
}

/// Runs the demo protocol (`modalis demo`: embedded broker, simulated devices, controller,
/// x90) with a dashboard subscribed to everything, keeps one message per AsyncAPI message,
/// presses the e-stop and sets a simulator fault the way a panel and a test rig would (a
/// clean run publishes neither, nor an alarm), and writes them to `schemas/examples/`.
/// Every message of the run must pass the dashboard's own schema check.
#[test]
#[ignore = "runs the whole demo; refreshes schemas/examples (see this file's docs)"]
fn capture_demo_examples() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(capture());
}

async fn capture() {
    const WAIT: Duration = Duration::from_secs(120);
    let broker = EmbeddedBroker::start().await.expect("embedded broker");
    let controller = modalis::DEFAULT_CONTROLLER_ID;
    let topics = Topics::new(controller).expect("valid");
    let cancel = CancellationToken::new();
    let mut cfg = BusConfig::new(&broker.url(), "capture", topics.clone()).expect("config");
    cfg.subscriptions = vec![(topics.all_filter(), Qos::AtLeastOnce)];
    let mut dash = Bus::start(cfg, cancel.clone()).expect("dashboard bus");
    dash.handle
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connects");

    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = modalis::runner::RunOptions {
        protocol: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/protocols/dpn-combined.toml"),
        broker: modalis::runner::BrokerChoice::External {
            url: broker.url(),
            credentials: None,
            tls: None,
        },
        simulate: true,
        faults: BTreeMap::new(),
        // The demo's default: faster, and the scheduler starts refusing late steps, which
        // would make the alarm example a lateness note.
        speed: 90,
        controller_id: controller.to_string(),
        audit_dir: tmp.path().join("audit"),
        cache_dir: tmp.path().join("cache"),
        operator: "demo".into(),
        yes: true,
        plugins: modalis::runner::bundled_plugins(),
        plugin_trust: modalis::controller::PluginTrust::development().expect("dev key"),
        dashboard: None,
    };
    let run_cancel = CancellationToken::new();
    let run = tokio::spawn(modalis::runner::run(opts, run_cancel.clone()));

    let wanted: Vec<String> = asyncapi::messages().into_iter().map(|m| m.id).collect();
    // The messages a clean run publishes by itself.
    let own: Vec<(String, TopicKind)> = asyncapi::messages()
        .into_iter()
        .filter(|m| {
            !matches!(
                m.kind,
                TopicKind::Alarm | TopicKind::Estop | TopicKind::SimFault
            )
        })
        .map(|m| (m.id, m.kind))
        .collect();
    let mut got: BTreeMap<String, (u8, Value)> = BTreeMap::new();
    let mut pressed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = |got: &BTreeMap<String, (u8, Value)>| {
        wanted.iter().all(|w| got.contains_key(w))
            && got
                .get(&asyncapi::channel_id(TopicKind::Alarm))
                .is_some_and(|(s, _)| *s > 0)
    };
    while !done(&got) {
        let ev = tokio::time::timeout_at(deadline, dash.inbox.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "captured only {:?} within {WAIT:?}",
                    got.keys().collect::<Vec<_>>()
                )
            })
            .expect("the dashboard's bus ended");
        let message = match ev {
            BusEvent::Message { message, .. } => message,
            BusEvent::Rejected(e) => panic!("a message of the demo failed the schema check: {e}"),
            _ => continue,
        };
        let (kind, value) = as_json(&message);
        let id = asyncapi::message_id(kind, &value).expect("a message id");
        let score = telling(kind, &value);
        if got.get(&id).is_none_or(|(s, _)| score > *s) {
            got.insert(id, (score, value));
        }
        // Once the run's own channels have telling examples, act as a test rig and a panel.
        let covered = own.iter().all(|(id, kind)| {
            got.get(id)
                .is_some_and(|(s, _)| *s > 0 || !has_telling(*kind))
        });
        if covered && !pressed {
            pressed = true;
            let device = got["device-command"].1["device"]
                .as_str()
                .expect("device")
                .to_string();
            let fault = SimFaultMessage {
                seq: 1,
                ts_ms: payload::wall_clock_ms(),
                device: device.clone(),
                // Gain 1 is the healthy skin: an example that changes nothing in the run.
                faults: FaultSpec {
                    overheating_gain: Some(1.0),
                    ..FaultSpec::default()
                },
            };
            dash.handle
                .publish_as(
                    TopicKind::SimFault,
                    &topics.sim_fault(&device).expect("valid"),
                    &fault,
                )
                .await
                .expect("fault published");
            let estop = EstopInput {
                seq: 1,
                ts_ms: payload::wall_clock_ms(),
                panel: "panel-1".into(),
                reason: "e-stop pressed on panel-1 (example capture)".into(),
            };
            dash.handle
                .publish_as(TopicKind::Estop, &topics.estop(), &estop)
                .await
                .expect("e-stop published");
        }
    }
    run_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    cancel.cancel();

    std::fs::create_dir_all(examples_dir()).expect("mkdir");
    for (id, (_, value)) in &got {
        let mut text = serde_json::to_string_pretty(value).expect("pretty");
        text.push('\n');
        std::fs::write(examples_dir().join(format!("{id}.json")), text).expect("write example");
    }
    println!(
        "captured {} examples into {}",
        got.len(),
        examples_dir().display()
    );
}
