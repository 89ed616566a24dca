//! The session state machine: which operator and system events may happen in which state.
//!
//! 21 CFR 11.10(f) asks systems to enforce the permitted sequencing of steps. Every session
//! goes loaded → planned → checked → armed → running ⇄ paused → completed | aborted |
//! e-stopped, and this module is the single place that says which event is legal where. It is
//! pure: the controller task owns the states and feeds them events; an illegal event is
//! refused with a reason that names the state and the event, and the state is unchanged.

use std::fmt;

/// Where a session is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// The protocol is loaded and its parameters validated.
    Loaded,
    /// Every block has a plan from its plugin.
    Planned,
    /// The governor's pre-check ran; the dose report is ready for the clinic to read.
    Checked,
    /// An operator confirmed the dose report and the interlocks are satisfied.
    Armed,
    /// Steps are being emitted.
    Running,
    /// Output is stopped; the schedule is held until an operator resumes.
    Paused,
    /// Every step ran to its end.
    Completed,
    /// Stopped for good by an operator or by the system (a refused pre-check, a lost broker
    /// under an abort policy, a quarantined plugin).
    Aborted,
    /// Stopped by an emergency stop. Latched: a new session is needed after the reset.
    EStopped,
}

impl SessionState {
    /// Whether the session can never change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SessionState::Completed | SessionState::Aborted | SessionState::EStopped
        )
    }

    /// Whether devices may deliver energy in this state.
    pub fn may_deliver(self) -> bool {
        self == SessionState::Running
    }

    /// The kebab-case name used in status messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Loaded => "loaded",
            SessionState::Planned => "planned",
            SessionState::Checked => "checked",
            SessionState::Armed => "armed",
            SessionState::Running => "running",
            SessionState::Paused => "paused",
            SessionState::Completed => "completed",
            SessionState::Aborted => "aborted",
            SessionState::EStopped => "e-stopped",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can happen to a session: a closed set, so every case is visible in one
/// `match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Every block's plugin returned a plan.
    Planned,
    /// The governor's pre-check finished; `armable` is its verdict.
    Checked {
        /// Whether the pre-check allows arming (no refusals).
        armable: bool,
    },
    /// An operator arms the session after reading the dose report.
    Arm {
        /// Who.
        operator: String,
    },
    /// The operator starts the armed session.
    Start {
        /// Who.
        operator: String,
    },
    /// An operator (or the system, e.g. on a lost broker) pauses.
    Pause {
        /// Why.
        reason: String,
    },
    /// An operator resumes a paused session. Never automatic.
    Resume {
        /// Who.
        operator: String,
    },
    /// The last step ended.
    Finished,
    /// An operator or the system aborts.
    Abort {
        /// Why.
        reason: String,
    },
    /// An emergency stop.
    EStop {
        /// Where it came from (panel, operator, controller).
        source: String,
    },
}

impl SessionEvent {
    /// Short name for messages and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::Planned => "planned",
            SessionEvent::Checked { .. } => "checked",
            SessionEvent::Arm { .. } => "arm",
            SessionEvent::Start { .. } => "start",
            SessionEvent::Pause { .. } => "pause",
            SessionEvent::Resume { .. } => "resume",
            SessionEvent::Finished => "finished",
            SessionEvent::Abort { .. } => "abort",
            SessionEvent::EStop { .. } => "e-stop",
        }
    }
}

/// An event refused in a state, with the reason an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a session that is {state}: {reason}")]
pub struct Refused {
    /// The state the session stays in.
    pub state: SessionState,
    /// The refused event's name.
    pub event: &'static str,
    /// Why, and what would be allowed instead.
    pub reason: &'static str,
}

/// The state after `event` in `state`, or why the event is refused there.
pub fn next(state: SessionState, event: &SessionEvent) -> Result<SessionState, Refused> {
    use SessionEvent as E;
    use SessionState as S;
    let refuse = |reason| {
        Err(Refused {
            state,
            event: event.name(),
            reason,
        })
    };
    if state.is_final() {
        return refuse("the session has ended; load the protocol again for a new session");
    }
    match (state, event) {
        // Emergency stop and abort are accepted from every live state: stopping is always
        // allowed.
        (_, E::EStop { .. }) => Ok(S::EStopped),
        (_, E::Abort { .. }) => Ok(S::Aborted),
        (S::Loaded, E::Planned) => Ok(S::Planned),
        (S::Planned, E::Checked { armable: true }) => Ok(S::Checked),
        (S::Planned, E::Checked { armable: false }) => Ok(S::Aborted),
        (S::Checked, E::Arm { .. }) => Ok(S::Armed),
        (S::Armed, E::Start { .. }) => Ok(S::Running),
        (S::Running, E::Pause { .. }) => Ok(S::Paused),
        (S::Paused, E::Resume { .. }) => Ok(S::Running),
        (S::Running, E::Finished) => Ok(S::Completed),
        (S::Loaded, _) => refuse("plan the session first"),
        (S::Planned, _) => refuse("run the governor's pre-check first"),
        (S::Checked, E::Start { .. }) => {
            refuse("an operator must arm the session after reading the dose report")
        }
        (S::Checked, _) => refuse("the session must be armed by an operator"),
        (S::Armed, _) => refuse("an armed session can only be started, aborted or e-stopped"),
        (S::Running, E::Resume { .. }) => refuse("the session is already running"),
        (S::Running, _) => {
            refuse("a running session can only be paused, finish, be aborted or e-stopped")
        }
        (S::Paused, E::Finished) => refuse("a paused session cannot finish; resume or abort it"),
        (S::Paused, _) => {
            refuse("a paused session can only be resumed by an operator, aborted or e-stopped")
        }
        (S::Completed | S::Aborted | S::EStopped, _) => refuse("the session has ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionEvent as E;
    use SessionState as S;

    fn events() -> Vec<SessionEvent> {
        vec![
            E::Planned,
            E::Checked { armable: true },
            E::Checked { armable: false },
            E::Arm {
                operator: "op".into(),
            },
            E::Start {
                operator: "op".into(),
            },
            E::Pause { reason: "r".into() },
            E::Resume {
                operator: "op".into(),
            },
            E::Finished,
            E::Abort { reason: "r".into() },
            E::EStop {
                source: "panel".into(),
            },
        ]
    }

    const STATES: [SessionState; 9] = [
        S::Loaded,
        S::Planned,
        S::Checked,
        S::Armed,
        S::Running,
        S::Paused,
        S::Completed,
        S::Aborted,
        S::EStopped,
    ];

    /// The complete transition table: every state × every event, the expected outcome.
    #[test]
    fn every_state_and_event() {
        let allowed: &[(SessionState, &str, SessionState)] = &[
            (S::Loaded, "planned", S::Planned),
            (S::Planned, "checked+", S::Checked),
            (S::Planned, "checked-", S::Aborted),
            (S::Checked, "arm", S::Armed),
            (S::Armed, "start", S::Running),
            (S::Running, "pause", S::Paused),
            (S::Paused, "resume", S::Running),
            (S::Running, "finished", S::Completed),
        ];
        for state in STATES {
            for ev in events() {
                let key = match &ev {
                    E::Checked { armable: true } => "checked+",
                    E::Checked { armable: false } => "checked-",
                    other => other.name(),
                };
                let got = next(state, &ev);
                let expected = if state.is_final() {
                    None
                } else if key == "e-stop" {
                    Some(S::EStopped)
                } else if key == "abort" {
                    Some(S::Aborted)
                } else {
                    allowed
                        .iter()
                        .find(|(s, k, _)| *s == state && *k == key)
                        .map(|(_, _, t)| *t)
                };
                match (expected, got) {
                    (Some(t), Ok(g)) => assert_eq!(g, t, "{state} --{key}-->"),
                    (None, Err(r)) => {
                        assert_eq!(r.state, state);
                        assert!(
                            r.to_string().starts_with(&format!(
                                "cannot {} a session that is {state}",
                                ev.name()
                            )),
                            "{r}"
                        );
                    }
                    (e, g) => panic!("{state} --{key}--> expected {e:?}, got {g:?}"),
                }
            }
        }
    }

    #[test]
    fn resuming_is_never_automatic_and_arming_needs_the_check() {
        let r = next(
            S::Checked,
            &E::Start {
                operator: "op".into(),
            },
        )
        .expect_err("refused");
        assert!(r.reason.contains("must arm"), "{r}");
        let r = next(
            S::Planned,
            &E::Arm {
                operator: "op".into(),
            },
        )
        .expect_err("refused");
        assert!(r.reason.contains("pre-check"), "{r}");
    }

    #[test]
    fn only_running_delivers_energy() {
        for s in STATES {
            assert_eq!(s.may_deliver(), s == S::Running, "{s}");
        }
    }
}
