//! The rule catalogue: every rule id the governor can decide by, with its source.
//!
//! Rule ids are stable strings (dashboards, audit queries and tests match on them). The source
//! names the row of `clinical-facts.md` and the standard or paper behind it; [S] was read in a
//! public source, [K] is the usual reading of a paywalled standard (a configurable default),
//! [C] is calculated.

use serde::Serialize;

/// A rule: a stable id and the source of the limit it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Stable id, `area.name`.
    pub id: &'static str,
    /// Where the limit comes from.
    pub source: &'static str,
}

macro_rules! rules {
    ($($(#[$doc:meta])* $name:ident = $id:literal, $source:literal;)*) => {
        $($(#[$doc])* pub const $name: Rule = Rule { id: $id, source: $source };)*
        /// Every rule, for documentation and tests.
        pub const ALL: &[Rule] = &[$($name,)*];
    };
}

rules! {
    // ---- The plan's own numbers are never trusted.
    /// A number in the plan is non-finite, negative or zero where it must be positive.
    PLAN_NUMBER = "plan.number", "design brief 'The one rule': plugin output is untrusted; 21 CFR 11.10(h) input validity [S]";
    /// The step names a site outside the shared vocabulary.
    PLAN_SITE = "plan.site", "sdk sites.rs vocabulary (WHO 2008 point locations [S]); 21 CFR 11.10(h) input validity [S]";
    /// The block names a device the governor has no profile for.
    PLAN_DEVICE = "plan.device", "design brief: limits come from trusted device profiles only";
    /// The step names a channel the device profile does not have.
    PLAN_CHANNEL = "plan.channel", "design brief: limits come from trusted device profiles only";
    /// The step's setpoint kind does not match the channel (and so the device modality).
    PLAN_KIND = "plan.kind", "device profile: channel kind follows the device modality";
    /// The step's timing overflows or exceeds the longest session the governor accepts.
    PLAN_TIMELINE = "plan.timeline", "engineering default [K]: no combined session longer than 4 h";
    /// Two steps drive the same channel at the same time.
    PLAN_CHANNEL_OVERLAP = "plan.channel_overlap", "a channel has one setpoint at a time (21 CFR 11.10(f) permitted sequencing [S])";
    /// The patient context records no sensation for the site and no default.
    PATIENT_SENSATION = "patient.sensation_unrecorded", "clinical-facts.md rule 2: limits are derated on reduced/absent sensation, so it must be known";

    // ---- Device envelope.
    /// Wavelength not among the channel's.
    DEVICE_WAVELENGTH = "device.wavelength", "device profile (trusted clinic data)";
    /// Power above the channel's maximum.
    DEVICE_POWER = "device.power", "device profile (trusted clinic data)";
    /// Beam area outside what the channel's optics produce.
    DEVICE_BEAM_AREA = "device.beam_area", "device profile (trusted clinic data)";
    /// Scan area not supported or out of range.
    DEVICE_SCAN_AREA = "device.scan_area", "device profile (trusted clinic data)";
    /// Pulse frequency or duty cycle out of range.
    DEVICE_PULSE = "device.pulse", "device profile (trusted clinic data)";
    /// Heat target or power above the channel's maximum.
    DEVICE_HEAT = "device.heat", "device profile (trusted clinic data)";
    /// Electrical parameters outside the channel's envelope.
    DEVICE_ELECTRICAL = "device.electrical", "device profile (trusted clinic data)";

    // ---- Optical.
    /// Eyes and periorbital sites are never treated with any optical or heat source.
    OPTICAL_OCULAR = "optical.ocular", "clinical-facts.md 'Eyes': never treat the periorbital region (BL1, ST1); manufacturers' safety guides [S]";
    /// Skin maximum permissible exposure.
    OPTICAL_MPE = "optical.mpe", "ICNIRP / Directive 2006/25/EC Annex II skin MPE [S]; large areas ICNIRP/ANSI [K]; ICNIRP statement: MPE caps insensate target skin [S]";
    /// LLLT irradiance below 100 mW/cm2 to avoid heating.
    OPTICAL_LLLT_IRRADIANCE = "optical.lllt_irradiance", "clinical-facts.md 'LLLT irradiance': below about 100 mW/cm2 (Hamblin [S]; WALT notes [S])";
    /// Class 4 needs a scanning pattern or an irradiance cap.
    OPTICAL_CLASS4 = "optical.class4_scan", "clinical-facts.md 'Class IV technique': keep the handpiece moving (Class IV manuals [S]); IEC 60825-1 Class 4 above 0.5 W [S]";
    /// Per-point and per-site therapeutic dose window (biphasic dose response).
    OPTICAL_DOSE_WINDOW = "optical.dose_window", "clinical-facts.md 'Therapeutic window': Huang et al. 2009 Dose-Response 7:358 [S]; WALT dose table [S]";
    /// Cumulative fluence per site per day across all optical modalities.
    OPTICAL_DAILY = "optical.daily_ledger", "clinical-facts.md 'Therapeutic window' and session frequency (2-3 sessions/week [S]); daily cap [K]";
    /// Optical contraindications from the patient context.
    OPTICAL_CONTRAINDICATION = "optical.contraindication", "clinical-facts.md 'Contraindications by modality' (optical): malignancy at site, pregnant abdomen/low back, active haemorrhage, photosensitivity [S]";

    // ---- Heat.
    /// Target temperature above the contact limit for the site's sensation.
    HEAT_TEMPERATURE = "heat.temperature", "IEC 60601-1 Table 24 and 11.1.2.2 [K]: 43 C max; insensate skin alarm 40 C, stop 41 C (clinical-facts.md 'Insensate skin')";
    /// Target above 41 C must be disclosed.
    HEAT_DISCLOSURE = "heat.disclosure", "IEC 60601-1 11.1.2.2 [K]: above 41 C must be disclosed";
    /// Heat on skin with no sensation and no temperature feedback.
    HEAT_NO_SENSOR = "heat.no_sensor", "clinical-facts.md 'Contraindications' (heat): absent sensation without temperature feedback; FDA burn reports CAG-00291N [S]";
    /// Heat time per site per session.
    HEAT_SESSION_CAP = "heat.session_cap", "clinical-facts.md 'Session': pad sessions 30-40 min, cap 45 min (Leonard 2004, Clifft 2005, Lavery 2008 [S])";
    /// Heat sessions per site per day.
    HEAT_SESSIONS_PER_DAY = "heat.sessions_per_day", "clinical-facts.md 'Session': at most 2 per site per day (DPL label [S])";
    /// Heat contraindications from the patient context.
    HEAT_CONTRAINDICATION = "heat.contraindication", "clinical-facts.md 'Contraindications' (heat): open wound at site; 'Heat stacking': topical heating agents [S]; malignancy at site (conservative extension [K])";

    // ---- TENS.
    /// r.m.s. output current.
    TENS_RMS = "tens.rms", "IEC 60601-2-10 via Enraf-Nonius IFU [S]: never above 50 mA r.m.s.";
    /// r.m.s. current density per electrode area.
    TENS_DENSITY = "tens.density", "AS 60601.2.10:2018 201.7.9.2.101(g) [S]: above 2 mA r.m.s./cm2 needs operator attention";
    /// Power density into the nominal load.
    TENS_POWER_DENSITY = "tens.power_density", "FDA powered muscle stimulator guidance [S]: below 0.25 W/cm2";
    /// Charge per phase.
    TENS_CHARGE = "tens.charge_per_phase", "clinical-facts.md 'Typical charge' 20 uC per phase [C]; cap 40 uC engineering default [K]";
    /// Energy per pulse into 500 ohm.
    TENS_ENERGY = "tens.energy_per_pulse", "IEC 601-2-10 (older edition) [S]: at most 300 mJ per pulse into 500 ohm";
    /// Net d.c.: monophasic output is refused.
    TENS_BALANCE = "tens.charge_balance", "ANSI/AAMI NS15 [S]: net d.c. about zero (biphasic symmetric or balanced asymmetric)";
    /// Forbidden electrode placements.
    TENS_PLACEMENT = "tens.placement", "IEC 60601-2-10 warnings; TENS manuals [S]: never across the head, eyes, mouth, anterior neck, transthoracic";
    /// Patient contraindications for TENS.
    TENS_CONTRAINDICATION = "tens.contraindication", "IEC 60601-2-10 warnings; TENS manuals [S]: demand pacemaker or ICD, pregnant abdomen, malignancy, broken skin, DVT";
    /// Start from zero and ramp up at a bounded rate.
    TENS_RAMP = "tens.ramp", "clinical-facts.md 'Start': from zero amplitude, ramped (stimulator manuals [S]); start 10 mA and 2 mA/s are engineering defaults [K]";
    /// TENS time per site per session.
    TENS_SESSION_CAP = "tens.session_cap", "clinical-facts.md use cases: TENS 20-60 min (Kumar 1997, Forst 2004, Serry 2016 [S])";

    // ---- Class IV time.
    /// Class IV time per site per session.
    CLASS4_SESSION_CAP = "class4.session_cap", "clinical-facts.md use cases: Class IV 5-15 min per session (BMC Geriatrics 2019;19:218 [S])";

    // ---- Precautions and monitoring.
    /// A precaution that needs an explicit, reasoned override in the patient context.
    PRECAUTION = "precaution.override", "clinical-facts.md 'Contraindications by modality': precautions need an explicit override [S]";
    /// No objective sensing for a source on skin that cannot feel.
    MONITOR_UNSENSED = "monitor.unsensed", "clinical-facts.md rule 2: objective sensing replaces the patient's own feedback on insensate skin";

    // ---- Cross-modality.
    /// Two energy sources on overlapping sites at overlapping times.
    CROSS_OVERLAP = "cross.overlap", "clinical-facts.md 'Heat stacking': no heat and laser on the same site at the same time without a combined thermal budget (vendor precautions [S])";
    /// The combined thermal budget of stacked sources.
    CROSS_BUDGET = "cross.thermal_budget", "clinical-facts.md 'Heat stacking' [S]; hard ceiling 200 mW/cm2 = lowest skin MPE (ICNIRP, 0.2 W/cm2 below 700 nm) [C]";

    // ---- Runtime supervision.
    /// The command is admitted.
    RUN_ADMIT = "run.admit", "approved plan, re-checked at emission time (issue 3 defence in depth)";
    /// A stop is always admitted.
    RUN_OFF = "run.off", "clinical-facts.md 'Start': a stop cuts output at once (stimulator manuals [S])";
    /// The command is not part of the approved plan.
    RUN_NOT_IN_PLAN = "run.not_in_plan", "design brief 'The one rule'; 21 CFR 11.10(f) permitted sequencing [S]";
    /// The command is outside its step's time window.
    RUN_SCHEDULE = "run.schedule", "21 CFR 11.10(f) permitted sequencing [S]";
    /// The command leaves the approved step's envelope.
    RUN_ENVELOPE = "run.envelope", "issue 3: closed-loop adjustments only inside the approved step's envelope";
    /// Defence in depth: the command fails a limit when re-checked.
    RUN_RECHECK = "run.recheck", "issue 3: every command is checked again at emission time (defence in depth)";
    /// E-stop latched.
    RUN_ESTOP = "run.estop", "issue 3: e-stop stops every source, latched until operator reset; OpenICE PCA latching stop [S]";
    /// A tripped limit keeps the source off until re-enabled.
    RUN_TRIPPED = "run.tripped", "Digitimer DS5 manual [S]: an output that exceeded a limit stays off until re-enabled";
    /// Laser interlocks.
    RUN_INTERLOCK = "run.interlock", "21 CFR 1040.10(f) [S]: key, remote interlock, emission indicator before emission; ANSI Z136.1 eyewear [S]; manual reset (f)(10) [K]";
    /// Telemetry older than the staleness limit.
    RUN_STALE = "run.stale", "OpenICE PCA interlock (mdpnp demo-apps) [S]: a reading older than 5 s is unsafe";
    /// Telemetry that cannot be believed (non-finite, from the future, unknown source).
    RUN_TELEMETRY = "run.telemetry", "21 CFR 11.10(h) input validity [S]";
    /// Skin temperature above the alarm level.
    RUN_SKIN_ALARM = "run.skin_temp_alarm", "clinical-facts.md 'Insensate skin': alarm at 40 C [K]; normal skin 42 C engineering default [K]";
    /// Skin temperature above the cut-off.
    RUN_SKIN_CUTOFF = "run.skin_temp_cutoff", "IEC 60601-1 Table 24 [K]: 43 C; insensate stop at 41 C (clinical-facts.md)";
    /// Measured optical power off the setpoint by more than the tolerance.
    RUN_OPTICAL_POWER = "run.optical_power", "21 CFR 1040.11 [S]: delivered power within +/-20 % of the set value";
    /// Light measured while the source should be dark.
    RUN_STRAY_EMISSION = "run.stray_emission", "21 CFR 1040.10(f) [S]: no emission without an admitted command";
    /// A device's telemetry says it is still delivering after the controller stopped it (a
    /// stop acked or not, a lease lapsed): the device is not obeying. Applied by the
    /// runtime, which sees the wire's `delivering` flag; the supervisor sees only admitted
    /// commands.
    RUN_STOP_IGNORED = "run.stop_ignored", "21 CFR 1040.10(f) [S]: no emission without an admitted command; IEC 60601-1 single fault condition [K]: a device that does not stop is an e-stop";
    /// Electrode impedance out of range (electrode lifting).
    RUN_IMPEDANCE = "run.impedance", "FDA special controls ask for impedance monitoring [S]: impedance rising means current density rising: stop";
    /// The lease of an energised source lapsed.
    RUN_LEASE = "run.lease", "fail-safe leases (Pajic et al., PMC3810414; Feng et al. 2014 [S])";
    /// A plugin failed in its closed loop mid-session (a trap, a hang cut off by its fuel or
    /// deadline, memory refused): its block stops, or the session, per the protocol.
    RUN_PLUGIN_FAULT = "run.plugin_fault", "design brief: plugins are untrusted and sandboxed; IEC 60601-1 single fault condition [K]: a failed control element leaves its source safe (off)";
    /// An energy command (a step's setpoint, a lease renewal) still waiting for its audit
    /// record to be written when a stop for its channel came: it is withdrawn, never sent, so
    /// the stop need not wait behind it.
    RUN_SUPERSEDED = "run.superseded", "design brief: write the audit record before publishing an energy command, so one can wait on the disk; IEC 60601-1 single fault condition [K]: taking energy away is never delayed by delivering it";
    /// The step's time is over.
    RUN_STEP_END = "run.step_end", "approved plan timing";
    /// Operator actions (reset, re-enable).
    RUN_OPERATOR = "run.operator", "21 CFR 11.10(e) audit of operator actions [S]";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_sourced() {
        let mut ids: Vec<&str> = ALL.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate rule id");
        for r in ALL {
            assert!(!r.source.is_empty(), "{} has no source", r.id);
            assert!(r.id.contains('.'), "{} is not area.name", r.id);
        }
    }
}
