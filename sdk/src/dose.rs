//! Dose arithmetic shared by plugins and the governor.
//!
//! The governor never believes a plugin's dose figures: it recomputes them from setpoints with
//! these same functions. Units are in the names; inputs are taken as given (callers check
//! finiteness and sign), so these are plain arithmetic.

use crate::types::{ElectricalSetpoint, Waveform};

/// Energy delivered by `power_mw` for `duration_ms`: E = P x t (J).
pub fn energy_j(power_mw: f64, duration_ms: u64) -> f64 {
    (power_mw / 1000.0) * (duration_ms as f64 / 1000.0)
}

/// Fluence: energy per area (J/cm2).
pub fn fluence_j_per_cm2(energy_j: f64, area_cm2: f64) -> f64 {
    energy_j / area_cm2
}

/// Irradiance: power per area (mW/cm2).
pub fn irradiance_mw_per_cm2(power_mw: f64, area_cm2: f64) -> f64 {
    power_mw / area_cm2
}

/// Time needed to deliver `energy_j` at `power_mw`: t = E / P, rounded up to a whole
/// millisecond so the delivered dose is never short.
pub fn time_for_energy_ms(energy_j: f64, power_mw: f64) -> u64 {
    let ms = energy_j / (power_mw / 1000.0) * 1000.0;
    // Tolerate floating-point noise just above a whole millisecond (e.g. 1.0 J at 100 mW).
    (ms - 1e-6).ceil().max(0.0) as u64
}

/// Number of phases per pulse for the r.m.s. formula: biphasic pulses put current through the
/// tissue in both phases (Enraf-Nonius IFU: "phase doubled for symmetric biphasic").
pub fn phases_per_pulse(waveform: Waveform) -> f64 {
    match waveform {
        Waveform::SymmetricBiphasic | Waveform::AsymmetricBiphasic => 2.0,
        Waveform::Monophasic => 1.0,
    }
}

/// r.m.s. current of a rectangular pulse train:
/// I_rms = I_peak * sqrt(phase_us * phases * f_Hz * 1e-6) (Enraf-Nonius IFU; clinical-facts.md).
pub fn rms_current_ma(
    peak_ma: f64,
    pulse_width_us: f64,
    pulse_rate_hz: f64,
    waveform: Waveform,
) -> f64 {
    let duty = pulse_width_us * phases_per_pulse(waveform) * pulse_rate_hz * 1e-6;
    peak_ma * duty.clamp(0.0, 1.0).sqrt()
}

/// r.m.s. current of an electrical setpoint, accounting for burst modulation.
pub fn setpoint_rms_ma(e: &ElectricalSetpoint) -> f64 {
    rms_current_ma(
        e.amplitude_ma,
        e.pulse_width_us,
        e.effective_pulse_rate_hz(),
        e.waveform,
    )
}

/// Charge in one phase: Q = I x t (uC). 80 mA x 250 us = 20 uC (clinical-facts.md).
pub fn charge_per_phase_uc(peak_ma: f64, pulse_width_us: f64) -> f64 {
    peak_ma * pulse_width_us / 1000.0
}

/// Current density: r.m.s. current per electrode area (mA/cm2).
pub fn current_density_ma_per_cm2(rms_ma: f64, electrode_area_cm2: f64) -> f64 {
    rms_ma / electrode_area_cm2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn energy_and_fluence() {
        // 100 mW for 30 s = 3 J; over 0.5 cm2 = 6 J/cm2.
        assert!(close(energy_j(100.0, 30_000), 3.0));
        assert!(close(fluence_j_per_cm2(3.0, 0.5), 6.0));
        assert!(close(irradiance_mw_per_cm2(100.0, 0.5), 200.0));
    }

    #[test]
    fn time_for_energy_rounds_up_and_is_exact_on_whole_ms() {
        assert_eq!(time_for_energy_ms(1.0, 100.0), 10_000);
        assert_eq!(time_for_energy_ms(4.0, 150.0), 26_667);
    }

    #[test]
    fn charge_per_phase_matches_clinical_facts_example() {
        // clinical-facts.md: 80 mA x 250 us = 20 uC per phase.
        assert!(close(charge_per_phase_uc(80.0, 250.0), 20.0));
    }

    #[test]
    fn rms_current_doubles_phase_for_biphasic() {
        // 40 mA peak, 250 us, 100 Hz biphasic: duty = 250e-6 * 2 * 100 = 0.05.
        let rms = rms_current_ma(40.0, 250.0, 100.0, Waveform::SymmetricBiphasic);
        assert!(close(rms, 40.0 * 0.05f64.sqrt()));
        let mono = rms_current_ma(40.0, 250.0, 100.0, Waveform::Monophasic);
        assert!(close(mono, 40.0 * 0.025f64.sqrt()));
    }

    #[test]
    fn burst_uses_effective_rate() {
        let e = ElectricalSetpoint {
            frequency_hz: 100.0,
            pulse_width_us: 200.0,
            amplitude_ma: 30.0,
            waveform: Waveform::SymmetricBiphasic,
            electrode_area_cm2: 16.0,
            burst_pulses: 7,
            burst_rate_hz: 2.0,
        };
        assert!(close(
            setpoint_rms_ma(&e),
            rms_current_ma(30.0, 200.0, 14.0, Waveform::SymmetricBiphasic)
        ));
    }
}
