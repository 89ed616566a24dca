//! The contract's data types, shared by the host and every plugin.
//!
//! These mirror `wit/plugin.wit` one for one. Plugins build them; the guest glue converts them
//! to the WIT records; the host converts the WIT records back into these same types. Because
//! both sides compile this one crate, they cannot drift apart. Every physical quantity carries
//! its unit in its field name.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sites::BodySite;

/// The version of the WIT package `modalis:plugin` this SDK speaks.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// The family of therapy a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModalityKind {
    /// Low-level laser / LED photobiomodulation (Class 3B and below).
    Photobiomodulation,
    /// Lasers above 0.5 W (IEC 60825-1 Class 4).
    #[serde(rename = "class-4-laser")]
    Class4Laser,
    /// Infrared heat: MIRE pads and infrared lamps.
    InfraredHeat,
    /// Transcutaneous electrical nerve stimulation.
    Tens,
    /// Laser stimulation of acupuncture points.
    LaserAcupuncture,
    /// Anything else.
    Other,
}

impl ModalityKind {
    /// Every kind, in the order of the WIT enum.
    pub const ALL: [ModalityKind; 6] = [
        ModalityKind::Photobiomodulation,
        ModalityKind::Class4Laser,
        ModalityKind::InfraredHeat,
        ModalityKind::Tens,
        ModalityKind::LaserAcupuncture,
        ModalityKind::Other,
    ];

    /// The kebab-case name used in manifests, profiles and protocol files.
    pub fn as_str(self) -> &'static str {
        match self {
            ModalityKind::Photobiomodulation => "photobiomodulation",
            ModalityKind::Class4Laser => "class-4-laser",
            ModalityKind::InfraredHeat => "infrared-heat",
            ModalityKind::Tens => "tens",
            ModalityKind::LaserAcupuncture => "laser-acupuncture",
            ModalityKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ModalityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device channel emits. Each kind has its own setpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// Light: lasers, LEDs, MIRE pads' diodes.
    Optical,
    /// Contact or radiant heat with a temperature target.
    Heat,
    /// Electrical stimulation.
    Electrical,
}

impl ChannelKind {
    /// The setpoint fields (with units in their names) that a channel of this kind takes.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            ChannelKind::Optical => &[
                "wavelength_nm",
                "power_mw",
                "beam_area_cm2",
                "pulse_frequency_hz",
                "duty_cycle",
                "scan_area_cm2",
            ],
            ChannelKind::Heat => &["target_temp_c", "power_limit_w"],
            ChannelKind::Electrical => &[
                "frequency_hz",
                "pulse_width_us",
                "amplitude_ma",
                "electrode_area_cm2",
                "burst_rate_hz",
            ],
        }
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Optical => "optical",
            ChannelKind::Heat => "heat",
            ChannelKind::Electrical => "electrical",
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device channel the plugin drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChannelInfo {
    /// Channel name, unique within the plugin (e.g. `probe`, `pad-left`).
    pub name: String,
    /// What the channel emits.
    pub kind: ChannelKind,
    /// One line for the operator.
    pub description: String,
    /// The setpoint fields this channel takes, with units in their names.
    pub units: Vec<String>,
}

impl ChannelInfo {
    /// A channel whose `units` are filled in from its kind.
    pub fn new(name: impl Into<String>, kind: ChannelKind, description: impl Into<String>) -> Self {
        ChannelInfo {
            name: name.into(),
            kind,
            description: description.into(),
            units: kind.units().iter().map(|u| (*u).to_string()).collect(),
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Manifest {
    /// Stable identifier, lower-case kebab (e.g. `tens`, `acme-lllt`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// Who wrote it.
    pub vendor: String,
    /// The modality family.
    pub modality: ModalityKind,
    /// JSON Schema (draft 2020-12) of the parameters, as a JSON document.
    pub params_schema: String,
    /// Channels the plugin drives.
    pub channels: Vec<ChannelInfo>,
    /// Sample parameters (JSON) that the conformance check plans with.
    pub sample_params: String,
}

impl Manifest {
    /// The channel of that name, if the plugin declares it.
    pub fn channel(&self, name: &str) -> Option<&ChannelInfo> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// One problem with the parameters, located by a JSON pointer (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// JSON pointer to the offending value, e.g. `/sites/2` or `/dose_j_per_point`; empty for
    /// the document as a whole.
    pub pointer: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FieldError {
    /// A field error at `pointer`.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() {
            "(document)"
        } else {
            self.pointer.as_str()
        };
        write!(f, "{at}: {}", self.message)
    }
}

/// How well the patient feels at a site.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Sensation {
    /// Normal protective sensation.
    Normal,
    /// Reduced sensation: limits are derated.
    Reduced,
    /// No protective sensation: the patient cannot feel a burn.
    Absent,
}

/// Sensation at one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteSensation {
    /// The site.
    pub site: BodySite,
    /// Sensation there.
    pub sensation: Sensation,
}

/// What a plugin may know of the patient: enough to shape a plan. The governor applies the real
/// contraindications and limits from its own, trusted copy of the patient context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Patient {
    /// Sensation per site; sites not listed are assumed normal by plugins (the governor
    /// assumes nothing).
    #[serde(default)]
    pub sensation: Vec<SiteSensation>,
    /// Contraindication and precaution flags, e.g. `pregnancy`, `epilepsy`.
    #[serde(default)]
    pub conditions: Vec<String>,
}

impl Patient {
    /// The recorded sensation at `site` (matching by region when an acupoint lies in a listed
    /// region), or `Normal` when nothing is recorded.
    pub fn sensation_at(&self, site: &BodySite) -> Sensation {
        self.sensation
            .iter()
            .filter(|s| s.site.overlaps(site))
            .map(|s| s.sensation)
            .max()
            .unwrap_or(Sensation::Normal)
    }
}

/// Light output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpticalSetpoint {
    /// Wavelength.
    pub wavelength_nm: f64,
    /// Average output power at the aperture.
    pub power_mw: f64,
    /// Beam (spot) area on the skin.
    pub beam_area_cm2: f64,
    /// Pulse repetition rate; 0 for continuous wave.
    pub pulse_frequency_hz: f64,
    /// Fraction of time on, in (0, 1]; 1 for continuous wave.
    pub duty_cycle: f64,
    /// Area the beam is scanned over; `None` when the beam is held still on one spot.
    pub scan_area_cm2: Option<f64>,
}

/// Heat output with a temperature target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HeatSetpoint {
    /// Skin temperature to hold.
    pub target_temp_c: f64,
    /// Electrical/radiant power the emitter may use at most.
    pub power_limit_w: f64,
}

/// Shape of one stimulation pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Waveform {
    /// Two equal opposite phases: zero net charge.
    SymmetricBiphasic,
    /// Unequal phases with balanced charge.
    AsymmetricBiphasic,
    /// One phase only: net d.c., not charge balanced.
    Monophasic,
}

/// Electrical stimulation output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ElectricalSetpoint {
    /// Pulse rate (the rate within a burst when burst-modulated).
    pub frequency_hz: f64,
    /// Width of one phase.
    pub pulse_width_us: f64,
    /// Peak amplitude of one phase.
    pub amplitude_ma: f64,
    /// Pulse shape.
    pub waveform: Waveform,
    /// Area of the smaller electrode of the pair.
    pub electrode_area_cm2: f64,
    /// Pulses per burst; 0 for a continuous train.
    pub burst_pulses: u32,
    /// Burst repetition rate; 0 for a continuous train.
    pub burst_rate_hz: f64,
}

impl ElectricalSetpoint {
    /// Pulses per second actually delivered, accounting for burst modulation.
    pub fn effective_pulse_rate_hz(&self) -> f64 {
        if self.burst_pulses > 0 && self.burst_rate_hz > 0.0 {
            f64::from(self.burst_pulses) * self.burst_rate_hz
        } else {
            self.frequency_hz
        }
    }
}

/// What a channel is told to do during a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Setpoint {
    /// Emit light.
    Optical(OpticalSetpoint),
    /// Heat to a target.
    Heat(HeatSetpoint),
    /// Stimulate.
    Electrical(ElectricalSetpoint),
    /// No output.
    Off,
}

impl Setpoint {
    /// The channel kind this setpoint is for, or `None` for `Off` (valid on any channel).
    pub fn channel_kind(&self) -> Option<ChannelKind> {
        match self {
            Setpoint::Optical(_) => Some(ChannelKind::Optical),
            Setpoint::Heat(_) => Some(ChannelKind::Heat),
            Setpoint::Electrical(_) => Some(ChannelKind::Electrical),
            Setpoint::Off => None,
        }
    }

    /// Whether this setpoint delivers energy.
    pub fn is_energy(&self) -> bool {
        !matches!(self, Setpoint::Off)
    }

    /// Every number in the setpoint, named, for finiteness and sign checks.
    pub fn numbers(&self) -> Vec<(&'static str, f64)> {
        match self {
            Setpoint::Optical(o) => {
                let mut v = vec![
                    ("wavelength_nm", o.wavelength_nm),
                    ("power_mw", o.power_mw),
                    ("beam_area_cm2", o.beam_area_cm2),
                    ("pulse_frequency_hz", o.pulse_frequency_hz),
                    ("duty_cycle", o.duty_cycle),
                ];
                if let Some(a) = o.scan_area_cm2 {
                    v.push(("scan_area_cm2", a));
                }
                v
            }
            Setpoint::Heat(h) => vec![
                ("target_temp_c", h.target_temp_c),
                ("power_limit_w", h.power_limit_w),
            ],
            Setpoint::Electrical(e) => vec![
                ("frequency_hz", e.frequency_hz),
                ("pulse_width_us", e.pulse_width_us),
                ("amplitude_ma", e.amplitude_ma),
                ("electrode_area_cm2", e.electrode_area_cm2),
                ("burst_rate_hz", e.burst_rate_hz),
            ],
            Setpoint::Off => vec![],
        }
    }
}

/// One timed instruction for one device channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStep {
    /// Start, from the start of the plan.
    pub offset_ms: u64,
    /// How long the setpoint holds.
    pub duration_ms: u64,
    /// Which of the plugin's channels.
    pub channel: String,
    /// Where on the body.
    pub site: BodySite,
    /// What the channel does.
    pub setpoint: Setpoint,
    /// What the operator sees for this step.
    pub label: String,
}

impl PlanStep {
    /// The end of the step, from the start of the plan (saturating).
    pub fn end_ms(&self) -> u64 {
        self.offset_ms.saturating_add(self.duration_ms)
    }
}

/// A plugin's proposal: timed steps plus notes for the dose report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionPlan {
    /// The steps, in any order (the host sorts by offset).
    pub steps: Vec<PlanStep>,
    /// Notes and dose warnings for the clinician.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl SessionPlan {
    /// The end of the last step.
    pub fn duration_ms(&self) -> u64 {
        self.steps.iter().map(PlanStep::end_ms).max().unwrap_or(0)
    }
}

/// Why a plugin could not plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanError {
    /// What went wrong.
    pub message: String,
    /// Parameter problems, if that is what it was.
    #[serde(default)]
    pub field_errors: Vec<FieldError>,
}

impl PlanError {
    /// A plan error with a message and no field errors.
    pub fn new(message: impl Into<String>) -> Self {
        PlanError {
            message: message.into(),
            field_errors: Vec::new(),
        }
    }

    /// A plan error from parameter problems.
    pub fn from_fields(field_errors: Vec<FieldError>) -> Self {
        PlanError {
            message: "invalid parameters".to_string(),
            field_errors,
        }
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for e in &self.field_errors {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

/// One reading from a device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Measurement {
    /// Skin (contact) temperature.
    SkinTempC(f64),
    /// Measured optical output power.
    OpticalPowerMw(f64),
    /// Electrode-skin impedance.
    ImpedanceOhm(f64),
}

/// A telemetry sample as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TelemetrySample {
    /// The plugin channel the sample is from.
    pub channel: String,
    /// Time since the plan started.
    pub elapsed_ms: u64,
    /// The reading.
    pub measurement: Measurement,
}

/// A closed-loop change to the step running on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Adjustment {
    /// The channel.
    pub channel: String,
    /// The new setpoint; the governor admits it only inside the approved step's envelope.
    pub setpoint: Setpoint,
}
