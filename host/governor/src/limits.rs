//! Every limit the governor enforces, with its source, and the skin MPE formulas.
//!
//! The numbers come from `shared/reference/clinical-facts.md`. Each constant says where it
//! comes from and how sure it is: [S] read in a public source, [K] the usual reading of a
//! paywalled standard (a configurable default to verify), [C] calculated.
//!
//! [`Limits::default`] holds the defaults. A clinic may make any limit *stricter* per device
//! profile (or for the whole governor) through [`LimitOverrides`]; a looser value is rejected
//! with an error naming the field. [K] defaults are configurable only in that stricter
//! direction: if a standard turns out to allow more, the default is changed here, in review,
//! never in a profile.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use modalis_sdk::{ModalityKind, Sensation};

// ------------------------------------------------------------------------------------------
// Optical
// ------------------------------------------------------------------------------------------

/// IEC 60825-1 [S] (clinical-facts.md 'Class 3B upper bound'): 0.5 W continuous is the Class
/// 3B upper bound; above it a laser is Class 4. A hard classification boundary, not a limit.
pub const CLASS_3B_MAX_MW: f64 = 500.0;

/// IEC 60825-1 [K]: Class 3R ends at 5 mW (visible AEL); anything above is treated as at
/// least Class 3B, which is the conservative reading for invisible near-infrared beams too.
pub const CLASS_3R_MAX_MW: f64 = 5.0;

/// 21 CFR 1040.11 [S] (clinical-facts.md 'Output accuracy'): delivered power within +/-20 % of
/// the set value; one device measured at 230 % (preprints.org 202301.0251 [S]).
pub const OPTICAL_OUTPUT_TOLERANCE: f64 = 0.20;

/// ICNIRP / Directive 2006/25/EC Annex II [S]: skin MPE for exposures of 10 s and longer is
/// E = 0.2 * CA W/cm2, i.e. 200 * CA mW/cm2.
pub const SKIN_MPE_LONG_MW_PER_CM2_PER_CA: f64 = 200.0;

/// ICNIRP / Directive 2006/25/EC Annex II [S]: below 10 s the skin MPE is a radiant exposure
/// H = 1.1 * CA * t^0.25 J/cm2.
pub const SKIN_MPE_SHORT_J_PER_CM2_PER_CA: f64 = 1.1;

/// ICNIRP / Directive 2006/25/EC Annex II [S]: the exposure time that separates the two MPE
/// formulas.
pub const SKIN_MPE_LONG_EXPOSURE_S: f64 = 10.0;

/// ICNIRP / ANSI [K] (clinical-facts.md 'Large areas'): above about 100 cm2 the skin limit
/// falls with the exposed area (as 10 000 / A mW/cm2, ANSI Z136.1) ...
pub const LARGE_AREA_START_CM2: f64 = 100.0;
/// ... ICNIRP / ANSI [K]: ... the numerator of that fall, mW (10 000 / A mW/cm2) ...
pub const LARGE_AREA_MW: f64 = 10_000.0;
/// ... ICNIRP / ANSI [K]: ... to 10 mW/cm2 above 1000 cm2 (pads, lamps).
pub const LARGE_AREA_FLOOR_MW_PER_CM2: f64 = 10.0;

/// The wavelength range the MPE table of clinical-facts.md covers (CA is defined from the
/// visible to 1400 nm, ICNIRP [S]). Outside it the governor knows no skin limit and refuses.
pub const MPE_MIN_WAVELENGTH_NM: f64 = 400.0;
/// See [`MPE_MIN_WAVELENGTH_NM`].
pub const MPE_MAX_WAVELENGTH_NM: f64 = 1400.0;

/// Hamblin [S]; WALT notes [S] (clinical-facts.md 'LLLT irradiance'): below about
/// 100 mW/cm2 to avoid heating.
pub const LLLT_IRRADIANCE_MAX_MW_PER_CM2: f64 = 100.0;

/// WALT dose table 780-860 nm [S] (clinical-facts.md use cases): 1-8 J per point.
pub const PBM_POINT_ENERGY_MIN_J: f64 = 1.0;
/// See [`PBM_POINT_ENERGY_MIN_J`].
pub const PBM_POINT_ENERGY_MAX_J: f64 = 8.0;
/// [K] engineering default bracketing the 2.5-4 J/cm2 of the neuropathy trials (Acta Med Iran
/// 2.5 J/cm2 [S]; Anju 2019 3.1 J/cm2 [S]); the response is biphasic (Huang 2009 [S]) so both
/// ends are enforced. Verify per protocol; a clinic may narrow it.
pub const PBM_FLUENCE_MIN_J_PER_CM2: f64 = 1.0;
/// See [`PBM_FLUENCE_MIN_J_PER_CM2`].
pub const PBM_FLUENCE_MAX_J_PER_CM2: f64 = 10.0;

/// Litscher 2012; ACUDIN (BMC Neurol 2018;18:40) [S] (clinical-facts.md use cases): laser
/// acupuncture 0.5-8 J per point.
pub const ACU_POINT_ENERGY_MIN_J: f64 = 0.5;
/// See [`ACU_POINT_ENERGY_MIN_J`].
pub const ACU_POINT_ENERGY_MAX_J: f64 = 8.0;

/// [C] from the Class IV neuropathy pilot (about 1.7 W average over 56-150 cm2 for 5-15 min,
/// BMC Geriatrics 2019;19:218 [S] and MLS pilot abstract): 3.4-27 J/cm2, rounded out to a
/// 2-30 J/cm2 window [K].
pub const CLASS4_FLUENCE_MIN_J_PER_CM2: f64 = 2.0;
/// See [`CLASS4_FLUENCE_MIN_J_PER_CM2`].
pub const CLASS4_FLUENCE_MAX_J_PER_CM2: f64 = 30.0;

/// [K] cumulative optical fluence at one site in one day, across all optical modalities and
/// sessions: the largest session window (Class IV, 30 J/cm2 [C]), since clinics treat a site
/// at most once a day (2-3 sessions/week [S]).
pub const OPTICAL_SITE_DAILY_FLUENCE_MAX_J_PER_CM2: f64 = 30.0;

/// [K] derating on skin with *absent* sensation: the MPE divided by 1.2, so that a device
/// delivering the 20 % over its set power that 21 CFR 1040.11 [S] permits still stays within
/// the MPE. Reduced sensation uses the MPE itself (ICNIRP statement [S]: the MPE is the
/// default cap on insensate target skin).
pub const ABSENT_SENSATION_MPE_FRACTION: f64 = 1.0 / (1.0 + OPTICAL_OUTPUT_TOLERANCE);

/// [K] light measured on a channel that should be dark above this counts as stray emission.
/// 1 mW is below the Class 3R boundary (5 mW, IEC 60825-1) and above sensor noise.
pub const STRAY_EMISSION_MW: f64 = 1.0;

/// Class IV manuals [S]: 5-15 min per session (BMC Geriatrics 2019;19:218 [S]).
pub const CLASS4_SESSION_MAX_MS: u64 = 15 * 60 * 1000;

// ------------------------------------------------------------------------------------------
// Heat
// ------------------------------------------------------------------------------------------

/// IEC 60601-1 Table 24 [K] (clinical-facts.md 'Contact temperature'): 43 C maximum for
/// contact of 10 min or more.
pub const HEAT_MAX_NORMAL_C: f64 = 43.0;
/// IEC 60601-1 11.1.2.2 [K]: above 41 C must be disclosed (a warning the clinician reads).
pub const HEAT_DISCLOSE_ABOVE_C: f64 = 41.0;
/// clinical-facts.md 'Insensate skin' (engineering judgement from IEC 60601-1 [K]): stop at
/// 41 C on reduced or absent sensation.
pub const HEAT_CUTOFF_INSENSATE_C: f64 = 41.0;
/// clinical-facts.md 'Insensate skin' [K]: alarm at 40 C on reduced or absent sensation. It is
/// also the highest target the governor approves there, so the cut-off is never the
/// operating point.
pub const HEAT_ALARM_INSENSATE_C: f64 = 40.0;
/// [K] engineering default: alarm 1 C below the 43 C cut-off on normal skin, mirroring the
/// 40/41 C pair for insensate skin.
pub const HEAT_ALARM_NORMAL_C: f64 = 42.0;
/// [K] hysteresis: a reduced output is released only when the skin is this far below the
/// alarm level, so the output does not chatter around it.
pub const SKIN_TEMP_HYSTERESIS_C: f64 = 1.0;
/// Leonard 2004, Clifft 2005, Lavery 2008 [S] (clinical-facts.md 'Session'): pad sessions
/// 30-40 min; cap 45 min.
pub const HEAT_SESSION_MAX_MS: u64 = 45 * 60 * 1000;
/// DPL label [S] (clinical-facts.md 'Session'): at most 2 heat sessions per site per day.
pub const HEAT_SESSIONS_PER_SITE_PER_DAY: u32 = 2;

// ------------------------------------------------------------------------------------------
// TENS
// ------------------------------------------------------------------------------------------

/// IEC 60601-2-10 via Enraf-Nonius IFU [S]: never above 50 mA r.m.s.
pub const TENS_RMS_MAX_MA: f64 = 50.0;
/// AS 60601.2.10:2018 201.7.9.2.101(g) [S]: above 2 mA r.m.s./cm2 needs operator attention.
pub const TENS_DENSITY_WARN_MA_PER_CM2: f64 = 2.0;
/// FDA powered muscle stimulator guidance [S]: power density below 0.25 W/cm2.
pub const TENS_POWER_DENSITY_MAX_W_PER_CM2: f64 = 0.25;
/// IEC 601-2-10 (older edition) [S]: at most 300 mJ per pulse into 500 ohm.
pub const TENS_ENERGY_PER_PULSE_MAX_MJ: f64 = 300.0;
/// IEC 601-2-10 (older edition) [S]: the 500 ohm load the pulse-energy limit is stated into,
/// also used as the nominal load for power density where the profile names none.
pub const TENS_NOMINAL_LOAD_OHM: f64 = 500.0;
/// [K] engineering default: twice the typical 80 mA x 250 us = 20 uC per phase
/// (clinical-facts.md 'Typical charge' [C]).
pub const TENS_CHARGE_PER_PHASE_MAX_UC: f64 = 40.0;
/// Stimulator manuals [S] say "from zero, ramped"; the numbers are engineering defaults [K]:
/// the first energised step of a channel starts at or below 10 mA peak ...
pub const TENS_RAMP_START_MAX_MA: f64 = 10.0;
/// ... [K] and the amplitude rises by at most 2 mA per second of the previous step.
pub const TENS_RAMP_RISE_MAX_MA_PER_S: f64 = 2.0;
/// Kumar 1997, Forst 2004, Serry 2016 [S] (clinical-facts.md use cases): 20-60 min sessions.
pub const TENS_SESSION_MAX_MS: u64 = 60 * 60 * 1000;
/// [K] electrode-skin impedance below this means a short or a wet bridge.
pub const TENS_IMPEDANCE_MIN_OHM: f64 = 100.0;
/// [K] impedance above this means an electrode lifting (FDA special controls ask for
/// impedance monitoring [S]: impedance rising means current density rising).
pub const TENS_IMPEDANCE_MAX_OHM: f64 = 5_000.0;

// ------------------------------------------------------------------------------------------
// Cross-modality and runtime
// ------------------------------------------------------------------------------------------

/// [C] hard ceiling for a combined thermal budget: the lowest skin MPE for any wavelength
/// (0.2 W/cm2 below 700 nm, ICNIRP [S]); no profile may allow stacking beyond it.
pub const COMBINED_BUDGET_MAX_MW_PER_CM2: f64 = 200.0;
/// OpenICE PCA interlock (mdpnp demo-apps) [S]: a reading older than 5 s counts as unsafe.
pub const STALENESS_LIMIT_MS: u64 = 5_000;
/// [K] fail-safe lease period (Pajic et al. PMC3810414 [S] for the pattern; the period is an
/// engineering default): a device stops by itself 2 s after its last renewal.
pub const LEASE_PERIOD_MS: u64 = 2_000;
/// 21 CFR 1040.10(f) [S]: the emission indicator comes on before emission; the 2 s lead time
/// (and the Class 4 emission delay) is an engineering default [K].
pub const INTERLOCK_LEAD_TIME_MS: u64 = 2_000;
/// [K] how early a command may arrive before its step's scheduled start.
pub const SCHEDULE_EARLY_MS: u64 = 1_000;
/// [K] the longest combined session the governor accepts; anything longer is a plan error.
pub const SESSION_SPAN_MAX_MS: u64 = 4 * 60 * 60 * 1000;

/// Which way a limit gets stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stricter {
    /// A smaller value is stricter (maxima, caps, timeouts).
    Lower,
    /// A larger value is stricter (minima, lead times, hysteresis).
    Higher,
}

/// A limit value: a float or a whole number.
trait LimitValue: Copy + PartialOrd + std::fmt::Display {
    fn sane(self) -> bool;
}
impl LimitValue for f64 {
    fn sane(self) -> bool {
        self.is_finite() && self >= 0.0
    }
}
impl LimitValue for u64 {
    fn sane(self) -> bool {
        true
    }
}
impl LimitValue for u32 {
    fn sane(self) -> bool {
        true
    }
}

fn stricter_of<T: LimitValue>(a: T, b: T, dir: Stricter) -> T {
    match dir {
        Stricter::Lower if b < a => b,
        Stricter::Higher if b > a => b,
        _ => a,
    }
}

/// A limit override that would loosen a limit, or is not a number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// Looser than the default (the hard cap).
    #[error(
        "limits.{field} = {value} {unit} is looser than the hard cap {cap} {unit}; an override may only make a limit stricter ({direction})"
    )]
    Looser {
        /// The field.
        field: &'static str,
        /// The value asked for.
        value: String,
        /// The cap.
        cap: String,
        /// Its unit.
        unit: &'static str,
        /// "at most the cap" or "at least the cap".
        direction: &'static str,
    },
    /// Not a finite, non-negative number.
    #[error("limits.{field} = {value}: expected a finite number >= 0 ({unit})")]
    NotANumber {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// Its unit.
        unit: &'static str,
    },
    /// A window whose minimum is above its maximum after overrides.
    #[error("limits.{min_field} ({min}) is above limits.{max_field} ({max}): the window is empty")]
    EmptyWindow {
        /// Minimum field.
        min_field: &'static str,
        /// Its value.
        min: f64,
        /// Maximum field.
        max_field: &'static str,
        /// Its value.
        max: f64,
    },
}

fn check_override<T: LimitValue>(
    field: &'static str,
    value: T,
    cap: T,
    dir: Stricter,
    unit: &'static str,
) -> Result<(), LimitError> {
    if !value.sane() {
        return Err(LimitError::NotANumber {
            field,
            value: value.to_string(),
            unit,
        });
    }
    let looser = match dir {
        Stricter::Lower => value > cap,
        Stricter::Higher => value < cap,
    };
    if looser {
        return Err(LimitError::Looser {
            field,
            value: value.to_string(),
            cap: cap.to_string(),
            unit,
            direction: match dir {
                Stricter::Lower => "at most the cap",
                Stricter::Higher => "at least the cap",
            },
        });
    }
    Ok(())
}

macro_rules! limits_table {
    ($($(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, $dir:ident, $unit:literal;)*) => {
        /// The limits in force. [`Limits::default`] is the table of clinical-facts.md; each
        /// field's default is the constant of the same meaning in this module, which cites
        /// its source.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Limits {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $($field: $default,)* }
            }
        }

        /// Clinic overrides, per device profile (`[limits]`) or governor-wide. Each may only
        /// make its limit stricter.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct LimitOverrides {
            $($(#[$doc])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: Option<$ty>,)*
        }

        impl Limits {
            /// These limits with the overrides applied; an override looser than `self` is an
            /// error naming the field.
            pub fn tightened(&self, o: &LimitOverrides) -> Result<Limits, LimitError> {
                let mut out = self.clone();
                $(
                    if let Some(value) = o.$field {
                        check_override(stringify!($field), value, self.$field, Stricter::$dir, $unit)?;
                        out.$field = value;
                    }
                )*
                out.check_windows()?;
                Ok(out)
            }

            /// Field by field, the stricter of `self` and the overrides (which must already
            /// have been validated against the defaults).
            pub fn stricter_with(&self, o: &LimitOverrides) -> Limits {
                let mut out = self.clone();
                $(
                    if let Some(value) = o.$field {
                        out.$field = stricter_of(self.$field, value, Stricter::$dir);
                    }
                )*
                out
            }

            /// The names of every limit field, for documentation and error messages.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field),)*];
        }
    };
}

limits_table! {
    /// LLLT irradiance cap (photobiomodulation), mW/cm2.
    lllt_irradiance_max_mw_per_cm2: f64 = LLLT_IRRADIANCE_MAX_MW_PER_CM2, Lower, "mW/cm2";
    /// Fraction of the skin MPE allowed on skin with absent sensation.
    absent_sensation_mpe_fraction: f64 = ABSENT_SENSATION_MPE_FRACTION, Lower, "";
    /// Relative optical output tolerance at runtime.
    optical_output_tolerance: f64 = OPTICAL_OUTPUT_TOLERANCE, Lower, "";
    /// Stray emission threshold, mW.
    stray_emission_mw: f64 = STRAY_EMISSION_MW, Lower, "mW";
    /// Photobiomodulation dose window: minimum energy per point, J.
    pbm_point_energy_min_j: f64 = PBM_POINT_ENERGY_MIN_J, Higher, "J";
    /// Photobiomodulation dose window: maximum energy per point per day, J.
    pbm_point_energy_max_j: f64 = PBM_POINT_ENERGY_MAX_J, Lower, "J";
    /// Photobiomodulation dose window: minimum fluence per site, J/cm2.
    pbm_fluence_min_j_per_cm2: f64 = PBM_FLUENCE_MIN_J_PER_CM2, Higher, "J/cm2";
    /// Photobiomodulation dose window: maximum fluence per site per day, J/cm2.
    pbm_fluence_max_j_per_cm2: f64 = PBM_FLUENCE_MAX_J_PER_CM2, Lower, "J/cm2";
    /// Laser acupuncture: minimum energy per point, J.
    acu_point_energy_min_j: f64 = ACU_POINT_ENERGY_MIN_J, Higher, "J";
    /// Laser acupuncture: maximum energy per point per day, J.
    acu_point_energy_max_j: f64 = ACU_POINT_ENERGY_MAX_J, Lower, "J";
    /// Class IV: minimum fluence per site, J/cm2.
    class4_fluence_min_j_per_cm2: f64 = CLASS4_FLUENCE_MIN_J_PER_CM2, Higher, "J/cm2";
    /// Class IV: maximum fluence per site per day, J/cm2.
    class4_fluence_max_j_per_cm2: f64 = CLASS4_FLUENCE_MAX_J_PER_CM2, Lower, "J/cm2";
    /// Cumulative optical fluence per site per day, all optical modalities, J/cm2.
    optical_site_daily_fluence_max_j_per_cm2: f64 = OPTICAL_SITE_DAILY_FLUENCE_MAX_J_PER_CM2, Lower, "J/cm2";
    /// Class IV time per site per session, ms.
    class4_session_max_ms: u64 = CLASS4_SESSION_MAX_MS, Lower, "ms";
    /// Contact temperature maximum on normal skin, C.
    heat_max_normal_c: f64 = HEAT_MAX_NORMAL_C, Lower, "C";
    /// Above this a target must be disclosed, C.
    heat_disclose_above_c: f64 = HEAT_DISCLOSE_ABOVE_C, Lower, "C";
    /// Alarm on normal skin, C.
    heat_alarm_normal_c: f64 = HEAT_ALARM_NORMAL_C, Lower, "C";
    /// Cut-off on reduced/absent sensation, C.
    heat_cutoff_insensate_c: f64 = HEAT_CUTOFF_INSENSATE_C, Lower, "C";
    /// Alarm (and highest target) on reduced/absent sensation, C.
    heat_alarm_insensate_c: f64 = HEAT_ALARM_INSENSATE_C, Lower, "C";
    /// Hysteresis before a reduced output is released, C.
    skin_temp_hysteresis_c: f64 = SKIN_TEMP_HYSTERESIS_C, Higher, "C";
    /// Heat time per site per session, ms.
    heat_session_max_ms: u64 = HEAT_SESSION_MAX_MS, Lower, "ms";
    /// Heat sessions per site per day.
    heat_sessions_per_site_per_day: u32 = HEAT_SESSIONS_PER_SITE_PER_DAY, Lower, "sessions";
    /// TENS r.m.s. current, mA.
    tens_rms_max_ma: f64 = TENS_RMS_MAX_MA, Lower, "mA";
    /// TENS r.m.s. current density needing attention (clamped on insensate skin), mA/cm2.
    tens_density_warn_ma_per_cm2: f64 = TENS_DENSITY_WARN_MA_PER_CM2, Lower, "mA/cm2";
    /// TENS power density, W/cm2.
    tens_power_density_max_w_per_cm2: f64 = TENS_POWER_DENSITY_MAX_W_PER_CM2, Lower, "W/cm2";
    /// TENS energy per pulse into the nominal load, mJ.
    tens_energy_per_pulse_max_mj: f64 = TENS_ENERGY_PER_PULSE_MAX_MJ, Lower, "mJ";
    /// TENS charge per phase, uC.
    tens_charge_per_phase_max_uc: f64 = TENS_CHARGE_PER_PHASE_MAX_UC, Lower, "uC";
    /// TENS first-step amplitude, mA peak.
    tens_ramp_start_max_ma: f64 = TENS_RAMP_START_MAX_MA, Lower, "mA";
    /// TENS amplitude rise rate, mA/s.
    tens_ramp_rise_max_ma_per_s: f64 = TENS_RAMP_RISE_MAX_MA_PER_S, Lower, "mA/s";
    /// TENS time per site per session, ms.
    tens_session_max_ms: u64 = TENS_SESSION_MAX_MS, Lower, "ms";
    /// TENS impedance lower bound, ohm.
    tens_impedance_min_ohm: f64 = TENS_IMPEDANCE_MIN_OHM, Higher, "ohm";
    /// TENS impedance upper bound, ohm.
    tens_impedance_max_ohm: f64 = TENS_IMPEDANCE_MAX_OHM, Lower, "ohm";
    /// Combined thermal budget ceiling, mW/cm2.
    combined_budget_max_mw_per_cm2: f64 = COMBINED_BUDGET_MAX_MW_PER_CM2, Lower, "mW/cm2";
    /// Telemetry staleness limit, ms.
    staleness_limit_ms: u64 = STALENESS_LIMIT_MS, Lower, "ms";
    /// Lease period, ms.
    lease_period_ms: u64 = LEASE_PERIOD_MS, Lower, "ms";
    /// Emission indicator lead time before Class 3B/4 emission, ms.
    interlock_lead_time_ms: u64 = INTERLOCK_LEAD_TIME_MS, Higher, "ms";
    /// How early a command may come before its step, ms.
    schedule_early_ms: u64 = SCHEDULE_EARLY_MS, Lower, "ms";
    /// Longest combined session, ms.
    session_span_max_ms: u64 = SESSION_SPAN_MAX_MS, Lower, "ms";
}

/// A dose window: minimum and maximum energy per point and fluence per site (either may be
/// absent for a modality where it has no meaning).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DoseWindow {
    /// Energy per point (held beams), J: (min, max).
    pub point_energy_j: Option<(f64, f64)>,
    /// Fluence per site, J/cm2: (min, max).
    pub fluence_j_per_cm2: Option<(f64, f64)>,
}

impl Limits {
    fn check_windows(&self) -> Result<(), LimitError> {
        let pairs: [(&'static str, f64, &'static str, f64); 5] = [
            (
                "pbm_point_energy_min_j",
                self.pbm_point_energy_min_j,
                "pbm_point_energy_max_j",
                self.pbm_point_energy_max_j,
            ),
            (
                "pbm_fluence_min_j_per_cm2",
                self.pbm_fluence_min_j_per_cm2,
                "pbm_fluence_max_j_per_cm2",
                self.pbm_fluence_max_j_per_cm2,
            ),
            (
                "acu_point_energy_min_j",
                self.acu_point_energy_min_j,
                "acu_point_energy_max_j",
                self.acu_point_energy_max_j,
            ),
            (
                "class4_fluence_min_j_per_cm2",
                self.class4_fluence_min_j_per_cm2,
                "class4_fluence_max_j_per_cm2",
                self.class4_fluence_max_j_per_cm2,
            ),
            (
                "tens_impedance_min_ohm",
                self.tens_impedance_min_ohm,
                "tens_impedance_max_ohm",
                self.tens_impedance_max_ohm,
            ),
        ];
        for (min_field, min, max_field, max) in pairs {
            if min > max {
                return Err(LimitError::EmptyWindow {
                    min_field,
                    min,
                    max_field,
                    max,
                });
            }
        }
        Ok(())
    }

    /// The dose window for an optical modality.
    pub fn dose_window(&self, modality: ModalityKind) -> DoseWindow {
        match modality {
            ModalityKind::Photobiomodulation => DoseWindow {
                point_energy_j: Some((self.pbm_point_energy_min_j, self.pbm_point_energy_max_j)),
                fluence_j_per_cm2: Some((
                    self.pbm_fluence_min_j_per_cm2,
                    self.pbm_fluence_max_j_per_cm2,
                )),
            },
            ModalityKind::LaserAcupuncture => DoseWindow {
                point_energy_j: Some((self.acu_point_energy_min_j, self.acu_point_energy_max_j)),
                fluence_j_per_cm2: None,
            },
            ModalityKind::Class4Laser => DoseWindow {
                point_energy_j: None,
                fluence_j_per_cm2: Some((
                    self.class4_fluence_min_j_per_cm2,
                    self.class4_fluence_max_j_per_cm2,
                )),
            },
            ModalityKind::InfraredHeat | ModalityKind::Tens | ModalityKind::Other => DoseWindow {
                point_energy_j: None,
                fluence_j_per_cm2: None,
            },
        }
    }

    /// Highest target temperature approved on skin of this sensation.
    pub fn heat_target_max_c(&self, sensation: Sensation) -> f64 {
        match sensation {
            Sensation::Normal => self.heat_max_normal_c,
            Sensation::Reduced | Sensation::Absent => self.heat_alarm_insensate_c,
        }
    }

    /// Skin temperature alarm level (output is reduced above it).
    pub fn skin_alarm_c(&self, sensation: Sensation) -> f64 {
        match sensation {
            Sensation::Normal => self.heat_alarm_normal_c,
            Sensation::Reduced | Sensation::Absent => self.heat_alarm_insensate_c,
        }
    }

    /// Skin temperature cut-off (the source stops above it).
    pub fn skin_cutoff_c(&self, sensation: Sensation) -> f64 {
        match sensation {
            Sensation::Normal => self.heat_max_normal_c,
            Sensation::Reduced | Sensation::Absent => self.heat_cutoff_insensate_c,
        }
    }

    /// Time cap per site per session for a modality, if it has one.
    pub fn session_cap_ms(&self, modality: ModalityKind) -> Option<u64> {
        match modality {
            ModalityKind::InfraredHeat => Some(self.heat_session_max_ms),
            ModalityKind::Tens => Some(self.tens_session_max_ms),
            ModalityKind::Class4Laser => Some(self.class4_session_max_ms),
            _ => None,
        }
    }

    /// Fraction of the skin MPE allowed on the target skin for a sensation.
    pub fn mpe_fraction(&self, sensation: Sensation) -> f64 {
        match sensation {
            Sensation::Normal | Sensation::Reduced => 1.0,
            Sensation::Absent => self.absent_sensation_mpe_fraction,
        }
    }
}

/// The correction factor CA of the skin MPE (ICNIRP / Directive 2006/25/EC Annex II [S]):
/// 1 below 700 nm, 10^(0.002 (lambda - 700)) for 700-1050 nm, 5 for 1050-1400 nm. `None`
/// outside 400-1400 nm, where clinical-facts.md gives no skin limit.
pub fn ca(wavelength_nm: f64) -> Option<f64> {
    if !(MPE_MIN_WAVELENGTH_NM..=MPE_MAX_WAVELENGTH_NM).contains(&wavelength_nm) {
        return None;
    }
    Some(if wavelength_nm < 700.0 {
        1.0
    } else if wavelength_nm <= 1050.0 {
        10f64.powf(0.002 * (wavelength_nm - 700.0))
    } else {
        5.0
    })
}

/// Skin MPE as an irradiance (mW/cm2) for an exposure of `exposure_s` seconds over
/// `area_cm2`: E = 0.2 CA W/cm2 from 10 s on; below 10 s, H = 1.1 CA t^0.25 J/cm2 expressed
/// as H / t; from 10 s on and above 100 cm2 the large-area fall 10 000 / A mW/cm2, at least
/// 10 mW/cm2 above 1000 cm2 (ICNIRP / ANSI [K]). `None` when the wavelength is outside the
/// table or the exposure is not positive.
pub fn skin_mpe_mw_per_cm2(wavelength_nm: f64, exposure_s: f64, area_cm2: f64) -> Option<f64> {
    let ca = ca(wavelength_nm)?;
    if !(exposure_s.is_finite() && exposure_s > 0.0 && area_cm2.is_finite() && area_cm2 > 0.0) {
        return None;
    }
    if exposure_s < SKIN_MPE_LONG_EXPOSURE_S {
        let h_j_per_cm2 = SKIN_MPE_SHORT_J_PER_CM2_PER_CA * ca * exposure_s.powf(0.25);
        return Some(h_j_per_cm2 / exposure_s * 1000.0);
    }
    let mut e = SKIN_MPE_LONG_MW_PER_CM2_PER_CA * ca;
    if area_cm2 > LARGE_AREA_START_CM2 {
        let large = (LARGE_AREA_MW / area_cm2).max(LARGE_AREA_FLOOR_MW_PER_CM2);
        e = e.min(large);
    }
    Some(e)
}

/// The laser class derived from the maximum output (IEC 60825-1 [S]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LaserClass {
    /// Class 3R or below (at most 5 mW).
    #[serde(rename = "3r")]
    Class3R,
    /// Class 3B (above 5 mW, at most 0.5 W).
    #[serde(rename = "3b")]
    Class3B,
    /// Class 4 (above 0.5 W).
    #[serde(rename = "4")]
    Class4,
}

impl LaserClass {
    /// Derived from the maximum power: above 0.5 W is Class 4 (IEC 60825-1 [S]); above 5 mW
    /// is treated as Class 3B [K].
    pub fn from_max_power_mw(max_power_mw: f64) -> LaserClass {
        if max_power_mw > CLASS_3B_MAX_MW {
            LaserClass::Class4
        } else if max_power_mw > CLASS_3R_MAX_MW {
            LaserClass::Class3B
        } else {
            LaserClass::Class3R
        }
    }

    /// Whether 21 CFR 1040.10(f) controls (key, remote interlock, indicator, shutter) apply.
    pub fn needs_controls(self) -> bool {
        matches!(self, LaserClass::Class3B | LaserClass::Class4)
    }

    /// Name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LaserClass::Class3R => "3R",
            LaserClass::Class3B => "3B",
            LaserClass::Class4 => "4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// clinical-facts.md 'Skin MPE, exposure >= 10 s': 0.20 W/cm2 at 633-660 nm, 0.33 at 810,
    /// 0.40 at 850, 0.48 at 890, 0.51 at 904, 0.73 at 980, 1.0 at 1064.
    #[test]
    fn skin_mpe_matches_the_clinical_facts_table() {
        for (nm, w) in [
            (633.0, 0.20),
            (660.0, 0.20),
            (810.0, 0.33),
            (850.0, 0.40),
            (890.0, 0.48),
            (904.0, 0.51),
            (980.0, 0.73),
            (1064.0, 1.0),
        ] {
            let e = skin_mpe_mw_per_cm2(nm, 60.0, 1.0).unwrap_or(f64::NAN) / 1000.0;
            assert!(close(e, w, 0.006), "{nm} nm: {e} W/cm2, table says {w}");
        }
    }

    /// ICNIRP: H = 1.1 CA t^0.25 J/cm2 below 10 s; continuous with the long formula at 10 s.
    #[test]
    fn short_exposure_mpe_is_radiant_exposure() {
        let e = skin_mpe_mw_per_cm2(650.0, 1.0, 1.0).unwrap_or(f64::NAN);
        assert!(close(e, 1100.0, 1e-9), "{e}");
        let just_below = skin_mpe_mw_per_cm2(810.0, 9.999, 1.0).unwrap_or(f64::NAN);
        let at = skin_mpe_mw_per_cm2(810.0, 10.0, 1.0).unwrap_or(f64::NAN);
        assert!((just_below - at).abs() / at < 0.03, "{just_below} vs {at}");
    }

    /// clinical-facts.md 'Large areas': falls above about 100 cm2, to 10 mW/cm2 above 1000 cm2.
    #[test]
    fn large_areas_derate_to_10_mw_per_cm2() {
        let small = skin_mpe_mw_per_cm2(890.0, 600.0, 50.0).unwrap_or(f64::NAN);
        let mid = skin_mpe_mw_per_cm2(890.0, 600.0, 500.0).unwrap_or(f64::NAN);
        let big = skin_mpe_mw_per_cm2(890.0, 600.0, 2000.0).unwrap_or(f64::NAN);
        assert!(close(small, 480.0, 5.0));
        assert!(close(mid, 20.0, 1e-9));
        assert!(close(big, 10.0, 1e-9));
    }

    #[test]
    fn mpe_is_unknown_outside_the_table() {
        assert_eq!(skin_mpe_mw_per_cm2(1500.0, 60.0, 1.0), None);
        assert_eq!(skin_mpe_mw_per_cm2(f64::NAN, 60.0, 1.0), None);
        assert_eq!(skin_mpe_mw_per_cm2(810.0, 0.0, 1.0), None);
    }

    /// IEC 60825-1: above 0.5 W is Class 4.
    #[test]
    fn laser_class_is_derived_from_power() {
        assert_eq!(LaserClass::from_max_power_mw(500.0), LaserClass::Class3B);
        assert_eq!(LaserClass::from_max_power_mw(500.1), LaserClass::Class4);
        assert_eq!(LaserClass::from_max_power_mw(4.0), LaserClass::Class3R);
    }

    /// Overrides may only tighten.
    #[test]
    fn overrides_only_tighten() {
        let d = Limits::default();
        let ok = LimitOverrides {
            tens_rms_max_ma: Some(30.0),
            interlock_lead_time_ms: Some(5_000),
            ..LimitOverrides::default()
        };
        let t = d.tightened(&ok);
        assert!(
            matches!(t, Ok(ref l) if l.tens_rms_max_ma == 30.0 && l.interlock_lead_time_ms == 5_000)
        );
        let bad = LimitOverrides {
            tens_rms_max_ma: Some(60.0),
            ..LimitOverrides::default()
        };
        let e = d
            .tightened(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("tens_rms_max_ma") && e.contains("looser"), "{e}");
        let bad = LimitOverrides {
            interlock_lead_time_ms: Some(100),
            ..LimitOverrides::default()
        };
        assert!(d.tightened(&bad).is_err());
        let nan = LimitOverrides {
            heat_max_normal_c: Some(f64::NAN),
            ..LimitOverrides::default()
        };
        assert!(matches!(
            d.tightened(&nan),
            Err(LimitError::NotANumber { .. })
        ));
        let empty = LimitOverrides {
            pbm_point_energy_min_j: Some(7.0),
            pbm_point_energy_max_j: Some(6.0),
            ..LimitOverrides::default()
        };
        assert!(matches!(
            d.tightened(&empty),
            Err(LimitError::EmptyWindow { .. })
        ));
    }
}
