//! Named protocol sets: which points a set treats, and where the list comes from.
//!
//! Codes are WHO standard codes of the SDK's vocabulary (`modalis_sdk::sites::ACUPOINTS`).
//! Multi-location extra points are written as their group code (`EX-LE10` for the four Bafeng
//! points, `EX-LE12` for the five Qiduan points) and expanded to the individual points when
//! planning, so each toe web or toe tip is its own step and its own site.

/// A named point set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointSet {
    /// Name used in the parameters (`"set": "dpn"`).
    pub name: &'static str,
    /// What it is for and where it comes from.
    pub description: &'static str,
    /// Point codes, in treatment order (proximal to distal, as the operator moves down the leg).
    pub points: &'static [&'static str],
}

/// The sets this plugin knows. Each says which trial or source it follows.
pub const SETS: &[PointSet] = &[
    // Trials 2013;14:225 (electroacupuncture for painful diabetic neuropathy, three-armed pilot
    // protocol): 12 standard points, bilateral ST36, GB39, SP9, SP6, LR3 and GB41. The same
    // points, one laser dose each, are the default diabetic peripheral neuropathy set.
    PointSet {
        name: "dpn",
        description: "diabetic peripheral neuropathy: ST36, GB39, SP9, SP6, LR3, GB41 (Trials 2013;14:225)",
        points: &["ST36", "SP9", "SP6", "GB39", "LR3", "GB41"],
    },
    // The whole neuropathy point list of clinical-facts.md ("What clinics actually run", laser
    // acupuncture row), which gathers Litscher 2012, the ACUDIN trial (BMC Neurol 2018;18:40),
    // Trials 2013;14:225 and Cho & Kim 2021. A long session (19 sites per side).
    PointSet {
        name: "dpn-extended",
        description: "the full lower-limb neuropathy list: ST34, ST36, SP9, GB34, SP6, GB39, KI3, BL60, LR3, GB41, Bafeng, Qiduan (clinical-facts.md: Litscher 2012; ACUDIN; Trials 2013;14:225; Cho & Kim 2021)",
        points: &[
            "ST34", "ST36", "SP9", "GB34", "SP6", "GB39", "KI3", "BL60", "LR3", "GB41", "EX-LE10",
            "EX-LE12",
        ],
    },
    // The distal points of the same clinical-facts.md list: where diabetic neuropathy starts (the
    // toes, in a stocking distribution).
    PointSet {
        name: "dpn-foot",
        description: "distal foot and ankle points of the neuropathy list: KI3, BL60, LR3, GB41, Bafeng (clinical-facts.md)",
        points: &["KI3", "BL60", "LR3", "GB41", "EX-LE10"],
    },
    // EX-LE10 Bafeng alone: four toe webs per foot (clinical-facts.md, acupuncture points).
    PointSet {
        name: "bafeng",
        description: "EX-LE10 Bafeng: the four toe webs of each foot",
        points: &["EX-LE10"],
    },
    // EX-LE12 Qiduan alone: the five toe tips per foot (clinical-facts.md, acupuncture points).
    PointSet {
        name: "qiduan",
        description: "EX-LE12 Qiduan: the tips of the five toes of each foot",
        points: &["EX-LE12"],
    },
    // Upper-limb neuropathy points of clinical-facts.md (LI4, LI11, PC6, HT7; EX-UE9 Baxie).
    // LI4 carries a traditional pregnancy caution.
    PointSet {
        name: "upper-limb",
        description: "upper-limb neuropathy: LI11, PC6, HT7, LI4, Baxie (clinical-facts.md)",
        points: &["LI11", "PC6", "HT7", "LI4", "EX-UE9"],
    },
];

/// The set called `name` (case-insensitive).
pub fn set(name: &str) -> Option<&'static PointSet> {
    SETS.iter()
        .find(|s| s.name.eq_ignore_ascii_case(name.trim()))
}

/// The names of all sets, for error messages.
pub fn names() -> Vec<&'static str> {
    SETS.iter().map(|s| s.name).collect()
}
