//! The simulated physics: a first-order skin temperature model, measured optical power with
//! noise, electrode impedance; and a small seeded random number generator so that runs are
//! reproducible.
//!
//! The numbers are illustrative, chosen so that a simulated device behaves plausibly in the
//! demo (a pad at its rated power warms the skin by about 8 C); they are no clinical data and
//! nothing safety-related uses them.

use modalis_governor::ChannelSpec;
use modalis_sdk::Setpoint;

/// Skin temperature rise at steady state per mW/cm2 of heat delivered by a contact pad or
/// lamp, C. A 6 W pad on 150 cm2 (40 mW/cm2) settles 8 C above baseline.
pub const HEAT_C_PER_MW_CM2: f64 = 0.2;

/// Skin temperature rise at steady state per mW/cm2 of light, C: most near-infrared light is
/// absorbed below the sensor, so less than for contact heat.
pub const OPTICAL_C_PER_MW_CM2: f64 = 0.02;

/// Relative standard size of the noise on a reading (1 %).
pub const NOISE_FRACTION: f64 = 0.01;

/// SplitMix64: tiny, fast and deterministic for a given seed, which is all a simulator's noise
/// needs (it is not for cryptography).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal noise with mean 0 and standard deviation about 1 (the sum of three
    /// uniforms, bounded to +/-3 so a reading can never go wild).
    pub fn noise(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0
    }
}

/// A stable 64-bit hash (FNV-1a) of a device id, to give each device its own noise stream
/// from one seed independent of the order devices are listed in.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The physical state of one channel's treatment site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// True skin temperature, C.
    pub skin_temp_c: f64,
    /// Electrode-skin impedance without noise, ohm.
    pub impedance_ohm: f64,
}

/// What a channel puts out for a setpoint: (delivered power in W, power density in mW/cm2 for
/// the thermal model, the rise per mW/cm2). `drift` scales the actual output (a drifting
/// source delivers, and its own sensor measures, the drifted power).
pub fn output(spec: &ChannelSpec, setpoint: &Setpoint, baseline_c: f64, drift: f64) -> Output {
    match (spec, setpoint) {
        (ChannelSpec::Heat(h), Setpoint::Heat(s)) => {
            let area = h.contact_area_cm2.max(1.0);
            // The device's controller is feed-forward from its nominal model: the power it
            // believes holds the target. A site that heats faster than the model (the
            // overheating fault) therefore overshoots, as a real pad pressed into the skin
            // would.
            let c_per_w = HEAT_C_PER_MW_CM2 * 1000.0 / area;
            let wanted_w = ((s.target_temp_c - baseline_c) / c_per_w).max(0.0);
            let power_w = wanted_w.min(s.power_limit_w.min(h.max_power_w)).max(0.0) * drift;
            Output {
                power_mw: power_w * 1000.0,
                density_mw_cm2: power_w * 1000.0 / area,
                c_per_mw_cm2: HEAT_C_PER_MW_CM2,
            }
        }
        (ChannelSpec::Optical(_), Setpoint::Optical(o)) => {
            let area = o.scan_area_cm2.unwrap_or(o.beam_area_cm2).max(0.01);
            let power_mw = o.power_mw.max(0.0) * drift;
            Output {
                power_mw,
                density_mw_cm2: power_mw / area,
                c_per_mw_cm2: OPTICAL_C_PER_MW_CM2,
            }
        }
        // Stimulation current heats skin negligibly; the kind mismatch cases never run (the
        // device refuses such commands), and Off delivers nothing.
        _ => Output::default(),
    }
}

/// A channel's output.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Output {
    /// Emitted power, mW (optical power for light sources).
    pub power_mw: f64,
    /// Power density on the site, mW/cm2.
    pub density_mw_cm2: f64,
    /// Steady-state rise per mW/cm2, C.
    pub c_per_mw_cm2: f64,
}

/// Advances the site's temperature by `dt_s` towards the steady state of `out`, with time
/// constant `tau_s` and the overheating factor `gain` on the heating.
pub fn step_temperature(
    site: &mut Site,
    out: Output,
    baseline_c: f64,
    gain: f64,
    dt_s: f64,
    tau_s: f64,
) {
    let steady = baseline_c + out.density_mw_cm2 * out.c_per_mw_cm2 * gain;
    let alpha = if tau_s > 0.0 {
        1.0 - (-dt_s / tau_s).exp()
    } else {
        1.0
    };
    site.skin_temp_c += (steady - site.skin_temp_c) * alpha.clamp(0.0, 1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..1000 {
            let x = a.noise();
            assert_eq!(x, b.noise());
            assert!((-3.0..=3.0).contains(&x));
        }
    }

    #[test]
    fn temperature_approaches_steady_state() {
        let mut site = Site {
            skin_temp_c: 32.0,
            impedance_ohm: 500.0,
        };
        let out = Output {
            power_mw: 6000.0,
            density_mw_cm2: 40.0,
            c_per_mw_cm2: HEAT_C_PER_MW_CM2,
        };
        for _ in 0..1000 {
            step_temperature(&mut site, out, 32.0, 1.0, 0.1, 5.0);
        }
        assert!(
            (site.skin_temp_c - 40.0).abs() < 0.01,
            "{}",
            site.skin_temp_c
        );
        for _ in 0..1000 {
            step_temperature(&mut site, out, 32.0, 2.0, 0.1, 5.0);
        }
        assert!(
            (site.skin_temp_c - 48.0).abs() < 0.01,
            "{}",
            site.skin_temp_c
        );
    }
}
