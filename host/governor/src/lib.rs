//! # modalis-governor
//!
//! The safety governor of modalis: the only path from a plugin's plan to a device command.
//! Plugins propose; the governor disposes.
//!
//! ## What it trusts, and what it does not
//!
//! * **Trusted:** device profiles ([`DeviceProfile`], TOML written by the clinic and
//!   validated), the patient context ([`PatientContext`]: sensation per site,
//!   contraindications, doses already delivered today, explicit precaution overrides) and the
//!   limits of `clinical-facts.md` ([`Limits`], every constant citing its source). A clinic may
//!   make any limit stricter, never looser.
//! * **Not trusted:** anything a plugin returns. Every dose is recomputed from the setpoints
//!   (energy = power x time, fluence = energy / area, r.m.s. current from amplitude, phase
//!   width and rate); non-finite, negative, unknown-site and unknown-channel input is refused.
//!   The plan's own areas are not believed where a smaller, worse one is physically possible:
//!   safety ceilings use the smallest spot the optics produce and the smaller of the plan's and
//!   the profile's electrode area.
//! * **Not trusted either:** telemetry. Readings from the future, non-finite readings and
//!   readings older than the staleness limit count as unsafe.
//!
//! ## How it is used
//!
//! 1. [`Governor::precheck`] takes the combined protocol ([`Block`]s of plugin plans on one
//!    timeline) and returns a verdict per step ([`Verdict`]: allow, allow with warning, clamp,
//!    refuse; each [`Finding`] with a rule id, reason, values and source) plus a
//!    [`DoseReport`] (JSON and a table) that the clinic reads before arming.
//! 2. [`Governor::arm`] turns an armable pre-check into a [`Supervisor`].
//! 3. The runtime calls [`Supervisor::admit`] for every command, [`Supervisor::observe`] for
//!    every telemetry sample, [`Supervisor::tick`] and [`Supervisor::renew_leases`]
//!    periodically, and the interlock, e-stop and operator methods as events arrive. Each
//!    returns data ([`Decision`], [`Action`]) to audit, publish and carry out.
//!
//! ## Pure logic, time as an argument
//!
//! No I/O, no threads, no clocks: every time is an argument (`now_ms`, monotonic
//! milliseconds), so the same inputs always give the same decisions and every path can be
//! tested exhaustively. Reading files, publishing and timing belong to the runtime.
//!
//! The governor is software: it is the last of several barriers, never a replacement for the
//! hardware ones (key switch, door interlock, thermal fuse, current limiter). A governor that
//! is the only barrier against a burn or a retinal injury is IEC 62304 class C.

mod checks;
pub mod limits;
mod load;
pub mod patient;
pub mod precheck;
pub mod profile;
pub mod report;
pub mod rules;
pub mod schema;
mod site;
pub mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verdict;

pub use limits::{LaserClass, LimitError, LimitOverrides, Limits};
pub use load::LoadError;
pub use patient::{
    Condition, ConditionKind, DeliveredDose, PatientContext, Precaution, PrecautionOverride,
    SensationEntry,
};
pub use precheck::{Approved, Block, Governor, GovernorError, Precheck, StepRef, StepVerdict};
pub use profile::{
    ChannelProfile, ChannelSpec, CombinedUse, DeviceProfile, ElectricalChannel, Emitter,
    HeatChannel, OpticalChannel, SafetyHardware,
};
pub use report::{DoseReport, ReportFinding, SiteReport};
pub use rules::Rule;
pub use supervisor::{
    Action, Admission, Alarm, AlarmPriority, ArmError, Command, Decision, Interlock, Lease,
    Supervisor, Telemetry,
};
pub use verdict::{Finding, Value, Verdict};
