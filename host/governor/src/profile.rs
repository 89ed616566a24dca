//! Device profiles: what each device can do and which safety hardware it has, written by the
//! clinic in TOML and trusted once validated.
//!
//! ```toml
//! id = "acme-lllt-808"
//! name = "Acme 808 nm LLLT probe"
//! modality = "photobiomodulation"
//!
//! [limits]                        # optional clinic overrides, stricter only
//! lllt_irradiance_max_mw_per_cm2 = 80.0
//!
//! [combined]                      # optional: may stack with other sources on one site
//! allow = true
//! thermal_budget_mw_per_cm2 = 120.0
//!
//! [[channels]]
//! name = "probe"
//! kind = "optical"
//! [channels.optical]
//! wavelengths_nm = [808.0]
//! max_power_mw = 500.0
//! min_beam_area_cm2 = 1.0
//! max_beam_area_cm2 = 1.0
//! [channels.optical.safety]
//! key_switch = true
//! door_interlock = true
//! emission_indicator = true
//! shutter = true
//! power_sensor = true
//! ```

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use modalis_sdk::{ChannelKind, ModalityKind, Waveform};

use crate::limits::{
    COMBINED_BUDGET_MAX_MW_PER_CM2, LaserClass, LimitOverrides, Limits, TENS_NOMINAL_LOAD_OHM,
};
use crate::load::{LoadError, from_toml, positive};

/// A validated device profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceProfile {
    /// Device id, unique among the governor's profiles; protocol blocks name it.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The modality the device delivers.
    pub modality: ModalityKind,
    /// Its channels.
    pub channels: Vec<ChannelProfile>,
    /// The clinic's overrides as written (each stricter than the default).
    pub overrides: LimitOverrides,
    /// The defaults with the overrides applied.
    pub limits: Limits,
    /// Whether this device may share a site with another energy source at the same time.
    pub combined: Option<CombinedUse>,
    /// Where the profile came from (for messages).
    pub origin: String,
}

/// Stacking with other energy sources on one site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CombinedUse {
    /// Whether stacking is allowed at all.
    pub allow: bool,
    /// Combined power density of all sources on the site, at most; never above the hard
    /// ceiling [`COMBINED_BUDGET_MAX_MW_PER_CM2`].
    pub thermal_budget_mw_per_cm2: f64,
}

/// One channel of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelProfile {
    /// Channel name, as plans name it.
    pub name: String,
    /// What the channel emits and its envelope.
    pub spec: ChannelSpec,
}

impl ChannelProfile {
    /// The channel kind.
    pub fn kind(&self) -> ChannelKind {
        match self.spec {
            ChannelSpec::Optical(_) => ChannelKind::Optical,
            ChannelSpec::Heat(_) => ChannelKind::Heat,
            ChannelSpec::Electrical(_) => ChannelKind::Electrical,
        }
    }

    /// Whether the channel reports a quantity the governor watches (so the staleness
    /// watchdog applies to it).
    pub fn monitored(&self) -> bool {
        match &self.spec {
            ChannelSpec::Optical(o) => o.safety.power_sensor || o.safety.skin_temp_sensor,
            ChannelSpec::Heat(h) => h.skin_temp_sensor,
            ChannelSpec::Electrical(e) => e.impedance_monitor,
        }
    }

    /// The laser class, for laser channels.
    pub fn laser_class(&self) -> Option<LaserClass> {
        match &self.spec {
            ChannelSpec::Optical(o) => o.laser_class(),
            _ => None,
        }
    }
}

/// The envelope of a channel, by kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelSpec {
    /// Light.
    Optical(OpticalChannel),
    /// Heat.
    Heat(HeatChannel),
    /// Electrical stimulation.
    Electrical(ElectricalChannel),
}

/// What emits the light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Emitter {
    /// A laser: classified, with 21 CFR 1040.10(f) controls from Class 3B up.
    #[default]
    Laser,
    /// LEDs (e.g. MIRE pads): no laser class.
    Led,
}

/// Safety hardware fitted to an optical channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafetyHardware {
    /// Key switch (21 CFR 1040.10(f) key control).
    #[serde(default)]
    pub key_switch: bool,
    /// Remote interlock connector wired to the room door.
    #[serde(default)]
    pub door_interlock: bool,
    /// Emission indicator that comes on before emission.
    #[serde(default)]
    pub emission_indicator: bool,
    /// Beam shutter or attenuator.
    #[serde(default)]
    pub shutter: bool,
    /// Output power sensor reporting measured power.
    #[serde(default)]
    pub power_sensor: bool,
    /// Skin temperature sensor at the treatment site.
    #[serde(default)]
    pub skin_temp_sensor: bool,
}

fn default_wavelength_tolerance_nm() -> f64 {
    // [K] typical diode-laser wavelength specification is +/-10 nm.
    10.0
}

/// An optical channel's envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpticalChannel {
    /// The wavelength(s) the channel emits, nm.
    pub wavelengths_nm: Vec<f64>,
    /// How far a step's wavelength may be from one of them, nm.
    #[serde(default = "default_wavelength_tolerance_nm")]
    pub wavelength_tolerance_nm: f64,
    /// Maximum average output power, mW.
    pub max_power_mw: f64,
    /// Smallest spot the optics produce, cm2. Safety ceilings are computed on it.
    pub min_beam_area_cm2: f64,
    /// Largest spot, cm2.
    pub max_beam_area_cm2: f64,
    /// Largest area a scanning pattern may cover, cm2; absent when the channel cannot scan.
    #[serde(default)]
    pub max_scan_area_cm2: Option<f64>,
    /// Highest pulse repetition rate, Hz; absent for continuous-wave only.
    #[serde(default)]
    pub max_pulse_frequency_hz: Option<f64>,
    /// Laser or LED.
    #[serde(default)]
    pub emitter: Emitter,
    /// The class on the label, if the clinic wants a stricter one than the derived class.
    #[serde(default)]
    pub declared_class: Option<LaserClass>,
    /// Safety hardware fitted.
    #[serde(default)]
    pub safety: SafetyHardware,
}

impl OpticalChannel {
    /// The laser class: derived from the maximum power (above 0.5 W is Class 4, IEC 60825-1),
    /// or the declared class when that is higher. `None` for LEDs.
    pub fn laser_class(&self) -> Option<LaserClass> {
        if self.emitter == Emitter::Led {
            return None;
        }
        let derived = LaserClass::from_max_power_mw(self.max_power_mw);
        Some(self.declared_class.map_or(derived, |d| d.max(derived)))
    }

    /// Whether `wavelength_nm` is one the channel emits (within the tolerance).
    pub fn emits(&self, wavelength_nm: f64) -> bool {
        self.wavelengths_nm
            .iter()
            .any(|w| (w - wavelength_nm).abs() <= self.wavelength_tolerance_nm)
    }
}

/// A heat channel's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeatChannel {
    /// Highest temperature the device can hold, C.
    pub max_temp_c: f64,
    /// Highest emitter power, W.
    pub max_power_w: f64,
    /// Contact or irradiated area, cm2 (for power density in a combined budget).
    pub contact_area_cm2: f64,
    /// A skin temperature sensor is fitted and reports.
    #[serde(default)]
    pub skin_temp_sensor: bool,
}

fn default_min_frequency_hz() -> f64 {
    // clinical-facts.md TENS use cases [S]: 1-150 Hz.
    1.0
}
fn default_max_frequency_hz() -> f64 {
    // clinical-facts.md TENS use cases [S]: 1-150 Hz.
    150.0
}
fn default_min_pulse_width_us() -> f64 {
    // clinical-facts.md TENS use cases [S]: 50-250 us per phase.
    50.0
}
fn default_max_pulse_width_us() -> f64 {
    // clinical-facts.md TENS use cases [S]: 50-250 us per phase.
    250.0
}
fn default_load_ohm() -> f64 {
    TENS_NOMINAL_LOAD_OHM
}

/// An electrical stimulation channel's envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElectricalChannel {
    /// The channel's own r.m.s. current limit, mA (the 50 mA hard cap applies on top).
    pub max_rms_ma: f64,
    /// Highest peak amplitude the channel produces, mA.
    pub max_peak_ma: f64,
    /// Waveforms the channel may produce.
    pub waveforms: Vec<Waveform>,
    /// Area of the (smaller) electrodes fitted, cm2. Density is computed on the smaller of this
    /// and the plan's figure: the plan is not believed when it claims bigger electrodes.
    pub electrode_area_cm2: f64,
    /// Lowest pulse rate, Hz.
    #[serde(default = "default_min_frequency_hz")]
    pub min_frequency_hz: f64,
    /// Highest pulse rate, Hz.
    #[serde(default = "default_max_frequency_hz")]
    pub max_frequency_hz: f64,
    /// Shortest phase, us.
    #[serde(default = "default_min_pulse_width_us")]
    pub min_pulse_width_us: f64,
    /// Longest phase, us.
    #[serde(default = "default_max_pulse_width_us")]
    pub max_pulse_width_us: f64,
    /// Load for power density and pulse energy, ohm (IEC 601-2-10 states limits into 500 ohm).
    #[serde(default = "default_load_ohm")]
    pub load_ohm: f64,
    /// The channel reports electrode impedance.
    #[serde(default)]
    pub impedance_monitor: bool,
}

/// A device profile file as written (TOML): what a device can do and which safety hardware it
/// has. The governor checks it further on load (ids, channel kinds per modality, overrides
/// only stricter, laser class controls).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DeviceProfile")]
struct RawProfile {
    /// Device id, unique among the governor's profiles; protocol blocks name it. Letters,
    /// digits, '-' and '_'.
    id: String,
    /// Human-readable name (the id when absent).
    #[serde(default)]
    name: Option<String>,
    /// The modality the device delivers.
    modality: ModalityKind,
    /// Its channels, at least one.
    channels: Vec<RawChannel>,
    /// Clinic overrides of the default limits; each may only be stricter.
    #[serde(default)]
    limits: LimitOverrides,
    /// Whether this device may share a site with another energy source at the same time.
    #[serde(default)]
    combined: Option<CombinedUse>,
}

/// One channel of a device profile file: its kind and the table of that kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Channel")]
struct RawChannel {
    /// Channel name, as plans name it; unique within the device.
    name: String,
    /// What the channel emits; the table of the same name must be given.
    kind: ChannelKind,
    /// The envelope of an optical channel (`kind = "optical"`).
    #[serde(default)]
    optical: Option<OpticalChannel>,
    /// The envelope of a heat channel (`kind = "heat"`).
    #[serde(default)]
    heat: Option<HeatChannel>,
    /// The envelope of an electrical stimulation channel (`kind = "electrical"`).
    #[serde(default)]
    electrical: Option<ElectricalChannel>,
}

/// The device profile file's validator, compiled once for every profile loaded.
static PROFILE_SCHEMA: LazyLock<jsonschema::Validator> =
    LazyLock::new(crate::schema::compile::<RawProfile>);

/// The channel kinds a device of a modality may have.
pub fn allowed_channel_kinds(modality: ModalityKind) -> &'static [ChannelKind] {
    match modality {
        ModalityKind::Photobiomodulation
        | ModalityKind::Class4Laser
        | ModalityKind::LaserAcupuncture => &[ChannelKind::Optical],
        // MIRE pads are near-infrared LEDs whose effect is modelled as heat; IR lamps heat.
        ModalityKind::InfraredHeat => &[ChannelKind::Heat, ChannelKind::Optical],
        ModalityKind::Tens => &[ChannelKind::Electrical],
        // No safety rules exist for "other": the governor drives nothing it cannot check.
        ModalityKind::Other => &[],
    }
}

impl DeviceProfile {
    /// Reads and validates a profile from TOML text; `origin` (usually the path) names it in
    /// errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<DeviceProfile, LoadError> {
        let raw: RawProfile = from_toml(text, origin, &PROFILE_SCHEMA)?;
        DeviceProfile::validate(raw, origin)
    }

    /// The JSON Schema of a device profile file (`schemas/device-profile.schema.json`).
    pub fn file_schema() -> schemars::Schema {
        schemars::schema_for!(RawProfile)
    }

    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelProfile> {
        self.channels.iter().find(|c| c.name == name)
    }

    fn validate(raw: RawProfile, origin: &str) -> Result<DeviceProfile, LoadError> {
        let err = |field: String, msg: String| LoadError::field(origin, field, msg);
        if raw.id.trim().is_empty()
            || !raw
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                "id".into(),
                format!(
                    "expected a non-empty id of letters, digits, '-' or '_', got {:?}",
                    raw.id
                ),
            ));
        }
        let allowed = allowed_channel_kinds(raw.modality);
        if allowed.is_empty() {
            return Err(err(
                "modality".into(),
                format!(
                    "modality {:?} has no safety rules; the governor drives only photobiomodulation, class-4-laser, infrared-heat, tens and laser-acupuncture devices",
                    raw.modality.as_str()
                ),
            ));
        }
        if raw.channels.is_empty() {
            return Err(err(
                "channels".into(),
                "expected at least one [[channels]] entry".into(),
            ));
        }
        let limits = Limits::default()
            .tightened(&raw.limits)
            .map_err(|e| err("limits".into(), e.to_string()))?;
        if let Some(c) = &raw.combined
            && !(c.thermal_budget_mw_per_cm2.is_finite()
                && c.thermal_budget_mw_per_cm2 > 0.0
                && c.thermal_budget_mw_per_cm2 <= COMBINED_BUDGET_MAX_MW_PER_CM2)
        {
            return Err(err(
                "combined.thermal_budget_mw_per_cm2".into(),
                format!(
                    "expected a number > 0 and at most the hard ceiling {COMBINED_BUDGET_MAX_MW_PER_CM2} mW/cm2 (the lowest skin MPE, ICNIRP), got {}",
                    c.thermal_budget_mw_per_cm2
                ),
            ));
        }
        let mut channels: Vec<ChannelProfile> = Vec::with_capacity(raw.channels.len());
        for (i, ch) in raw.channels.into_iter().enumerate() {
            let at = |f: &str| format!("channels[{i}].{f}");
            if ch.name.trim().is_empty() {
                return Err(err(at("name"), "expected a non-empty channel name".into()));
            }
            if channels.iter().any(|c| c.name == ch.name) {
                return Err(err(
                    at("name"),
                    format!("channel name {:?} appears twice", ch.name),
                ));
            }
            if !allowed.contains(&ch.kind) {
                let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
                return Err(err(
                    at("kind"),
                    format!(
                        "a {} device has {} channels; got {:?}",
                        raw.modality,
                        names.join(" or "),
                        ch.kind.as_str()
                    ),
                ));
            }
            let present = [
                ("optical", ch.optical.is_some(), ChannelKind::Optical),
                ("heat", ch.heat.is_some(), ChannelKind::Heat),
                (
                    "electrical",
                    ch.electrical.is_some(),
                    ChannelKind::Electrical,
                ),
            ];
            for (table, is_there, kind) in present {
                if is_there && kind != ch.kind {
                    return Err(err(
                        at(table),
                        format!(
                            "a {} channel takes a [channels.{}] table, not [channels.{table}]",
                            ch.kind, ch.kind
                        ),
                    ));
                }
            }
            let spec = match (ch.kind, ch.optical, ch.heat, ch.electrical) {
                (ChannelKind::Optical, Some(o), _, _) => {
                    validate_optical(&o, raw.modality, origin, &at("optical"))?;
                    ChannelSpec::Optical(o)
                }
                (ChannelKind::Heat, _, Some(h), _) => {
                    let p = at("heat");
                    positive(origin, &format!("{p}.max_temp_c"), h.max_temp_c, "C")?;
                    positive(origin, &format!("{p}.max_power_w"), h.max_power_w, "W")?;
                    positive(
                        origin,
                        &format!("{p}.contact_area_cm2"),
                        h.contact_area_cm2,
                        "cm2",
                    )?;
                    ChannelSpec::Heat(h)
                }
                (ChannelKind::Electrical, _, _, Some(e)) => {
                    validate_electrical(&e, origin, &at("electrical"))?;
                    ChannelSpec::Electrical(e)
                }
                (kind, ..) => {
                    return Err(err(
                        at(kind.as_str()),
                        format!("a {kind} channel needs its [channels.{kind}] table"),
                    ));
                }
            };
            channels.push(ChannelProfile {
                name: ch.name,
                spec,
            });
        }
        Ok(DeviceProfile {
            name: raw.name.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            modality: raw.modality,
            channels,
            overrides: raw.limits,
            limits,
            combined: raw.combined,
            origin: origin.to_string(),
        })
    }
}

fn validate_optical(
    o: &OpticalChannel,
    modality: ModalityKind,
    origin: &str,
    p: &str,
) -> Result<(), LoadError> {
    let err = |field: &str, msg: String| LoadError::field(origin, format!("{p}.{field}"), msg);
    if o.wavelengths_nm.is_empty() {
        return Err(err(
            "wavelengths_nm",
            "expected at least one wavelength".into(),
        ));
    }
    for (i, w) in o.wavelengths_nm.iter().enumerate() {
        if !(w.is_finite()
            && (crate::limits::MPE_MIN_WAVELENGTH_NM..=crate::limits::MPE_MAX_WAVELENGTH_NM)
                .contains(w))
        {
            return Err(err(
                &format!("wavelengths_nm[{i}]"),
                format!(
                    "expected a wavelength in 400-1400 nm (the range of the skin MPE table, ICNIRP), got {w}"
                ),
            ));
        }
    }
    if !(o.wavelength_tolerance_nm.is_finite() && (0.0..=50.0).contains(&o.wavelength_tolerance_nm))
    {
        return Err(err(
            "wavelength_tolerance_nm",
            format!("expected 0-50 nm, got {}", o.wavelength_tolerance_nm),
        ));
    }
    positive(origin, &format!("{p}.max_power_mw"), o.max_power_mw, "mW")?;
    positive(
        origin,
        &format!("{p}.min_beam_area_cm2"),
        o.min_beam_area_cm2,
        "cm2",
    )?;
    positive(
        origin,
        &format!("{p}.max_beam_area_cm2"),
        o.max_beam_area_cm2,
        "cm2",
    )?;
    if o.min_beam_area_cm2 > o.max_beam_area_cm2 {
        return Err(err(
            "min_beam_area_cm2",
            format!(
                "{} cm2 is above max_beam_area_cm2 {}",
                o.min_beam_area_cm2, o.max_beam_area_cm2
            ),
        ));
    }
    if let Some(s) = o.max_scan_area_cm2 {
        positive(origin, &format!("{p}.max_scan_area_cm2"), s, "cm2")?;
        if s < o.max_beam_area_cm2 {
            return Err(err(
                "max_scan_area_cm2",
                format!(
                    "{s} cm2 is smaller than the beam ({} cm2)",
                    o.max_beam_area_cm2
                ),
            ));
        }
    }
    if let Some(f) = o.max_pulse_frequency_hz {
        positive(origin, &format!("{p}.max_pulse_frequency_hz"), f, "Hz")?;
    }
    if o.emitter == Emitter::Laser {
        let derived = LaserClass::from_max_power_mw(o.max_power_mw);
        if let Some(declared) = o.declared_class
            && declared < derived
        {
            return Err(err(
                "declared_class",
                format!(
                    "Class {} is lower than the class derived from max_power_mw {} (Class {}; above 0.5 W is Class 4, IEC 60825-1)",
                    declared.as_str(),
                    o.max_power_mw,
                    derived.as_str()
                ),
            ));
        }
        let class = o.laser_class().unwrap_or(derived);
        if modality == ModalityKind::Class4Laser && class != LaserClass::Class4 {
            return Err(err(
                "max_power_mw",
                format!(
                    "a class-4-laser device must exceed 500 mW (IEC 60825-1); {} mW is Class {}",
                    o.max_power_mw,
                    class.as_str()
                ),
            ));
        }
        if class.needs_controls() {
            let s = &o.safety;
            for (field, fitted) in [
                ("key_switch", s.key_switch),
                ("door_interlock", s.door_interlock),
                ("emission_indicator", s.emission_indicator),
                ("shutter", s.shutter),
            ] {
                if !fitted {
                    return Err(err(
                        &format!("safety.{field}"),
                        format!(
                            "a Class {} laser must have a {field} (21 CFR 1040.10(f)); expected `{field} = true`",
                            class.as_str()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_electrical(e: &ElectricalChannel, origin: &str, p: &str) -> Result<(), LoadError> {
    let err = |field: &str, msg: String| LoadError::field(origin, format!("{p}.{field}"), msg);
    positive(origin, &format!("{p}.max_rms_ma"), e.max_rms_ma, "mA")?;
    positive(origin, &format!("{p}.max_peak_ma"), e.max_peak_ma, "mA")?;
    positive(
        origin,
        &format!("{p}.electrode_area_cm2"),
        e.electrode_area_cm2,
        "cm2",
    )?;
    positive(
        origin,
        &format!("{p}.min_frequency_hz"),
        e.min_frequency_hz,
        "Hz",
    )?;
    positive(
        origin,
        &format!("{p}.max_frequency_hz"),
        e.max_frequency_hz,
        "Hz",
    )?;
    positive(
        origin,
        &format!("{p}.min_pulse_width_us"),
        e.min_pulse_width_us,
        "us",
    )?;
    positive(
        origin,
        &format!("{p}.max_pulse_width_us"),
        e.max_pulse_width_us,
        "us",
    )?;
    positive(origin, &format!("{p}.load_ohm"), e.load_ohm, "ohm")?;
    if e.waveforms.is_empty() {
        return Err(err("waveforms", "expected at least one waveform".into()));
    }
    if e.min_frequency_hz > e.max_frequency_hz {
        return Err(err(
            "min_frequency_hz",
            format!(
                "{} Hz is above max_frequency_hz {}",
                e.min_frequency_hz, e.max_frequency_hz
            ),
        ));
    }
    if e.min_pulse_width_us > e.max_pulse_width_us {
        return Err(err(
            "min_pulse_width_us",
            format!(
                "{} us is above max_pulse_width_us {}",
                e.min_pulse_width_us, e.max_pulse_width_us
            ),
        ));
    }
    Ok(())
}
