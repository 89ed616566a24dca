//! Conversions between the SDK's types and WIT-generated bindings.
//!
//! Guests (wit-bindgen) and the host (wasmtime's `bindgen!`) generate Rust types for
//! `wit/plugin.wit` with the same names and shapes. This one macro implements `From` both ways
//! between those types and the SDK's, so the two sides convert through identical code.

/// Implements `From` between the SDK's types and the WIT `types` interface bindings at `$w`.
#[doc(hidden)]
#[macro_export]
macro_rules! __wit_conversions {
    ($($w:ident)::+) => {
        const _: () = {
            use $($w)::+ as w;
            $crate::__wit_conversions!(@enum w, ModalityKind, [Photobiomodulation, Other, Tens, InfraredHeat, LaserAcupuncture], {Class4Laser <=> ClassFourLaser});
            $crate::__wit_conversions!(@enum w, ChannelKind, [Optical, Heat, Electrical], {});
            $crate::__wit_conversions!(@enum w, Side, [Left, Right, Midline], {});
            $crate::__wit_conversions!(@enum w, Sensation, [Normal, Reduced, Absent], {});
            $crate::__wit_conversions!(@enum w, Waveform, [SymmetricBiphasic, AsymmetricBiphasic, Monophasic], {});
            $crate::__wit_conversions!(@enum w, BodyRegion, [
                FootDorsum, FootPlantar, FootMedial, FootLateral, Toes, Ankle, LowerLegAnterior,
                LowerLegPosterior, LowerLegLateral, LowerLegMedial, Knee, Thigh, HandDorsum,
                HandPalmar, Fingers, Wrist, Forearm, Elbow, UpperArm, Shoulder, LowerBack, UpperBack,
                PosteriorNeck, Abdomen, Chest, AnteriorNeck, Head, Face, Mouth, Periorbital, Eye
            ], {});

            $crate::__wit_conversions!(@record w, ChannelInfo, [name: id, kind: into, description: id, units: id]);
            $crate::__wit_conversions!(@record w, Manifest, [id: id, name: id, version: id, vendor: id, modality: into, params_schema: id, channels: vec, sample_params: id]);
            $crate::__wit_conversions!(@record w, FieldError, [pointer: id, message: id]);
            $crate::__wit_conversions!(@record w, BodySite, [location: into, side: into]);
            $crate::__wit_conversions!(@record w, SiteSensation, [site: into, sensation: into]);
            $crate::__wit_conversions!(@record w, Patient, [sensation: vec, conditions: id]);
            $crate::__wit_conversions!(@record w, OpticalSetpoint, [wavelength_nm: id, power_mw: id, beam_area_cm2: id, pulse_frequency_hz: id, duty_cycle: id, scan_area_cm2: id]);
            $crate::__wit_conversions!(@record w, HeatSetpoint, [target_temp_c: id, power_limit_w: id]);
            $crate::__wit_conversions!(@record w, ElectricalSetpoint, [frequency_hz: id, pulse_width_us: id, amplitude_ma: id, waveform: into, electrode_area_cm2: id, burst_pulses: id, burst_rate_hz: id]);
            $crate::__wit_conversions!(@record w, PlanStep, [offset_ms: id, duration_ms: id, channel: id, site: into, setpoint: into, label: id]);
            $crate::__wit_conversions!(@record w, SessionPlan, [steps: vec, notes: id]);
            $crate::__wit_conversions!(@record w, PlanError, [message: id, field_errors: vec]);
            $crate::__wit_conversions!(@record w, TelemetrySample, [channel: id, elapsed_ms: id, measurement: into]);
            $crate::__wit_conversions!(@record w, Adjustment, [channel: id, setpoint: into]);

            impl From<w::Location> for $crate::sites::Location {
                fn from(v: w::Location) -> Self {
                    match v {
                        w::Location::Region(r) => $crate::sites::Location::Region(r.into()),
                        w::Location::Acupoint(c) => $crate::sites::Location::Acupoint(c),
                    }
                }
            }
            impl From<$crate::sites::Location> for w::Location {
                fn from(v: $crate::sites::Location) -> Self {
                    match v {
                        $crate::sites::Location::Region(r) => w::Location::Region(r.into()),
                        $crate::sites::Location::Acupoint(c) => w::Location::Acupoint(c),
                    }
                }
            }
            impl From<w::Setpoint> for $crate::types::Setpoint {
                fn from(v: w::Setpoint) -> Self {
                    match v {
                        w::Setpoint::Optical(x) => $crate::types::Setpoint::Optical(x.into()),
                        w::Setpoint::Heat(x) => $crate::types::Setpoint::Heat(x.into()),
                        w::Setpoint::Electrical(x) => $crate::types::Setpoint::Electrical(x.into()),
                        w::Setpoint::Off => $crate::types::Setpoint::Off,
                    }
                }
            }
            impl From<$crate::types::Setpoint> for w::Setpoint {
                fn from(v: $crate::types::Setpoint) -> Self {
                    match v {
                        $crate::types::Setpoint::Optical(x) => w::Setpoint::Optical(x.into()),
                        $crate::types::Setpoint::Heat(x) => w::Setpoint::Heat(x.into()),
                        $crate::types::Setpoint::Electrical(x) => w::Setpoint::Electrical(x.into()),
                        $crate::types::Setpoint::Off => w::Setpoint::Off,
                    }
                }
            }
            impl From<w::Measurement> for $crate::types::Measurement {
                fn from(v: w::Measurement) -> Self {
                    match v {
                        w::Measurement::SkinTempC(x) => $crate::types::Measurement::SkinTempC(x),
                        w::Measurement::OpticalPowerMw(x) => $crate::types::Measurement::OpticalPowerMw(x),
                        w::Measurement::ImpedanceOhm(x) => $crate::types::Measurement::ImpedanceOhm(x),
                    }
                }
            }
            impl From<$crate::types::Measurement> for w::Measurement {
                fn from(v: $crate::types::Measurement) -> Self {
                    match v {
                        $crate::types::Measurement::SkinTempC(x) => w::Measurement::SkinTempC(x),
                        $crate::types::Measurement::OpticalPowerMw(x) => w::Measurement::OpticalPowerMw(x),
                        $crate::types::Measurement::ImpedanceOhm(x) => w::Measurement::ImpedanceOhm(x),
                    }
                }
            }

        };
    };

    (@enum $w:ident, $name:ident, [$($v:ident),* $(,)?], {$($sdk:ident <=> $wit:ident),*}) => {
        impl From<$w::$name> for $crate::__sdk_type!($name) {
            fn from(v: $w::$name) -> Self {
                match v {
                    $($w::$name::$v => Self::$v,)*
                    $($w::$name::$wit => Self::$sdk,)*
                }
            }
        }
        impl From<$crate::__sdk_type!($name)> for $w::$name {
            fn from(v: $crate::__sdk_type!($name)) -> Self {
                type S = $crate::__sdk_type!($name);
                match v {
                    $(S::$v => Self::$v,)*
                    $(S::$sdk => Self::$wit,)*
                }
            }
        }
    };

    (@record $w:ident, $name:ident, [$($f:ident : $mode:ident),* $(,)?]) => {
        impl From<$w::$name> for $crate::__sdk_type!($name) {
            fn from(v: $w::$name) -> Self {
                Self { $($f: $crate::__wit_conversions!(@field $mode, v.$f),)* }
            }
        }
        impl From<$crate::__sdk_type!($name)> for $w::$name {
            fn from(v: $crate::__sdk_type!($name)) -> Self {
                Self { $($f: $crate::__wit_conversions!(@field $mode, v.$f),)* }
            }
        }
    };

    (@field id, $e:expr) => { $e };
    (@field into, $e:expr) => { ($e).into() };
    (@field vec, $e:expr) => { ($e).into_iter().map(Into::into).collect() };
}

/// The SDK path of a contract type by its bare name.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdk_type {
    (BodyRegion) => {
        $crate::sites::BodyRegion
    };
    (BodySite) => {
        $crate::sites::BodySite
    };
    (Side) => {
        $crate::sites::Side
    };
    ($name:ident) => {
        $crate::types::$name
    };
}
