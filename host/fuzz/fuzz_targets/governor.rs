#![no_main]
//! Random device profiles, patients, plans and commands with skin temperature readings between
//! them, drawn from the fuzzer's bytes: the governor never panics and never admits a command
//! over the device profile or the patient-derated limit (the oracle in
//! `modalis_governor::testing`, written from clinical-facts.md, shared with the property
//! tests).
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use modalis_governor::testing::{
    CommandDraw, RawStep, SITES, no_admitted_command_exceeds_limits, patient, profile_toml,
};
use modalis_sdk::Sensation;

/// A number in [0, 1] from the next byte pair.
fn unit(u: &mut Unstructured) -> Result<f64> {
    Ok(f64::from(u.arbitrary::<u16>()?) / f64::from(u16::MAX))
}

fn sensation(u: &mut Unstructured) -> Result<Sensation> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => Sensation::Normal,
        1 => Sensation::Reduced,
        _ => Sensation::Absent,
    })
}

type Scenario = (
    Vec<String>,
    modalis_governor::PatientContext,
    Vec<Vec<RawStep>>,
    Vec<CommandDraw>,
);

fn scenario(u: &mut Unstructured) -> Result<Scenario> {
    let mut texts = Vec::new();
    for _ in 0..u.int_in_range(1..=3usize)? {
        texts.push(profile_toml(
            u.int_in_range(0..=4usize)?,
            u.arbitrary()?,
            unit(u)?,
            unit(u)?,
            unit(u)?,
            u.arbitrary()?,
            u.arbitrary()?,
        ));
    }
    let default = sensation(u)?;
    let mut entries = Vec::new();
    for _ in 0..u.int_in_range(0..=4usize)? {
        entries.push((u.int_in_range(0..=SITES.len() - 1)?, sensation(u)?));
    }
    let patient = patient(default, &entries, u.arbitrary()?);
    let mut raw = Vec::new();
    for _ in 0..3 {
        let mut steps = Vec::new();
        for _ in 0..u.int_in_range(1..=4usize)? {
            steps.push(RawStep {
                site: u.int_in_range(0..=SITES.len() - 1)?,
                duration_s: 0.5 + unit(u)? * 899.5,
                gap_s: unit(u)? * 30.0,
                kind: u.int_in_range(0..=9usize)?,
                x: [unit(u)?, unit(u)?, unit(u)?, unit(u)?],
                scan: u.arbitrary()?,
            });
        }
        raw.push(steps);
    }
    let mut cmds = Vec::new();
    for _ in 0..u.int_in_range(1..=40usize)? {
        cmds.push(CommandDraw {
            step: u.int_in_range(0..=63usize)?,
            frac: unit(u)? * 1.2,
            factor: unit(u)? * 3.0,
            g: unit(u)?,
            temp_c: if u.arbitrary()? {
                Some(30.0 + unit(u)? * 15.0)
            } else {
                None
            },
        });
    }
    Ok((texts, patient, raw, cmds))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((texts, patient, raw, cmds)) = scenario(&mut u) else {
        return;
    };
    if let Err(why) = no_admitted_command_exceeds_limits(&texts, &patient, &raw, &cmds) {
        panic!("{why}");
    }
});
