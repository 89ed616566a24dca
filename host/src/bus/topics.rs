//! The topic namespace: `modalis/v1/<controller>/...`, built and parsed in one place.
//!
//! | topic                                   | publisher   | retained | payload            |
//! |-----------------------------------------|-------------|----------|--------------------|
//! | `state`                                 | controller  | yes      | [`ControllerState`](super::payload::ControllerState) |
//! | `session/<session>/status`              | controller  | yes      | [`SessionStatus`](super::payload::SessionStatus) |
//! | `session/<session>/dose-report`         | controller  | yes      | [`DoseReportMessage`](super::payload::DoseReportMessage) |
//! | `device/<device>/command`               | controller  | no       | [`DeviceCommand`](super::payload::DeviceCommand) |
//! | `device/<device>/ack`                   | device      | no       | [`CommandAck`](super::payload::CommandAck) |
//! | `device/<device>/telemetry`             | device      | no       | [`DeviceTelemetry`](super::payload::DeviceTelemetry) |
//! | `alarm`                                 | controller  | no       | [`AlarmMessage`](super::payload::AlarmMessage) |
//! | `estop`                                 | any panel   | no       | [`EstopInput`](super::payload::EstopInput) (read by the controller and every device) |
//! | `sim/<device>/fault`                    | operator    | no       | [`SimFaultMessage`](super::payload::SimFaultMessage) |
//!
//! `sim/<device>/fault` exists only for the device simulator (`modalis sim`): it replaces a
//! simulated device's injected faults at run time. It lives outside `device/<device>/...` so
//! that no controller or real device subscription ever matches it.
//!
//! Every id that becomes a topic level (controller, session, device) is checked here, so no id
//! can smuggle a `/`, a wildcard or an empty level into a topic.
//!
//! [`TopicKind`] is the table above as code: pattern, publisher, QoS and retain flag.

use super::Qos;

/// The first two levels of every topic: the product and the contract version.
pub const PREFIX: &str = "modalis/v1";

/// Longest id accepted as one topic level. MQTT allows 65535 bytes for a whole topic; ids this
/// long are a mistake, and short topics keep every message small.
pub const MAX_ID_LEN: usize = 128;

/// Why a topic or an id is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// An id that cannot be a topic level.
    #[error("invalid {what} id {id:?}: expected 1-{MAX_ID_LEN} letters, digits, '-', '_' or '.'")]
    InvalidId {
        /// Which id (controller, session, device).
        what: &'static str,
        /// The id as given.
        id: String,
    },
    /// A topic outside this controller's namespace or of an unknown shape.
    #[error("topic {topic:?}: {reason}")]
    Unknown {
        /// The topic as received.
        topic: String,
        /// What did not match.
        reason: String,
    },
}

/// One of the topics of a controller, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `state`: controller presence, retained.
    State,
    /// `session/<session>/status`, retained.
    SessionStatus {
        /// Session id.
        session: String,
    },
    /// `session/<session>/dose-report`, retained.
    DoseReport {
        /// Session id.
        session: String,
    },
    /// `device/<device>/command`.
    DeviceCommand {
        /// Device id.
        device: String,
    },
    /// `device/<device>/ack`.
    DeviceAck {
        /// Device id.
        device: String,
    },
    /// `device/<device>/telemetry`.
    DeviceTelemetry {
        /// Device id.
        device: String,
    },
    /// `alarm`.
    Alarm,
    /// `estop`.
    Estop,
    /// `sim/<device>/fault`: the faults a simulated device is to show from now on.
    SimFault {
        /// Simulated device id.
        device: String,
    },
}

impl Topic {
    /// Which kind of topic this is (its row in the topic table).
    pub fn kind(&self) -> TopicKind {
        match self {
            Topic::State => TopicKind::State,
            Topic::SessionStatus { .. } => TopicKind::SessionStatus,
            Topic::DoseReport { .. } => TopicKind::DoseReport,
            Topic::DeviceCommand { .. } => TopicKind::DeviceCommand,
            Topic::DeviceAck { .. } => TopicKind::DeviceAck,
            Topic::DeviceTelemetry { .. } => TopicKind::DeviceTelemetry,
            Topic::Alarm => TopicKind::Alarm,
            Topic::Estop => TopicKind::Estop,
            Topic::SimFault { .. } => TopicKind::SimFault,
        }
    }

    /// Whether messages on this topic are published retained (the latest value is what a late
    /// subscriber needs: presence, session status, the dose report).
    pub fn retained(&self) -> bool {
        self.kind().retained()
    }
}

/// Who publishes on a kind of topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publisher {
    /// The modalis controller (and, for `state`, the broker with the controller's last will).
    Controller,
    /// A device (or the simulator standing in for one).
    Device,
    /// Any authorised e-stop panel or client.
    Panel,
    /// An operator or a test, for the device simulator only.
    Operator,
}

/// The topic table: one row per kind of topic, with its pattern, publisher, QoS and retain
/// flag. Publishers take QoS and retain from here, and the AsyncAPI document
/// ([`super::asyncapi`]) is generated from it, so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    /// `state`.
    State,
    /// `session/{session}/status`.
    SessionStatus,
    /// `session/{session}/dose-report`.
    DoseReport,
    /// `device/{device}/command`.
    DeviceCommand,
    /// `device/{device}/ack`.
    DeviceAck,
    /// `device/{device}/telemetry`.
    DeviceTelemetry,
    /// `alarm`.
    Alarm,
    /// `estop`.
    Estop,
    /// `sim/{device}/fault`.
    SimFault,
}

impl TopicKind {
    /// Every kind, in the order of the table above.
    pub const ALL: [TopicKind; 9] = [
        TopicKind::State,
        TopicKind::SessionStatus,
        TopicKind::DoseReport,
        TopicKind::DeviceCommand,
        TopicKind::DeviceAck,
        TopicKind::DeviceTelemetry,
        TopicKind::Alarm,
        TopicKind::Estop,
        TopicKind::SimFault,
    ];

    /// The topic below `modalis/v1/{controller}/`, with its id levels as `{session}` or
    /// `{device}` (AsyncAPI's channel parameter syntax).
    pub fn pattern(self) -> &'static str {
        match self {
            TopicKind::State => "state",
            TopicKind::SessionStatus => "session/{session}/status",
            TopicKind::DoseReport => "session/{session}/dose-report",
            TopicKind::DeviceCommand => "device/{device}/command",
            TopicKind::DeviceAck => "device/{device}/ack",
            TopicKind::DeviceTelemetry => "device/{device}/telemetry",
            TopicKind::Alarm => "alarm",
            TopicKind::Estop => "estop",
            TopicKind::SimFault => "sim/{device}/fault",
        }
    }

    /// Who publishes on it.
    pub fn publisher(self) -> Publisher {
        match self {
            TopicKind::State
            | TopicKind::SessionStatus
            | TopicKind::DoseReport
            | TopicKind::DeviceCommand
            | TopicKind::Alarm => Publisher::Controller,
            TopicKind::DeviceAck | TopicKind::DeviceTelemetry => Publisher::Device,
            TopicKind::Estop => Publisher::Panel,
            TopicKind::SimFault => Publisher::Operator,
        }
    }

    /// The QoS messages are published with. Telemetry is QoS 0: a reading is superseded by
    /// the next one within a second, and staleness is watched by the governor; everything
    /// else is acted on or audited and goes at least once.
    pub fn qos(self) -> Qos {
        match self {
            TopicKind::DeviceTelemetry => Qos::AtMostOnce,
            _ => Qos::AtLeastOnce,
        }
    }

    /// Whether messages are published retained (the latest value is what a late subscriber
    /// needs: presence, session status, the dose report). Nothing that is acted on is
    /// retained: a retained command or e-stop would be replayed to every new subscriber.
    pub fn retained(self) -> bool {
        matches!(
            self,
            TopicKind::State | TopicKind::SessionStatus | TopicKind::DoseReport
        )
    }
}

/// Checks that `id` can be one topic level. The alphabet is the device profiles' id alphabet
/// plus `.`, which keeps ids readable in topics and file names alike.
pub fn check_id(what: &'static str, id: &str) -> Result<(), TopicError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TopicError::InvalidId {
            what,
            id: id.to_string(),
        })
    }
}

/// The topics of one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    controller: String,
    root: String,
}

impl Topics {
    /// The namespace of controller `controller`.
    pub fn new(controller: &str) -> Result<Topics, TopicError> {
        check_id("controller", controller)?;
        Ok(Topics {
            controller: controller.to_string(),
            root: format!("{PREFIX}/{controller}"),
        })
    }

    /// The controller id.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// `modalis/v1/<controller>`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The topic string of `topic`; fails when an id in it cannot be a topic level.
    pub fn render(&self, topic: &Topic) -> Result<String, TopicError> {
        let root = &self.root;
        Ok(match topic {
            Topic::State => format!("{root}/state"),
            Topic::Alarm => format!("{root}/alarm"),
            Topic::Estop => format!("{root}/estop"),
            Topic::SessionStatus { session } => {
                check_id("session", session)?;
                format!("{root}/session/{session}/status")
            }
            Topic::DoseReport { session } => {
                check_id("session", session)?;
                format!("{root}/session/{session}/dose-report")
            }
            Topic::DeviceCommand { device } => {
                check_id("device", device)?;
                format!("{root}/device/{device}/command")
            }
            Topic::DeviceAck { device } => {
                check_id("device", device)?;
                format!("{root}/device/{device}/ack")
            }
            Topic::DeviceTelemetry { device } => {
                check_id("device", device)?;
                format!("{root}/device/{device}/telemetry")
            }
            Topic::SimFault { device } => {
                check_id("device", device)?;
                format!("{root}/sim/{device}/fault")
            }
        })
    }

    /// `.../state`.
    pub fn state(&self) -> String {
        format!("{}/state", self.root)
    }

    /// `.../alarm`.
    pub fn alarm(&self) -> String {
        format!("{}/alarm", self.root)
    }

    /// `.../estop`.
    pub fn estop(&self) -> String {
        format!("{}/estop", self.root)
    }

    /// `.../session/<session>/status`.
    pub fn session_status(&self, session: &str) -> Result<String, TopicError> {
        self.render(&Topic::SessionStatus {
            session: session.to_string(),
        })
    }

    /// `.../session/<session>/dose-report`.
    pub fn dose_report(&self, session: &str) -> Result<String, TopicError> {
        self.render(&Topic::DoseReport {
            session: session.to_string(),
        })
    }

    /// `.../device/<device>/command`.
    pub fn device_command(&self, device: &str) -> Result<String, TopicError> {
        self.render(&Topic::DeviceCommand {
            device: device.to_string(),
        })
    }

    /// `.../device/<device>/ack`.
    pub fn device_ack(&self, device: &str) -> Result<String, TopicError> {
        self.render(&Topic::DeviceAck {
            device: device.to_string(),
        })
    }

    /// `.../device/<device>/telemetry`.
    pub fn device_telemetry(&self, device: &str) -> Result<String, TopicError> {
        self.render(&Topic::DeviceTelemetry {
            device: device.to_string(),
        })
    }

    /// `.../sim/<device>/fault`.
    pub fn sim_fault(&self, device: &str) -> Result<String, TopicError> {
        self.render(&Topic::SimFault {
            device: device.to_string(),
        })
    }

    /// The filters a controller subscribes to: every device's acks and telemetry, and the
    /// e-stop input.
    pub fn controller_filters(&self) -> Vec<String> {
        let root = &self.root;
        vec![
            format!("{root}/device/+/ack"),
            format!("{root}/device/+/telemetry"),
            format!("{root}/estop"),
        ]
    }

    /// The filters a device subscribes to: its own command topic, and the e-stop. A device
    /// stops every output on any valid e-stop message by itself, so that a panel's e-stop
    /// reaches it in one broker hop and works with the controller hung or gone; the
    /// controller's per-channel stops (audited) follow on the command topic either way.
    pub fn device_filters(&self, device: &str) -> Result<Vec<String>, TopicError> {
        Ok(vec![self.device_command(device)?, self.estop()])
    }

    /// The filter a simulated device subscribes to besides [`Topics::device_filters`]: its
    /// own fault topic. Kept apart so that what a real device subscribes to stays its command
    /// topic and the e-stop.
    pub fn sim_fault_filter(&self, device: &str) -> Result<String, TopicError> {
        self.sim_fault(device)
    }

    /// Everything of this controller, for dashboards and tests: `modalis/v1/<controller>/#`.
    pub fn all_filter(&self) -> String {
        format!("{}/#", self.root)
    }

    /// Parses a topic received on this controller's namespace. Anything else, including a
    /// known shape with an invalid id, is an error naming the topic.
    pub fn parse(&self, topic: &str) -> Result<Topic, TopicError> {
        let unknown = |reason: &str| TopicError::Unknown {
            topic: topic.to_string(),
            reason: reason.to_string(),
        };
        let rest = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| unknown(&format!("not under {}/", self.root)))?;
        let levels: Vec<&str> = rest.split('/').collect();
        let id = |what: &'static str, id: &str| -> Result<String, TopicError> {
            check_id(what, id).map_err(|e| unknown(&e.to_string()))?;
            Ok(id.to_string())
        };
        match levels.as_slice() {
            ["state"] => Ok(Topic::State),
            ["alarm"] => Ok(Topic::Alarm),
            ["estop"] => Ok(Topic::Estop),
            ["session", s, "status"] => Ok(Topic::SessionStatus {
                session: id("session", s)?,
            }),
            ["session", s, "dose-report"] => Ok(Topic::DoseReport {
                session: id("session", s)?,
            }),
            ["device", d, "command"] => Ok(Topic::DeviceCommand {
                device: id("device", d)?,
            }),
            ["device", d, "ack"] => Ok(Topic::DeviceAck {
                device: id("device", d)?,
            }),
            ["device", d, "telemetry"] => Ok(Topic::DeviceTelemetry {
                device: id("device", d)?,
            }),
            ["sim", d, "fault"] => Ok(Topic::SimFault {
                device: id("device", d)?,
            }),
            _ => Err(unknown(
                "expected state, alarm, estop, session/<id>/status|dose-report, device/<id>/command|ack|telemetry or sim/<id>/fault",
            )),
        }
    }
}

/// MQTT filter matching: `+` is one level, `#` the rest (MQTT 5.0, 4.7).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_round_trips() {
        let t = Topics::new("clinic-1").expect("valid id");
        let all = [
            Topic::State,
            Topic::Alarm,
            Topic::Estop,
            Topic::SessionStatus {
                session: "s-1".into(),
            },
            Topic::DoseReport {
                session: "s-1".into(),
            },
            Topic::DeviceCommand {
                device: "tens-2ch".into(),
            },
            Topic::DeviceAck {
                device: "tens-2ch".into(),
            },
            Topic::DeviceTelemetry {
                device: "tens-2ch".into(),
            },
            Topic::SimFault {
                device: "tens-2ch".into(),
            },
        ];
        let mut kinds = Vec::new();
        for topic in all {
            let s = t.render(&topic).expect("renders");
            assert!(s.starts_with("modalis/v1/clinic-1/"), "{s}");
            assert_eq!(t.parse(&s).expect("parses"), topic, "{s}");
            // The table's pattern is the rendered topic with its ids as placeholders.
            let pattern = format!("modalis/v1/clinic-1/{}", topic.kind().pattern())
                .replace("{session}", "s-1")
                .replace("{device}", "tens-2ch");
            assert_eq!(pattern, s, "{:?}", topic.kind());
            assert_eq!(topic.retained(), topic.kind().retained());
            kinds.push(topic.kind());
        }
        kinds.sort();
        assert_eq!(kinds, TopicKind::ALL, "one sample per kind");
        assert_eq!(
            t.device_telemetry("pads").expect("valid"),
            "modalis/v1/clinic-1/device/pads/telemetry"
        );
        assert_eq!(
            t.sim_fault("pads").expect("valid"),
            "modalis/v1/clinic-1/sim/pads/fault"
        );
        assert!(
            !Topic::SimFault {
                device: "pads".into()
            }
            .retained()
        );
    }

    #[test]
    fn the_fault_topic_is_outside_every_controller_and_device_filter() {
        let t = Topics::new("c").expect("valid id");
        let fault = t.sim_fault("pads").expect("valid");
        let mut filters = t.controller_filters();
        filters.extend(t.device_filters("pads").expect("valid"));
        for f in filters {
            assert!(!filter_matches(&f, &fault), "{f} matches {fault}");
        }
        assert!(filter_matches(&t.all_filter(), &fault));
        assert_eq!(t.sim_fault_filter("pads").expect("valid"), fault);
        assert!(t.sim_fault("a/b").is_err());
    }

    /// MQTT filter matching, enough for the filters above (`+` one level, `#` the rest).
    #[test]
    fn bad_topics_and_ids_are_named() {
        let t = Topics::new("c").expect("valid id");
        for bad in [
            "modalis/v1/other/state",
            "modalis/v1/c/stat",
            "modalis/v1/c/device/x/telemetry/extra",
            "modalis/v1/c/device//telemetry",
            "modalis/v1/c/device/+/telemetry",
            "modalis/v1/c",
            "",
        ] {
            let e = t.parse(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(Topics::new("a/b").is_err());
        assert!(Topics::new("#").is_err());
        assert!(t.device_command("x+").is_err());
        assert!(t.session_status("").is_err());
    }
}
