//! The scenario table: named cases (allowed, clamped and refused plans; telemetry faults),
//! all through the one `check` helper.

use modalis_governor::{
    AlarmPriority, Condition, ConditionKind, DeliveredDose, Interlock, PatientContext, Verdict,
};
use modalis_sdk::{
    BodySite, ElectricalSetpoint, Measurement, ModalityKind, Setpoint, Side, Waveform,
};

use crate::common::*;

use Expect as X;
use Verdict::{Allow, AllowWithWarning as Warn, Clamp, Refuse};

fn with_condition(mut p: PatientContext, kind: ConditionKind, at: Option<&str>) -> PatientContext {
    p.contraindications.push(Condition {
        kind,
        site: at.map(site),
        note: None,
    });
    p
}

fn with_prior(
    mut p: PatientContext,
    at: &str,
    modality: ModalityKind,
    energy_j: f64,
    fluence: f64,
    heat_sessions: u32,
) -> PatientContext {
    p.delivered_today.push(DeliveredDose {
        site: site(at),
        modality,
        energy_j,
        fluence_j_per_cm2: fluence,
        heat_sessions,
    });
    p
}

fn dpn_without_overrides() -> PatientContext {
    let mut p = dpn_patient();
    p.precaution_overrides.clear();
    p
}

fn tens_ramp_area(
    channel: &str,
    at: &str,
    amp: f64,
    hold_s: f64,
    area: f64,
) -> Vec<modalis_sdk::PlanStep> {
    let mut steps = tens_ramp(channel, at, amp, hold_s);
    for s in &mut steps {
        if let Setpoint::Electrical(e) = &mut s.setpoint {
            e.electrode_area_cm2 = area;
        }
    }
    steps
}

fn sc(
    name: &'static str,
    patient: PatientContext,
    blocks: Vec<modalis_governor::Block>,
    expect: Vec<Expect>,
) -> Scenario {
    Scenario {
        name,
        patient,
        blocks,
        events: vec![],
        expect,
    }
}

fn run(
    name: &'static str,
    patient: PatientContext,
    blocks: Vec<modalis_governor::Block>,
    events: Vec<Event>,
    expect: Vec<Expect>,
) -> Scenario {
    Scenario {
        name,
        patient,
        blocks,
        events,
        expect,
    }
}

fn lllt(at: &str, power: f64, dur_s: f64) -> modalis_governor::Block {
    block(
        "lllt",
        LLLT_ID,
        0.0,
        vec![step(0.0, dur_s, "probe", at, optical(808.0, power, 1.0))],
    )
}

fn acu(at: &str, power: f64, dur_s: f64) -> modalis_governor::Block {
    block(
        "acu",
        ACU_ID,
        0.0,
        vec![step(0.0, dur_s, "probe", at, optical(808.0, power, 1.0))],
    )
}

fn pad(at: &str, target: f64, dur_s: f64) -> modalis_governor::Block {
    block(
        "heat",
        MIRE_ID,
        0.0,
        vec![step(0.0, dur_s, "pad-1", at, heat(target, 5.0))],
    )
}

fn scenarios() -> Vec<Scenario> {
    let n = normal_patient;
    vec![
        // ------------------------------------------------------------ allowed
        sc(
            "lllt_within_every_limit_on_normal_skin",
            n(),
            vec![lllt("ST36:left", 80.0, 50.0)],
            vec![X::Verdict(0, Allow), X::Armable(true)],
        ),
        sc(
            "acupuncture_on_insensate_foot_with_reasoned_override",
            dpn_patient(),
            vec![acu("LR3:left", 200.0, 20.0)],
            vec![X::Step(0, Warn, "precaution.override"), X::Armable(true)],
        ),
        sc(
            "mire_pad_39c_on_absent_sensation_with_skin_sensor",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![X::Step(0, Warn, "precaution.override"), X::Armable(true)],
        ),
        sc(
            "tens_ramped_from_zero_then_held",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "lower_leg_lateral:left", 25.0, 1800.0),
            )],
            vec![X::Verdict(0, Allow), X::Verdict(5, Allow), X::Armable(true)],
        ),
        sc(
            "class4_scanned_over_80cm2_within_mpe",
            n(),
            vec![block(
                "c4",
                CLASS4_ID,
                0.0,
                vec![step(
                    0.0,
                    200.0,
                    "handpiece",
                    "foot_dorsum:left",
                    scanned(810.0, 4000.0, 3.0, 80.0),
                )],
            )],
            vec![X::Verdict(0, Allow), X::Armable(true)],
        ),
        sc(
            "heat_41_5c_on_normal_skin_is_disclosed",
            n(),
            vec![pad("thigh:left", 41.5, 1200.0)],
            vec![X::Step(0, Warn, "heat.disclosure")],
        ),
        sc(
            "tens_density_above_2_ma_cm2_warns_on_normal_skin",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp_area("ch1", "lower_leg_lateral:left", 60.0, 600.0, 2.0),
            )],
            vec![X::Step(12, Warn, "tens.density"), X::Armable(true)],
        ),
        sc(
            "heat_then_laser_on_the_same_site_in_sequence",
            n(),
            vec![
                pad("foot_dorsum:left", 40.0, 600.0),
                block(
                    "lllt",
                    LLLT_ID,
                    700.0,
                    vec![step(
                        0.0,
                        50.0,
                        "probe",
                        "LR3:left",
                        optical(808.0, 80.0, 1.0),
                    )],
                ),
            ],
            vec![X::Verdict(0, Allow), X::Verdict(1, Allow), X::Armable(true)],
        ),
        sc(
            "laser_and_tens_on_different_legs_at_once",
            n(),
            vec![
                block(
                    "tens",
                    TENS_ID,
                    0.0,
                    tens_ramp("ch1", "lower_leg_lateral:left", 20.0, 600.0),
                ),
                block(
                    "acu",
                    ACU_ID,
                    30.0,
                    vec![step(
                        0.0,
                        20.0,
                        "probe",
                        "GB34:right",
                        optical(808.0, 200.0, 1.0),
                    )],
                ),
            ],
            vec![X::Armable(true)],
        ),
        // ------------------------------------------------------------ clamped
        sc(
            "lllt_irradiance_above_100_mw_cm2_is_clamped",
            n(),
            vec![lllt("ST36:left", 200.0, 15.0)],
            vec![
                X::Step(0, Clamp, "optical.lllt_irradiance"),
                X::Armable(true),
            ],
        ),
        sc(
            "lllt_power_above_the_device_is_clamped",
            n(),
            vec![lllt("ST36:left", 800.0, 10.0)],
            vec![X::Step(0, Clamp, "device.power")],
        ),
        sc(
            "mpe_caps_irradiance_on_absent_sensation",
            dpn_patient(),
            vec![acu("LR3:left", 400.0, 20.0)],
            vec![X::Step(0, Clamp, "optical.mpe")],
        ),
        sc(
            "mpe_caps_irradiance_on_reduced_sensation",
            dpn_patient(),
            vec![acu("ST36:left", 340.0, 20.0)],
            vec![X::Step(0, Clamp, "optical.mpe")],
        ),
        sc(
            "mpe_exceeded_on_normal_skin_is_a_warning_for_class_3b",
            n(),
            vec![acu("ST36:left", 400.0, 10.0)],
            vec![X::Step(0, Warn, "optical.mpe")],
        ),
        sc(
            "class4_beam_held_still_is_capped_at_the_mpe",
            n(),
            vec![block(
                "c4",
                CLASS4_ID,
                0.0,
                vec![step(
                    0.0,
                    60.0,
                    "handpiece",
                    "thigh:left",
                    optical(810.0, 4000.0, 3.0),
                )],
            )],
            vec![X::Step(0, Clamp, "optical.class4_scan")],
        ),
        sc(
            "class4_scan_averaging_above_the_mpe_is_capped",
            n(),
            vec![block(
                "c4",
                CLASS4_ID,
                0.0,
                vec![step(
                    0.0,
                    60.0,
                    "handpiece",
                    "thigh:left",
                    scanned(810.0, 15000.0, 3.0, 30.0),
                )],
            )],
            vec![X::Step(0, Clamp, "optical.class4_scan")],
        ),
        sc(
            "heat_above_43c_is_clamped_on_normal_skin",
            n(),
            vec![pad("thigh:left", 45.0, 600.0)],
            vec![X::Step(0, Clamp, "heat.temperature")],
        ),
        sc(
            "heat_on_insensate_skin_is_clamped_to_40c",
            dpn_patient(),
            vec![pad("foot_plantar:left", 42.0, 600.0)],
            vec![X::Step(0, Clamp, "heat.temperature")],
        ),
        sc(
            "heat_longer_than_45_min_is_shortened",
            n(),
            vec![pad("thigh:left", 39.0, 3000.0)],
            vec![X::Step(0, Clamp, "heat.session_cap")],
        ),
        sc(
            "tens_density_is_clamped_on_reduced_sensation",
            dpn_patient(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp_area("ch1", "lower_leg_lateral:left", 60.0, 600.0, 2.0),
            )],
            vec![X::Step(12, Clamp, "tens.density")],
        ),
        sc(
            "acupoint_energy_adds_up_to_the_8_j_maximum",
            n(),
            vec![block(
                "acu",
                ACU_ID,
                0.0,
                vec![
                    step(0.0, 30.0, "probe", "LR3:left", optical(808.0, 200.0, 1.0)),
                    step(40.0, 30.0, "probe", "LR3:left", optical(808.0, 200.0, 1.0)),
                ],
            )],
            vec![
                X::Verdict(0, Allow),
                X::Step(1, Clamp, "optical.dose_window"),
            ],
        ),
        sc(
            "bafeng_1_and_lr2_are_one_site_in_the_ledger",
            n(),
            vec![block(
                "acu",
                ACU_ID,
                0.0,
                vec![
                    step(
                        0.0,
                        30.0,
                        "probe",
                        "EX-LE10-1:left",
                        optical(808.0, 200.0, 1.0),
                    ),
                    step(40.0, 30.0, "probe", "LR2:left", optical(808.0, 200.0, 1.0)),
                ],
            )],
            vec![X::Step(1, Clamp, "optical.dose_window")],
        ),
        sc(
            "bafeng_3_is_its_own_site",
            n(),
            vec![block(
                "acu",
                ACU_ID,
                0.0,
                vec![
                    step(
                        0.0,
                        30.0,
                        "probe",
                        "EX-LE10-3:left",
                        optical(808.0, 200.0, 1.0),
                    ),
                    step(40.0, 30.0, "probe", "LR2:left", optical(808.0, 200.0, 1.0)),
                ],
            )],
            vec![X::Verdict(1, Allow)],
        ),
        sc(
            "dose_delivered_earlier_today_counts",
            with_prior(n(), "LR3:left", ModalityKind::LaserAcupuncture, 6.0, 6.0, 0),
            vec![acu("LR3:left", 200.0, 30.0)],
            vec![X::Step(0, Clamp, "optical.dose_window")],
        ),
        sc(
            "daily_fluence_cap_spans_modalities_and_sessions",
            with_prior(
                n(),
                "foot_dorsum:left",
                ModalityKind::Photobiomodulation,
                60.0,
                25.0,
                0,
            ),
            vec![block(
                "c4",
                CLASS4_ID,
                0.0,
                vec![step(
                    0.0,
                    200.0,
                    "handpiece",
                    "foot_dorsum:left",
                    scanned(810.0, 4000.0, 3.0, 80.0),
                )],
            )],
            vec![X::Step(0, Clamp, "optical.daily_ledger")],
        ),
        sc(
            "lllt_energy_per_point_above_8_j_is_shortened",
            n(),
            vec![lllt("ST36:left", 100.0, 150.0)],
            vec![X::Step(0, Clamp, "optical.dose_window")],
        ),
        // ------------------------------------------------------------ refused
        sc(
            "laser_at_the_eye_is_refused",
            n(),
            vec![lllt("periorbital:left", 50.0, 20.0)],
            vec![X::Step(0, Refuse, "optical.ocular"), X::Armable(false)],
        ),
        sc(
            "laser_at_bl1_is_refused",
            n(),
            vec![acu("BL1:left", 50.0, 20.0)],
            vec![X::Step(0, Refuse, "optical.ocular")],
        ),
        sc(
            "unknown_device_is_refused",
            n(),
            vec![block(
                "x",
                "no-such-device",
                0.0,
                vec![step(
                    0.0,
                    10.0,
                    "probe",
                    "ST36:left",
                    optical(808.0, 50.0, 1.0),
                )],
            )],
            vec![X::Step(0, Refuse, "plan.device")],
        ),
        sc(
            "unknown_channel_is_refused",
            n(),
            vec![block(
                "x",
                LLLT_ID,
                0.0,
                vec![step(
                    0.0,
                    10.0,
                    "laser",
                    "ST36:left",
                    optical(808.0, 50.0, 1.0),
                )],
            )],
            vec![X::Step(0, Refuse, "plan.channel")],
        ),
        sc(
            "nan_power_is_refused",
            n(),
            vec![lllt("ST36:left", f64::NAN, 10.0)],
            vec![X::Step(0, Refuse, "plan.number")],
        ),
        sc(
            "infinite_power_is_refused",
            n(),
            vec![lllt("ST36:left", f64::INFINITY, 10.0)],
            vec![X::Step(0, Refuse, "plan.number")],
        ),
        sc(
            "negative_amplitude_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                vec![step(
                    0.0,
                    10.0,
                    "ch1",
                    "lower_leg_lateral:left",
                    tens(-5.0, 250.0, 14.0),
                )],
            )],
            vec![X::Step(0, Refuse, "plan.number")],
        ),
        sc(
            "infinite_heat_target_is_refused",
            n(),
            vec![pad("thigh:left", f64::INFINITY, 60.0)],
            vec![X::Step(0, Refuse, "plan.number")],
        ),
        sc(
            "heat_setpoint_on_a_laser_is_refused",
            n(),
            vec![block(
                "x",
                LLLT_ID,
                0.0,
                vec![step(0.0, 10.0, "probe", "ST36:left", heat(39.0, 5.0))],
            )],
            vec![X::Step(0, Refuse, "plan.kind")],
        ),
        sc(
            "wavelength_the_device_lacks_is_refused",
            n(),
            vec![block(
                "x",
                LLLT_ID,
                0.0,
                vec![step(
                    0.0,
                    10.0,
                    "probe",
                    "ST36:left",
                    optical(660.0, 50.0, 1.0),
                )],
            )],
            vec![X::Step(0, Refuse, "device.wavelength")],
        ),
        sc(
            "unknown_acupoint_is_refused",
            n(),
            vec![{
                let mut b = lllt("ST36:left", 50.0, 10.0);
                if let Some(s) = b.plan.steps.get_mut(0) {
                    s.site = BodySite::point("XX99", Side::Left);
                }
                b
            }],
            vec![X::Step(0, Refuse, "plan.site")],
        ),
        sc(
            "monophasic_tens_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                vec![step(
                    0.0,
                    10.0,
                    "ch1",
                    "lower_leg_lateral:left",
                    Setpoint::Electrical(monophasic()),
                )],
            )],
            vec![X::Step(0, Refuse, "tens.charge_balance")],
        ),
        sc(
            "tens_on_the_anterior_neck_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "anterior_neck:midline", 10.0, 60.0),
            )],
            vec![X::Step(0, Refuse, "tens.placement")],
        ),
        sc(
            "tens_across_the_chest_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "chest:left", 10.0, 60.0),
            )],
            vec![X::Step(0, Refuse, "tens.placement")],
        ),
        sc(
            "tens_with_a_demand_pacemaker_is_refused",
            with_condition(n(), ConditionKind::DemandPacemaker, None),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "lower_leg_lateral:left", 10.0, 60.0),
            )],
            vec![X::Step(0, Refuse, "tens.contraindication")],
        ),
        sc(
            "tens_over_the_pregnant_abdomen_is_refused",
            with_condition(n(), ConditionKind::Pregnancy, None),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "abdomen:midline", 10.0, 60.0),
            )],
            vec![X::Step(0, Refuse, "tens.contraindication")],
        ),
        sc(
            "tens_starting_at_30_ma_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                vec![step(
                    0.0,
                    600.0,
                    "ch1",
                    "lower_leg_lateral:left",
                    tens(30.0, 250.0, 14.0),
                )],
            )],
            vec![X::Step(0, Refuse, "tens.ramp")],
        ),
        sc(
            "tens_ramp_too_steep_is_refused",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                vec![
                    step(
                        0.0,
                        5.0,
                        "ch1",
                        "lower_leg_lateral:left",
                        tens(2.0, 250.0, 14.0),
                    ),
                    step(
                        5.0,
                        600.0,
                        "ch1",
                        "lower_leg_lateral:left",
                        tens(30.0, 250.0, 14.0),
                    ),
                ],
            )],
            vec![X::Verdict(0, Allow), X::Step(1, Refuse, "tens.ramp")],
        ),
        sc(
            "heat_and_laser_on_one_site_at_once_are_refused",
            n(),
            vec![
                pad("foot_dorsum:left", 40.0, 600.0),
                block(
                    "lllt",
                    LLLT_ID,
                    60.0,
                    vec![step(
                        0.0,
                        50.0,
                        "probe",
                        "LR3:left",
                        optical(808.0, 80.0, 1.0),
                    )],
                ),
            ],
            vec![
                X::Step(0, Refuse, "cross.overlap"),
                X::Step(1, Refuse, "cross.overlap"),
            ],
        ),
        sc(
            "laser_over_active_tens_electrodes_is_refused",
            n(),
            vec![
                block(
                    "tens",
                    TENS_ID,
                    0.0,
                    tens_ramp("ch1", "lower_leg_lateral:left", 20.0, 600.0),
                ),
                block(
                    "acu",
                    ACU_ID,
                    60.0,
                    vec![step(
                        0.0,
                        20.0,
                        "probe",
                        "GB34:left",
                        optical(808.0, 200.0, 1.0),
                    )],
                ),
            ],
            vec![X::Step(5, Refuse, "cross.overlap")],
        ),
        sc(
            "photosensitivity_refuses_every_optical_step",
            with_condition(n(), ConditionKind::Photosensitivity, None),
            vec![lllt("ST36:left", 50.0, 30.0)],
            vec![X::Step(0, Refuse, "optical.contraindication")],
        ),
        sc(
            "malignancy_at_the_site_refuses_laser",
            with_condition(n(), ConditionKind::Malignancy, Some("thigh:left")),
            vec![lllt("ST34:left", 50.0, 30.0)],
            vec![X::Step(0, Refuse, "optical.contraindication")],
        ),
        sc(
            "open_wound_refuses_heat_there",
            with_condition(n(), ConditionKind::OpenWound, Some("foot_plantar:left")),
            vec![pad("foot_plantar:left", 39.0, 600.0)],
            vec![X::Step(0, Refuse, "heat.contraindication")],
        ),
        sc(
            "topical_heating_agent_refuses_heat",
            with_condition(n(), ConditionKind::TopicalHeatingAgent, None),
            vec![pad("thigh:left", 39.0, 600.0)],
            vec![X::Step(0, Refuse, "heat.contraindication")],
        ),
        sc(
            "decreased_sensation_without_override_is_refused",
            dpn_without_overrides(),
            vec![acu("LR3:left", 100.0, 20.0)],
            vec![X::Step(0, Refuse, "precaution.override")],
        ),
        sc(
            "unrecorded_sensation_is_refused",
            PatientContext::new("NONE", None),
            vec![lllt("ST36:left", 50.0, 30.0)],
            vec![X::Step(0, Refuse, "patient.sensation_unrecorded")],
        ),
        sc(
            "third_heat_session_of_the_day_is_refused",
            with_prior(n(), "thigh:left", ModalityKind::InfraredHeat, 0.0, 0.0, 2),
            vec![pad("thigh:left", 39.0, 600.0)],
            vec![X::Step(0, Refuse, "heat.sessions_per_day")],
        ),
        sc(
            "two_steps_on_one_channel_at_once_are_refused",
            n(),
            vec![block(
                "lllt",
                LLLT_ID,
                0.0,
                vec![
                    step(0.0, 30.0, "probe", "ST36:left", optical(808.0, 50.0, 1.0)),
                    step(10.0, 30.0, "probe", "ST36:right", optical(808.0, 50.0, 1.0)),
                ],
            )],
            vec![
                X::Step(0, Refuse, "plan.channel_overlap"),
                X::Step(1, Refuse, "plan.channel_overlap"),
            ],
        ),
        sc(
            "acupoint_already_at_its_maximum_today_is_refused",
            with_prior(n(), "LR3:left", ModalityKind::LaserAcupuncture, 8.0, 8.0, 0),
            vec![acu("LR3:left", 200.0, 20.0)],
            vec![X::Step(0, Refuse, "optical.dose_window")],
        ),
        sc(
            "duplicate_block_ids_cannot_be_armed",
            n(),
            vec![
                lllt("ST36:left", 50.0, 30.0),
                lllt("ST36:right", 50.0, 30.0),
            ],
            vec![X::Armable(false)],
        ),
        sc(
            "an_empty_protocol_cannot_be_armed",
            n(),
            vec![],
            vec![X::Armable(false)],
        ),
        // ------------------------------------------------------------ runtime and telemetry faults
        run(
            "skin_over_the_41c_cutoff_stops_the_pad",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 2.0,
                    now_s: 2.0,
                    m: Measurement::SkinTempC(41.5),
                },
            ],
            vec![
                X::Admission(0, true, "run.admit"),
                X::Action("run.skin_temp_cutoff"),
                X::Alarm(AlarmPriority::High, "run.skin_temp_cutoff"),
                X::Energised(MIRE_ID, "pad-1", false),
            ],
        ),
        run(
            "skin_over_the_40c_alarm_reduces_the_pad",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 2.0,
                    now_s: 2.0,
                    m: Measurement::SkinTempC(40.4),
                },
            ],
            vec![
                X::Action("run.skin_temp_alarm"),
                X::Alarm(AlarmPriority::Medium, "run.skin_temp_alarm"),
                X::Energised(MIRE_ID, "pad-1", true),
            ],
        ),
        run(
            "measured_laser_power_230_percent_of_setpoint_stops_the_device",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![
                Event::Ready {
                    device: ACU_ID,
                    now_s: 0.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.5,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: ACU_ID,
                    channel: "probe",
                    at_s: 3.0,
                    now_s: 3.0,
                    m: Measurement::OpticalPowerMw(460.0),
                },
            ],
            vec![
                X::Admission(0, true, "run.admit"),
                X::Action("run.optical_power"),
                X::Alarm(AlarmPriority::High, "run.optical_power"),
                X::AllOff,
            ],
        ),
        run(
            "a_lease_renewal_is_sent_while_it_extends_the_lease",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 10.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 0.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 0.5,
                    now_s: 0.5,
                    m: Measurement::SkinTempC(35.0),
                },
                Event::Renew { now_s: 0.5 },
            ],
            vec![X::Action("run.renew"), X::Energised(MIRE_ID, "pad-1", true)],
        ),
        run(
            // The first lease already runs to the step's end (1.5 s): a renewal would extend
            // nothing and reach the device as it stops by itself.
            "no_lease_renewal_when_the_lease_already_runs_to_the_step_end",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1.5)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 0.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 0.5,
                    now_s: 0.5,
                    m: Measurement::SkinTempC(35.0),
                },
                Event::Renew { now_s: 1.0 },
            ],
            vec![
                X::NoAction("run.renew"),
                X::Energised(MIRE_ID, "pad-1", true),
            ],
        ),
        run(
            "stale_telemetry_trips_the_watchdog",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 2.0,
                    now_s: 2.0,
                    m: Measurement::SkinTempC(35.0),
                },
                Event::Renew { now_s: 2.5 },
                Event::Renew { now_s: 4.0 },
                Event::Renew { now_s: 5.5 },
                Event::Renew { now_s: 7.1 },
            ],
            vec![
                X::Action("run.stale"),
                X::Alarm(AlarmPriority::High, "run.stale"),
                X::AllOff,
            ],
        ),
        run(
            "a_reading_older_than_5_s_is_unsafe",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 1.0,
                    now_s: 6.5,
                    m: Measurement::SkinTempC(35.0),
                },
            ],
            vec![X::Action("run.stale"), X::AllOff],
        ),
        run(
            "electrode_lifting_stops_the_tens_channel",
            n(),
            vec![block(
                "tens",
                TENS_ID,
                0.0,
                tens_ramp("ch1", "lower_leg_lateral:left", 20.0, 600.0),
            )],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 0.5,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: TENS_ID,
                    channel: "ch1",
                    at_s: 1.0,
                    now_s: 1.0,
                    m: Measurement::ImpedanceOhm(20_000.0),
                },
            ],
            vec![
                X::Action("run.impedance"),
                X::Alarm(AlarmPriority::Medium, "run.impedance"),
                X::Energised(TENS_ID, "ch1", false),
            ],
        ),
        run(
            "e_stop_stops_everything_and_latches",
            n(),
            vec![
                pad("thigh:left", 39.0, 1800.0),
                block(
                    "tens",
                    TENS_ID,
                    0.0,
                    tens_ramp("ch1", "lower_leg_lateral:left", 20.0, 600.0),
                ),
            ],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Admit {
                    step: 1,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Estop { now_s: 2.0 },
                Event::Admit {
                    step: 0,
                    now_s: 3.0,
                    setpoint: None,
                },
            ],
            vec![
                X::Admission(0, true, "run.admit"),
                X::Admission(1, true, "run.admit"),
                X::Alarm(AlarmPriority::High, "run.estop"),
                X::Admission(2, false, "run.estop"),
                X::AllOff,
            ],
        ),
        run(
            "door_opening_stops_the_laser_and_it_stays_off",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![
                Event::Ready {
                    device: ACU_ID,
                    now_s: 0.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.5,
                    setpoint: None,
                },
                Event::Interlock {
                    device: ACU_ID,
                    input: Interlock::DoorClosed,
                    on: false,
                    now_s: 4.0,
                },
                Event::Interlock {
                    device: ACU_ID,
                    input: Interlock::DoorClosed,
                    on: true,
                    now_s: 5.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 8.0,
                    setpoint: None,
                },
            ],
            vec![
                X::Admission(0, true, "run.admit"),
                X::Action("run.interlock"),
                X::Admission(1, false, "run.tripped"),
                X::AllOff,
            ],
        ),
        run(
            "laser_without_key_door_and_eyewear_is_refused",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![Event::Admit {
                step: 0,
                now_s: 1.0,
                setpoint: None,
            }],
            vec![X::Admission(0, false, "run.interlock"), X::AllOff],
        ),
        run(
            "emission_indicator_must_lead_by_2_s",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![
                Event::Ready {
                    device: ACU_ID,
                    now_s: 0.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.5,
                    setpoint: None,
                },
            ],
            vec![
                X::Admission(0, false, "run.interlock"),
                X::Admission(1, true, "run.admit"),
            ],
        ),
        run(
            "command_above_the_approved_envelope_is_refused",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![
                Event::Ready {
                    device: ACU_ID,
                    now_s: 0.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.5,
                    setpoint: Some(optical(808.0, 300.0, 1.0)),
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.6,
                    setpoint: Some(optical(808.0, 150.0, 1.0)),
                },
            ],
            vec![
                X::Admission(0, false, "run.envelope"),
                X::Admission(1, true, "run.admit"),
            ],
        ),
        run(
            "lease_lapses_without_renewal",
            n(),
            vec![pad("thigh:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 2.0,
                    now_s: 2.0,
                    m: Measurement::SkinTempC(35.0),
                },
                Event::Tick { now_s: 3.5 },
            ],
            vec![X::Action("run.lease"), X::AllOff],
        ),
        run(
            "light_from_a_dark_laser_stops_it",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![Event::Telemetry {
                device: ACU_ID,
                channel: "probe",
                at_s: 1.0,
                now_s: 1.0,
                m: Measurement::OpticalPowerMw(50.0),
            }],
            vec![
                X::Action("run.stray_emission"),
                X::Alarm(AlarmPriority::High, "run.stray_emission"),
            ],
        ),
        run(
            "nan_skin_temperature_is_a_sensor_fault",
            dpn_patient(),
            vec![pad("foot_plantar:left", 39.0, 1800.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 1.0,
                    setpoint: None,
                },
                Event::Telemetry {
                    device: MIRE_ID,
                    channel: "pad-1",
                    at_s: 2.0,
                    now_s: 2.0,
                    m: Measurement::SkinTempC(f64::NAN),
                },
            ],
            vec![X::Action("run.telemetry"), X::AllOff],
        ),
        run(
            "withdrawn_eyewear_stops_every_laser",
            n(),
            vec![acu("ST36:left", 200.0, 20.0)],
            vec![
                Event::Ready {
                    device: ACU_ID,
                    now_s: 0.0,
                },
                Event::Admit {
                    step: 0,
                    now_s: 2.5,
                    setpoint: None,
                },
                Event::Eyewear {
                    on: false,
                    now_s: 3.0,
                },
            ],
            vec![
                X::Admission(0, true, "run.admit"),
                X::Alarm(AlarmPriority::High, "run.interlock"),
                X::AllOff,
            ],
        ),
        run(
            "command_outside_its_step_time_is_refused",
            n(),
            vec![pad("thigh:left", 39.0, 60.0)],
            vec![Event::Admit {
                step: 0,
                now_s: 61.0,
                setpoint: None,
            }],
            vec![X::Admission(0, false, "run.schedule")],
        ),
        run(
            "step_end_stops_the_source",
            n(),
            vec![pad("thigh:left", 39.0, 2.0)],
            vec![
                Event::Admit {
                    step: 0,
                    now_s: 0.5,
                    setpoint: None,
                },
                Event::Tick { now_s: 2.0 },
            ],
            vec![X::Action("run.step_end"), X::AllOff],
        ),
    ]
}

fn monophasic() -> ElectricalSetpoint {
    ElectricalSetpoint {
        frequency_hz: 14.0,
        pulse_width_us: 250.0,
        amplitude_ma: 5.0,
        waveform: Waveform::Monophasic,
        electrode_area_cm2: 25.0,
        burst_pulses: 0,
        burst_rate_hz: 0.0,
    }
}

#[test]
fn scenario_table() {
    let all = scenarios();
    assert!(all.len() >= 40, "only {} scenarios", all.len());
    let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "scenario names must be unique");
    for s in &all {
        check(s);
    }
}
