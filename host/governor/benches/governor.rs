//! Governor speed: `admit` and `observe` at most 1 us median each, a pre-check of a 200-step
//! combined protocol at most 1 ms (issue 3). Run with
//! `CARGO_TARGET_DIR=/work/targets/governor cargo bench -p modalis-governor`.
//!
//! Besides criterion's own report, a summary at the end prints each median next to its budget
//! and as a ratio to a floor measured in the same run (cloning a `Command`), so a slow machine
//! shows up as a slow floor rather than a false alarm (design brief, "What done looks like").

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};

use modalis_governor::*;
use modalis_sdk::{
    BodySite, ElectricalSetpoint, HeatSetpoint, Measurement, OpticalSetpoint, PlanStep,
    SessionPlan, Setpoint, Waveform,
};

const LLLT: &str = include_str!("../../../examples/profiles/lllt-808.toml");
const CLASS4: &str = include_str!("../../../examples/profiles/class4-15w.toml");
const MIRE: &str = include_str!("../../../examples/profiles/mire-pads.toml");
const TENS: &str = include_str!("../../../examples/profiles/tens-2ch.toml");
const ACU: &str = include_str!("../../../examples/profiles/laser-acupuncture-probe.toml");
const DPN: &str = include_str!("../../../examples/patients/dpn-example.toml");

fn site(s: &str) -> BodySite {
    s.parse().unwrap_or_else(|_| {
        BodySite::region(modalis_sdk::BodyRegion::Thigh, modalis_sdk::Side::Left)
    })
}

fn step(offset_ms: u64, duration_ms: u64, channel: &str, at: &str, setpoint: Setpoint) -> PlanStep {
    PlanStep {
        offset_ms,
        duration_ms,
        channel: channel.into(),
        site: site(at),
        setpoint,
        label: String::new(),
    }
}

fn optical(power_mw: f64) -> Setpoint {
    Setpoint::Optical(OpticalSetpoint {
        wavelength_nm: 808.0,
        power_mw,
        beam_area_cm2: 1.0,
        pulse_frequency_hz: 0.0,
        duty_cycle: 1.0,
        scan_area_cm2: None,
    })
}

fn tens(amplitude_ma: f64) -> Setpoint {
    Setpoint::Electrical(ElectricalSetpoint {
        frequency_hz: 14.0,
        pulse_width_us: 250.0,
        amplitude_ma,
        waveform: Waveform::SymmetricBiphasic,
        electrode_area_cm2: 25.0,
        burst_pulses: 0,
        burst_rate_hz: 0.0,
    })
}

fn block(id: &str, device: &str, start_ms: u64, steps: Vec<PlanStep>) -> Block {
    Block {
        block_id: id.into(),
        plugin_id: id.into(),
        device_id: device.into(),
        start_offset_ms: start_ms,
        plan: SessionPlan {
            steps,
            notes: vec![],
        },
    }
}

fn governor() -> Option<Governor> {
    let profiles = [
        (LLLT, "lllt"),
        (CLASS4, "class4"),
        (MIRE, "mire"),
        (TENS, "tens"),
        (ACU, "acu"),
    ]
    .iter()
    .map(|(t, n)| DeviceProfile::from_toml_str(t, n).ok())
    .collect::<Option<Vec<_>>>()?;
    let patient = PatientContext::from_toml_str(DPN, "dpn").ok()?;
    Governor::new(profiles, patient).ok()
}

/// A 200-step DPN combined protocol: 4 pads, 2 TENS channels (ramp + hold), 40 laser
/// acupuncture steps, 144 LLLT grid steps.
fn protocol_200() -> Vec<Block> {
    let pads = [
        ("pad-1", "foot_plantar:left"),
        ("pad-2", "foot_dorsum:left"),
        ("pad-3", "foot_plantar:right"),
        ("pad-4", "foot_dorsum:right"),
    ]
    .iter()
    .map(|(c, s)| {
        step(
            0,
            1_800_000,
            c,
            s,
            Setpoint::Heat(HeatSetpoint {
                target_temp_c: 39.0,
                power_limit_w: 5.0,
            }),
        )
    })
    .collect();
    let mut tens_steps = Vec::new();
    for (ch, at) in [
        ("ch1", "lower_leg_lateral:left"),
        ("ch2", "lower_leg_lateral:right"),
    ] {
        for k in 0..5u64 {
            tens_steps.push(step(k * 5_000, 5_000, ch, at, tens(2.0 + 5.0 * k as f64)));
        }
        tens_steps.push(step(25_000, 1_700_000, ch, at, tens(25.0)));
    }
    let points = [
        "ST36",
        "SP9",
        "SP6",
        "GB39",
        "LR3",
        "GB41",
        "EX-LE10-1",
        "EX-LE10-2",
        "EX-LE10-3",
        "EX-LE10-4",
    ];
    let mut acu = Vec::new();
    let mut t = 0;
    for side in ["left", "right"] {
        for _pass in 0..2 {
            for p in points {
                acu.push(step(
                    t,
                    10_000,
                    "probe",
                    &format!("{p}:{side}"),
                    optical(200.0),
                ));
                t += 12_000;
            }
        }
    }
    let mut lllt = Vec::new();
    let mut t = 0;
    for side in ["left", "right"] {
        for _ in 0..72 {
            lllt.push(step(
                t,
                15_000,
                "probe",
                &format!("foot_dorsum:{side}"),
                optical(100.0),
            ));
            t += 17_000;
        }
    }
    vec![
        block("heat", "mire-pads", 0, pads),
        block("tens", "tens-2ch", 0, tens_steps),
        block("acu", "laser-acu-3b", 1_800_000, acu),
        block("lllt", "lllt-808", 2_400_000, lllt),
    ]
}

struct Fixture {
    gov: Governor,
    blocks: Vec<Block>,
    sup: Supervisor,
    heat_cmd: Command,
    laser_cmd: Command,
    tel: Telemetry,
}

fn fixture() -> Option<Fixture> {
    let gov = governor()?;
    let blocks = protocol_200();
    let pre = gov.precheck(&blocks);
    assert_eq!(pre.steps.len(), 200);
    assert!(pre.can_arm(), "{}", pre.report);
    let mut sup = gov.arm(&pre, 0).ok()?;
    for input in [
        Interlock::KeySwitch,
        Interlock::DoorClosed,
        Interlock::EmissionIndicator,
    ] {
        let _ = sup.interlock("laser-acu-3b", input, true, 0);
    }
    let _ = sup.confirm_eyewear(true, 0);
    let heat = pre.steps.first()?;
    let heat_cmd = Command {
        device_id: heat.device_id.clone(),
        channel: heat.channel.clone(),
        site: heat.site.clone(),
        setpoint: heat.approved?.setpoint,
        step: heat.step.clone(),
    };
    let acu = pre.steps.iter().find(|s| s.device_id == "laser-acu-3b")?;
    let laser_cmd = Command {
        device_id: acu.device_id.clone(),
        channel: acu.channel.clone(),
        site: acu.site.clone(),
        setpoint: acu.approved?.setpoint,
        step: acu.step.clone(),
    };
    let tel = Telemetry {
        device_id: heat.device_id.clone(),
        channel: heat.channel.clone(),
        measured_at_ms: 0,
        measurement: Measurement::SkinTempC(36.5),
    };
    // The benchmarked paths are the admitting ones, not early refusals.
    let d = sup.admit(&heat_cmd, 10_000);
    assert!(d.admitted(), "{d:?}");
    let d = sup.admit(&laser_cmd, 1_805_000);
    assert!(d.admitted(), "{d:?}");
    let mut t = tel.clone();
    t.measured_at_ms = 10_000;
    assert!(sup.observe(&t, 10_000).is_empty());
    Some(Fixture {
        gov,
        blocks,
        sup,
        heat_cmd,
        laser_cmd,
        tel,
    })
}

fn benches(c: &mut Criterion) {
    let Some(mut f) = fixture() else {
        eprintln!("fixture failed");
        return;
    };
    c.bench_function("floor: clone a Command", |b| {
        b.iter(|| black_box(&f.heat_cmd).clone())
    });
    c.bench_function("admit (heat pad)", |b| {
        b.iter(|| f.sup.admit(black_box(&f.heat_cmd), black_box(10_000)))
    });
    c.bench_function("admit (Class 3B laser, interlocks)", |b| {
        b.iter(|| f.sup.admit(black_box(&f.laser_cmd), black_box(1_805_000)))
    });
    let mut tel = f.tel.clone();
    c.bench_function("observe (skin temperature, in range)", |b| {
        b.iter(|| {
            tel.measured_at_ms = 10_000;
            f.sup.observe(black_box(&tel), black_box(10_000))
        })
    });
    c.bench_function("precheck (200-step combined protocol)", |b| {
        b.iter(|| f.gov.precheck(black_box(&f.blocks)))
    });
}

criterion_group!(group, benches);

/// Median of `n` timed runs of `batch` calls each, in nanoseconds per call.
fn median_ns(n: usize, batch: u32, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(batch)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(n / 2).copied().unwrap_or(f64::NAN)
}

fn summary() {
    let Some(mut f) = fixture() else { return };
    let floor = median_ns(201, 1000, || {
        black_box(black_box(&f.heat_cmd).clone());
    });
    let admit = median_ns(201, 1000, || {
        black_box(f.sup.admit(black_box(&f.heat_cmd), 10_000));
    });
    let admit_laser = median_ns(201, 1000, || {
        black_box(f.sup.admit(black_box(&f.laser_cmd), 1_805_000));
    });
    let mut tel = f.tel.clone();
    tel.measured_at_ms = 10_000;
    let observe = median_ns(201, 1000, || {
        black_box(f.sup.observe(black_box(&tel), 10_000));
    });
    let pre = median_ns(51, 5, || {
        black_box(f.gov.precheck(black_box(&f.blocks)));
    });
    println!(
        "\ngovernor budget summary (median, ns per call; floor = clone a Command = {floor:.0} ns)"
    );
    for (name, ns, budget) in [
        ("admit (heat)", admit, 1_000.0),
        ("admit (laser)", admit_laser, 1_000.0),
        ("observe", observe, 1_000.0),
        ("precheck 200 steps", pre, 1_000_000.0),
    ] {
        let verdict = if ns <= budget { "ok" } else { "OVER BUDGET" };
        println!(
            "  {name:<20} {ns:>12.0} ns  budget {budget:>9.0} ns  {:>8.1}x floor  {verdict}",
            ns / floor
        );
    }
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
