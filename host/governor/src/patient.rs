//! The patient context: the governor's own, trusted record of the patient. Plugins see only a
//! reduced copy; the contraindications and derated limits come from this one.
//!
//! ```toml
//! id = "P-7F3A"                 # pseudonymous
//! default_sensation = "normal"  # optional: without it, an unrecorded site is refused
//!
//! [[sensation]]
//! site = "foot_dorsum:left"
//! sensation = "absent"
//!
//! [[contraindications]]
//! kind = "malignancy"
//! site = "thigh:right"
//!
//! [[delivered_today]]
//! site = "ST36:left"
//! modality = "laser-acupuncture"
//! energy_j = 2.0
//! fluence_j_per_cm2 = 4.0
//!
//! [[precaution_overrides]]
//! precaution = "reduced-sensation"
//! modality = "photobiomodulation"
//! reason = "DPN protocol; skin temperature and output power monitored"
//! clinician = "Dr. A"
//! ```

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use modalis_sdk::{BodySite, ModalityKind, Sensation};

use crate::load::{LoadError, from_toml};

/// Sensation recorded at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensationEntry {
    /// The site (a region covers the points inside it).
    #[schemars(with = "crate::schema::SiteName")]
    pub site: BodySite,
    /// Sensation there.
    pub sensation: Sensation,
}

/// A contraindication or precaution-relevant condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionKind {
    /// Demand pacemaker (whole body).
    DemandPacemaker,
    /// Implanted cardioverter-defibrillator (whole body).
    Icd,
    /// Pregnancy (whole body; abdomen and low back are refused).
    Pregnancy,
    /// Known malignancy at a site.
    Malignancy,
    /// Photosensitivity disorder (whole body).
    Photosensitivity,
    /// Epilepsy (whole body).
    Epilepsy,
    /// Heart disease (whole body).
    HeartDisease,
    /// Open wound or broken skin at a site.
    OpenWound,
    /// Active haemorrhage at a site.
    ActiveHaemorrhage,
    /// Deep vein thrombosis at a site.
    Dvt,
    /// Recent irradiation (radiotherapy); at a site, or anywhere when no site is given.
    RecentIrradiation,
    /// A topical heating agent applied; at a site, or anywhere when no site is given.
    TopicalHeatingAgent,
}

impl ConditionKind {
    /// Whether the condition is located at a site (`true`), applies to the whole body
    /// (`false`), or either (`None`).
    fn sited(self) -> Option<bool> {
        match self {
            ConditionKind::Malignancy
            | ConditionKind::OpenWound
            | ConditionKind::ActiveHaemorrhage
            | ConditionKind::Dvt => Some(true),
            ConditionKind::RecentIrradiation | ConditionKind::TopicalHeatingAgent => None,
            _ => Some(false),
        }
    }

    /// kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionKind::DemandPacemaker => "demand-pacemaker",
            ConditionKind::Icd => "icd",
            ConditionKind::Pregnancy => "pregnancy",
            ConditionKind::Malignancy => "malignancy",
            ConditionKind::Photosensitivity => "photosensitivity",
            ConditionKind::Epilepsy => "epilepsy",
            ConditionKind::HeartDisease => "heart-disease",
            ConditionKind::OpenWound => "open-wound",
            ConditionKind::ActiveHaemorrhage => "active-haemorrhage",
            ConditionKind::Dvt => "dvt",
            ConditionKind::RecentIrradiation => "recent-irradiation",
            ConditionKind::TopicalHeatingAgent => "topical-heating-agent",
        }
    }
}

/// One recorded condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// What.
    pub kind: ConditionKind,
    /// Where, for conditions located at a site.
    #[serde(default)]
    #[schemars(with = "Option<crate::schema::SiteName>")]
    pub site: Option<BodySite>,
    /// Free text for the clinician.
    #[serde(default)]
    pub note: Option<String>,
}

/// Dose already delivered today at a site (earlier sessions), so the ledger spans sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveredDose {
    /// The site.
    #[schemars(with = "crate::schema::SiteName")]
    pub site: BodySite,
    /// The modality that delivered it.
    pub modality: ModalityKind,
    /// Optical energy, J.
    #[serde(default)]
    pub energy_j: f64,
    /// Optical fluence, J/cm2.
    #[serde(default)]
    pub fluence_j_per_cm2: f64,
    /// Heat sessions at the site today.
    #[serde(default)]
    pub heat_sessions: u32,
}

/// A precaution that needs an explicit override (clinical-facts.md 'Contraindications by
/// modality', precaution column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Precaution {
    /// Decreased (reduced or absent) sensation at the site: optical, heat, TENS ("poorly
    /// innervated areas").
    ReducedSensation,
    /// Recent irradiation at the site (optical).
    RecentIrradiation,
    /// Pacemaker (optical; sources disagree).
    Pacemaker,
    /// Epilepsy: optical with pulsed 5-10 Hz visible light; TENS.
    Epilepsy,
    /// Heart disease (TENS).
    HeartDisease,
}

impl Precaution {
    /// kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Precaution::ReducedSensation => "reduced-sensation",
            Precaution::RecentIrradiation => "recent-irradiation",
            Precaution::Pacemaker => "pacemaker",
            Precaution::Epilepsy => "epilepsy",
            Precaution::HeartDisease => "heart-disease",
        }
    }
}

/// The clinician's explicit, reasoned decision to go ahead despite a precaution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrecautionOverride {
    /// Which precaution.
    pub precaution: Precaution,
    /// Only for this modality (any when absent).
    #[serde(default)]
    pub modality: Option<ModalityKind>,
    /// Only at this site (and sites overlapping it; any when absent).
    #[serde(default)]
    #[schemars(with = "Option<crate::schema::SiteName>")]
    pub site: Option<BodySite>,
    /// Why: required, non-empty; shown in the dose report and audited.
    pub reason: String,
    /// Who decided.
    pub clinician: String,
}

/// The patient context file's validator, compiled once for every context loaded.
static PATIENT_SCHEMA: LazyLock<jsonschema::Validator> =
    LazyLock::new(crate::schema::compile::<PatientContext>);

/// The trusted patient context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientContext {
    /// Pseudonymous id (no names in modalis).
    pub id: String,
    /// Sensation assumed at sites not listed; when absent, such sites are refused (the
    /// governor assumes nothing).
    #[serde(default)]
    pub default_sensation: Option<Sensation>,
    /// Sensation per site.
    #[serde(default)]
    pub sensation: Vec<SensationEntry>,
    /// Contraindications and conditions.
    #[serde(default)]
    pub contraindications: Vec<Condition>,
    /// Doses already delivered today.
    #[serde(default)]
    pub delivered_today: Vec<DeliveredDose>,
    /// Explicit precaution overrides.
    #[serde(default)]
    pub precaution_overrides: Vec<PrecautionOverride>,
}

impl PatientContext {
    /// A context with only an id and the given default sensation.
    pub fn new(id: impl Into<String>, default_sensation: Option<Sensation>) -> Self {
        PatientContext {
            id: id.into(),
            default_sensation,
            sensation: Vec::new(),
            contraindications: Vec::new(),
            delivered_today: Vec::new(),
            precaution_overrides: Vec::new(),
        }
    }

    /// Reads and validates a patient context from TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<PatientContext, LoadError> {
        let p: PatientContext = from_toml(text, origin, &PATIENT_SCHEMA)?;
        p.validate(origin)?;
        Ok(p)
    }

    /// Checks what serde cannot: non-empty id, sited conditions have a site, numbers are
    /// finite and non-negative, overrides give a reason.
    pub fn validate(&self, origin: &str) -> Result<(), LoadError> {
        let err = |field: String, msg: String| LoadError::field(origin, field, msg);
        if self.id.trim().is_empty() {
            return Err(err(
                "id".into(),
                "expected a non-empty pseudonymous id".into(),
            ));
        }
        for (i, s) in self.sensation.iter().enumerate() {
            if !s.site.is_known() {
                return Err(err(
                    format!("sensation[{i}].site"),
                    format!("{} is not in the site vocabulary", s.site),
                ));
            }
        }
        for (i, c) in self.contraindications.iter().enumerate() {
            match (c.kind.sited(), &c.site) {
                (Some(true), None) => {
                    return Err(err(
                        format!("contraindications[{i}].site"),
                        format!(
                            "{} is located at a site: expected `site = \"REGION:side\"`",
                            c.kind.as_str()
                        ),
                    ));
                }
                (Some(false), Some(s)) => {
                    return Err(err(
                        format!("contraindications[{i}].site"),
                        format!(
                            "{} applies to the whole body; remove `site = \"{s}\"`",
                            c.kind.as_str()
                        ),
                    ));
                }
                _ => {}
            }
        }
        for (i, d) in self.delivered_today.iter().enumerate() {
            for (field, value) in [
                ("energy_j", d.energy_j),
                ("fluence_j_per_cm2", d.fluence_j_per_cm2),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(err(
                        format!("delivered_today[{i}].{field}"),
                        format!("expected a finite number >= 0, got {value}"),
                    ));
                }
            }
        }
        for (i, o) in self.precaution_overrides.iter().enumerate() {
            if o.reason.trim().is_empty() {
                return Err(err(
                    format!("precaution_overrides[{i}].reason"),
                    "an override needs a reason the clinic can audit; expected non-empty text"
                        .into(),
                ));
            }
            if o.clinician.trim().is_empty() {
                return Err(err(
                    format!("precaution_overrides[{i}].clinician"),
                    "expected the deciding clinician".into(),
                ));
            }
        }
        Ok(())
    }

    /// The worst sensation recorded at any site overlapping `site`, or the default; `None`
    /// when nothing is recorded and there is no default.
    pub fn sensation_at(&self, site: &BodySite) -> Option<Sensation> {
        self.sensation
            .iter()
            .filter(|s| s.site.overlaps(site))
            .map(|s| s.sensation)
            .max()
            .or(self.default_sensation)
    }

    /// Whether a whole-body condition is recorded.
    pub fn has(&self, kind: ConditionKind) -> bool {
        self.contraindications.iter().any(|c| c.kind == kind)
    }

    /// The first condition of `kind` at a site overlapping `site` (conditions recorded without
    /// a site count everywhere).
    pub fn condition_at(&self, kind: ConditionKind, site: &BodySite) -> Option<&Condition> {
        self.contraindications
            .iter()
            .find(|c| c.kind == kind && c.site.as_ref().is_none_or(|s| s.overlaps(site)))
    }

    /// The override of `precaution` for this modality and site, if the clinician gave one.
    pub fn override_for(
        &self,
        precaution: Precaution,
        modality: ModalityKind,
        site: &BodySite,
    ) -> Option<&PrecautionOverride> {
        self.precaution_overrides.iter().find(|o| {
            o.precaution == precaution
                && o.modality.is_none_or(|m| m == modality)
                && o.site.as_ref().is_none_or(|s| s.overlaps(site))
        })
    }
}
