//! Hostile test plugin: plans one ordinary heat step on a pad, then misbehaves in its closed
//! loop (`on-telemetry`) once the step has run for a while.
//!
//! It plans and checks like a well-behaved plugin, so a controller accepts it and starts the
//! session; the host's tests then check what a fault in the middle of a session does: the
//! block stops safely, the other blocks and sessions go on, and the controller stays up.
//!
//! `on-telemetry` receives only the step and the sample, so the plan writes the fault into
//! the step's label (`... [fault=trap after=60000]`), where the closed loop reads it back.

use modalis_sdk::prelude::*;

/// What the closed loop does once the step has run `after_s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Nothing: the loop holds the setpoint.
    #[default]
    None,
    /// A wasm trap (`unreachable`, as a Rust panic compiles to).
    Trap,
    /// An endless loop.
    Hang,
    /// Asks for far more memory than the sandbox allows.
    Oom,
    /// Asks for twice the step's power limit: outside its approved envelope.
    Exceed,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Trap => "trap",
            Fault::Hang => "hang",
            Fault::Oom => "oom",
            Fault::Exceed => "exceed",
        }
    }

    fn parse(s: &str) -> Fault {
        match s {
            "trap" => Fault::Trap,
            "hang" => Fault::Hang,
            "oom" => Fault::Oom,
            "exceed" => Fault::Exceed,
            _ => Fault::None,
        }
    }
}

/// Parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The pad channel (`pad-1` to `pad-4`).
    pub channel: String,
    /// Where the pad lies.
    pub site: BodySite,
    /// Minutes of heat.
    #[schemars(range(min = 1, max = 60))]
    pub minutes: u32,
    /// Skin temperature to hold.
    #[schemars(range(min = 34.0, max = 40.0))]
    pub target_temp_c: f64,
    /// Pad power limit.
    #[schemars(range(min = 0.5, max = 6.0))]
    pub power_limit_w: f64,
    /// What goes wrong in the closed loop.
    #[serde(default)]
    pub fault: Fault,
    /// After how many seconds of the step (session time).
    #[serde(default)]
    pub after_s: u32,
}

/// The plugin.
#[derive(Debug)]
pub struct FaultyHeat;

impl ModalityPlugin for FaultyHeat {
    type Params = Params;

    fn info() -> PluginInfo {
        PluginInfo {
            id: "hostile-faulty-heat",
            name: "hostile test plugin: heat with a failing closed loop",
            version: "0.0.1",
            vendor: "modalis tests",
            modality: ModalityKind::InfraredHeat,
            channels: ["pad-1", "pad-2", "pad-3", "pad-4"]
                .into_iter()
                .map(|c| ChannelInfo::new(c, ChannelKind::Heat, "heating pad"))
                .collect(),
        }
    }

    fn sample_params() -> Params {
        Params {
            channel: "pad-1".into(),
            site: BodySite::region(BodyRegion::FootDorsum, Side::Left),
            minutes: 10,
            target_temp_c: 38.0,
            power_limit_w: 4.0,
            fault: Fault::None,
            after_s: 0,
        }
    }

    fn plan(p: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        let steps = vec![PlanStep {
            offset_ms: 0,
            duration_ms: u64::from(p.minutes) * 60_000,
            channel: p.channel.clone(),
            site: p.site.clone(),
            setpoint: Setpoint::Heat(HeatSetpoint {
                target_temp_c: p.target_temp_c,
                power_limit_w: p.power_limit_w,
            }),
            label: format!(
                "hold {} C [fault={} after={}]",
                p.target_temp_c,
                p.fault.name(),
                u64::from(p.after_s) * 1000
            ),
        }];
        Ok(SessionPlan {
            steps,
            notes: vec![format!("closed-loop fault: {}", p.fault.name())],
        })
    }

    fn on_telemetry(step: &PlanStep, sample: &TelemetrySample) -> Vec<Adjustment> {
        let Setpoint::Heat(h) = step.setpoint else {
            return Vec::new();
        };
        let (fault, after_ms) = read_label(&step.label);
        let since_step = sample.elapsed_ms.saturating_sub(step.offset_ms);
        let fault = if since_step >= after_ms {
            fault
        } else {
            Fault::None
        };
        let power_limit_w = match fault {
            Fault::None => h.power_limit_w * 0.9,
            Fault::Exceed => h.power_limit_w * 2.0,
            Fault::Trap => panic!("deliberate trap in on-telemetry"),
            Fault::Hang => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Fault::Oom => {
                // One allocation far over the 64 MiB cap: the host refuses to grow memory.
                let hoard = vec![1u8; 512 << 20];
                std::hint::black_box(&hoard);
                h.power_limit_w
            }
        };
        vec![Adjustment {
            channel: step.channel.clone(),
            setpoint: Setpoint::Heat(HeatSetpoint {
                target_temp_c: h.target_temp_c,
                power_limit_w,
            }),
        }]
    }
}

/// Reads `[fault=NAME after=MS]` back from a step label.
fn read_label(label: &str) -> (Fault, u64) {
    let inner = label
        .rsplit_once('[')
        .and_then(|(_, r)| r.strip_suffix(']'))
        .unwrap_or("");
    let mut fault = Fault::None;
    let mut after = 0;
    for part in inner.split_whitespace() {
        if let Some(v) = part.strip_prefix("fault=") {
            fault = Fault::parse(v);
        } else if let Some(v) = part.strip_prefix("after=") {
            after = v.parse().unwrap_or(0);
        }
    }
    (fault, after)
}

export_plugin!(FaultyHeat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_carries_the_fault() {
        let p = Params {
            fault: Fault::Hang,
            after_s: 90,
            ..FaultyHeat::sample_params()
        };
        let plan = FaultyHeat::plan(&p, &Patient::default()).expect("plans");
        assert_eq!(read_label(&plan.steps[0].label), (Fault::Hang, 90_000));
    }
}
