//! Fixtures shared by the integration tests: the example profiles and patient, step builders
//! and the one `check` helper the scenario table goes through.

/// Builders shared with the property tests and the fuzz target.
pub use modalis_governor::testing::{block, heat, optical, site, step, tens};
use modalis_governor::*;
use modalis_sdk::{Measurement, OpticalSetpoint, PlanStep, Sensation, Setpoint};

pub const LLLT: &str = include_str!("../../../../examples/profiles/lllt-808.toml");
pub const CLASS4: &str = include_str!("../../../../examples/profiles/class4-15w.toml");
pub const MIRE: &str = include_str!("../../../../examples/profiles/mire-pads.toml");
pub const TENS: &str = include_str!("../../../../examples/profiles/tens-2ch.toml");
pub const ACU: &str = include_str!("../../../../examples/profiles/laser-acupuncture-probe.toml");
pub const DPN: &str = include_str!("../../../../examples/patients/dpn-example.toml");

/// Device ids of the example profiles.
pub const LLLT_ID: &str = "lllt-808";
pub const CLASS4_ID: &str = "class4-15w";
pub const MIRE_ID: &str = "mire-pads";
pub const TENS_ID: &str = "tens-2ch";
pub const ACU_ID: &str = "laser-acu-3b";

pub fn profile(text: &str, name: &str) -> DeviceProfile {
    match DeviceProfile::from_toml_str(text, name) {
        Ok(p) => p,
        Err(e) => panic!("example profile {name} does not load: {e}"),
    }
}

pub fn profiles() -> Vec<DeviceProfile> {
    vec![
        profile(LLLT, "lllt-808.toml"),
        profile(CLASS4, "class4-15w.toml"),
        profile(MIRE, "mire-pads.toml"),
        profile(TENS, "tens-2ch.toml"),
        profile(ACU, "laser-acupuncture-probe.toml"),
    ]
}

pub fn dpn_patient() -> PatientContext {
    match PatientContext::from_toml_str(DPN, "dpn-example.toml") {
        Ok(p) => p,
        Err(e) => panic!("example patient does not load: {e}"),
    }
}

/// A patient with normal sensation everywhere and nothing else recorded.
pub fn normal_patient() -> PatientContext {
    PatientContext::new("NORMAL", Some(Sensation::Normal))
}

pub fn governor(patient: PatientContext) -> Governor {
    match Governor::new(profiles(), patient) {
        Ok(g) => g,
        Err(e) => panic!("governor: {e}"),
    }
}

pub fn scanned(
    wavelength_nm: f64,
    power_mw: f64,
    beam_area_cm2: f64,
    scan_area_cm2: f64,
) -> Setpoint {
    Setpoint::Optical(OpticalSetpoint {
        wavelength_nm,
        power_mw,
        beam_area_cm2,
        pulse_frequency_hz: 0.0,
        duty_cycle: 1.0,
        scan_area_cm2: Some(scan_area_cm2),
    })
}

/// A TENS ramp from 2 mA up to `amp` in 5 s steps (0.4-2 mA/s), then a hold.
pub fn tens_ramp(channel: &str, at: &str, amp: f64, hold_s: f64) -> Vec<PlanStep> {
    let mut steps = Vec::new();
    let mut a = 2.0_f64;
    let mut t = 0.0;
    while a < amp {
        steps.push(step(t, 5.0, channel, at, tens(a, 250.0, 14.0)));
        t += 5.0;
        a = (a + 5.0).min(amp);
    }
    steps.push(step(t, hold_s, channel, at, tens(amp, 250.0, 14.0)));
    steps
}

/// Whether the step's findings include `rule` with at least `verdict`.
pub fn has(v: &StepVerdict, rule: &str, verdict: Verdict) -> bool {
    v.findings
        .iter()
        .any(|f| f.rule == rule && f.verdict == verdict)
}

/// Something that happens at runtime, in a scenario.
#[derive(Debug, Clone)]
pub enum Event {
    /// Admit the approved setpoint of flattened step `n` (or this setpoint instead) at `now`.
    Admit {
        step: usize,
        now_s: f64,
        setpoint: Option<Setpoint>,
    },
    /// A telemetry sample measured at `at_s`, observed at `now_s`.
    Telemetry {
        device: &'static str,
        channel: &'static str,
        at_s: f64,
        now_s: f64,
        m: Measurement,
    },
    /// Watchdog tick.
    Tick { now_s: f64 },
    /// Lease renewal.
    Renew { now_s: f64 },
    /// Interlock input.
    Interlock {
        device: &'static str,
        input: Interlock,
        on: bool,
        now_s: f64,
    },
    /// Eyewear confirmation.
    Eyewear { on: bool, now_s: f64 },
    /// E-stop.
    Estop { now_s: f64 },
    /// Make a laser device ready: key, door, indicator and eyewear, at `now_s`.
    Ready { device: &'static str, now_s: f64 },
}

/// What a scenario expects.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Flattened step `n` gets this verdict, with a finding of this rule at that verdict.
    Step(usize, Verdict, &'static str),
    /// Flattened step `n` gets exactly this verdict (no rule named).
    Verdict(usize, Verdict),
    /// The protocol can (or cannot) be armed.
    Armable(bool),
    /// Admission number `k` (0-based among Admit events) was admitted or not, by this rule.
    Admission(usize, bool, &'static str),
    /// At the end this channel is (or is not) energised.
    Energised(&'static str, &'static str, bool),
    /// Some action carried this rule.
    Action(&'static str),
    /// No action carried this rule.
    NoAction(&'static str),
    /// Some alarm had this priority and rule.
    Alarm(AlarmPriority, &'static str),
    /// Every source is off at the end.
    AllOff,
}

pub struct Scenario {
    pub name: &'static str,
    pub patient: PatientContext,
    pub blocks: Vec<Block>,
    pub events: Vec<Event>,
    pub expect: Vec<Expect>,
}

fn ms(s: f64) -> u64 {
    (s * 1000.0) as u64
}

/// Runs a scenario: pre-check, then (when there are events) arm at t = 0 and play them.
pub fn check(sc: &Scenario) {
    let name = sc.name;
    let gov = governor(sc.patient.clone());
    let pre = gov.precheck(&sc.blocks);
    let dump = || {
        format!(
            "{name}: report\n{}\nsteps: {:#?}",
            pre.report,
            pre.steps
                .iter()
                .map(|s| (&s.step, s.verdict, &s.findings))
                .collect::<Vec<_>>()
        )
    };
    let mut decisions: Vec<Decision> = Vec::new();
    let mut actions: Vec<Action> = Vec::new();
    let mut sup = None;
    if !sc.events.is_empty() {
        let s = match gov.arm(&pre, 0) {
            Ok(s) => s,
            Err(e) => panic!("{name}: cannot arm: {e}\n{}", dump()),
        };
        sup = Some(s);
    }
    if let Some(sup) = sup.as_mut() {
        for ev in &sc.events {
            match ev.clone() {
                Event::Admit {
                    step,
                    now_s,
                    setpoint,
                } => {
                    let Some(sv) = pre.steps.get(step) else {
                        panic!("{name}: no step {step}")
                    };
                    let sp = setpoint
                        .or(sv.approved.map(|a| a.setpoint))
                        .unwrap_or(Setpoint::Off);
                    let cmd = Command {
                        device_id: sv.device_id.clone(),
                        channel: sv.channel.clone(),
                        site: sv.site.clone(),
                        setpoint: sp,
                        step: sv.step.clone(),
                    };
                    decisions.push(sup.admit(&cmd, ms(now_s)));
                }
                Event::Telemetry {
                    device,
                    channel,
                    at_s,
                    now_s,
                    m,
                } => {
                    let t = Telemetry {
                        device_id: device.into(),
                        channel: channel.into(),
                        measured_at_ms: ms(at_s),
                        measurement: m,
                    };
                    actions.extend(sup.observe(&t, ms(now_s)));
                }
                Event::Tick { now_s } => actions.extend(sup.tick(ms(now_s))),
                Event::Renew { now_s } => actions.extend(sup.renew_leases(ms(now_s))),
                Event::Interlock {
                    device,
                    input,
                    on,
                    now_s,
                } => actions.extend(sup.interlock(device, input, on, ms(now_s))),
                Event::Eyewear { on, now_s } => actions.extend(sup.confirm_eyewear(on, ms(now_s))),
                Event::Estop { now_s } => {
                    actions.extend(sup.estop("operator pressed e-stop", ms(now_s)))
                }
                Event::Ready { device, now_s } => {
                    for input in [
                        Interlock::KeySwitch,
                        Interlock::DoorClosed,
                        Interlock::EmissionIndicator,
                    ] {
                        actions.extend(sup.interlock(device, input, true, ms(now_s)));
                    }
                    actions.extend(sup.confirm_eyewear(true, ms(now_s)));
                }
            }
        }
    }
    for e in &sc.expect {
        match e {
            Expect::Step(n, verdict, rule) => {
                let Some(s) = pre.steps.get(*n) else {
                    panic!("{name}: no step {n}")
                };
                assert_eq!(s.verdict, *verdict, "{name}: step {n} verdict\n{}", dump());
                assert!(
                    has(s, rule, *verdict),
                    "{name}: step {n} has no {verdict} finding by {rule}\n{}",
                    dump()
                );
            }
            Expect::Verdict(n, verdict) => {
                let Some(s) = pre.steps.get(*n) else {
                    panic!("{name}: no step {n}")
                };
                assert_eq!(s.verdict, *verdict, "{name}: step {n} verdict\n{}", dump());
            }
            Expect::Armable(a) => assert_eq!(pre.can_arm(), *a, "{name}: armable\n{}", dump()),
            Expect::Admission(k, admitted, rule) => {
                let Some(d) = decisions.get(*k) else {
                    panic!("{name}: no admission {k}")
                };
                assert_eq!(d.admitted(), *admitted, "{name}: admission {k}: {d:?}");
                assert_eq!(d.rule, *rule, "{name}: admission {k}: {d:?}");
            }
            Expect::Energised(dev, ch, on) => {
                let Some(s) = sup.as_ref() else {
                    panic!("{name}: not armed")
                };
                assert_eq!(
                    s.is_energised(dev, ch),
                    *on,
                    "{name}: {dev}/{ch} energised; actions {actions:#?}"
                );
            }
            Expect::Action(rule) => {
                let found = actions.iter().any(|a| match a {
                    Action::Stop { rule: r, .. } | Action::Reduce { rule: r, .. } => r == rule,
                    Action::Alarm(al) => al.rule == *rule,
                    Action::RenewLease { .. } => *rule == "run.renew",
                });
                assert!(found, "{name}: no action by {rule}: {actions:#?}");
            }
            Expect::NoAction(rule) => {
                let found = actions.iter().any(|a| match a {
                    Action::Stop { rule: r, .. } | Action::Reduce { rule: r, .. } => r == rule,
                    Action::Alarm(al) => al.rule == *rule,
                    Action::RenewLease { .. } => *rule == "run.renew",
                });
                assert!(!found, "{name}: an action by {rule}: {actions:#?}");
            }
            Expect::Alarm(p, rule) => {
                let found = actions.iter().any(
                    |a| matches!(a, Action::Alarm(al) if al.priority == *p && al.rule == *rule),
                );
                assert!(found, "{name}: no {p:?} alarm by {rule}: {actions:#?}");
            }
            Expect::AllOff => {
                let Some(s) = sup.as_ref() else {
                    panic!("{name}: not armed")
                };
                assert!(
                    !s.any_energised(),
                    "{name}: still energised: {:?}",
                    s.energised()
                );
            }
        }
    }
}
