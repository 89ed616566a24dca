//! The shared body-site vocabulary: body regions with a side, and WHO standard acupuncture
//! point codes with a side.
//!
//! Every site in a plan, a protocol file, a patient context or a dose report is a [`BodySite`].
//! Its text form is `CODE:side` or `region:side`, e.g. `ST36:left`, `EX-LE10-1:right`,
//! `foot_dorsum:left`, `lower_back:midline`. One vocabulary lets the host tell when two
//! modalities act on the same site, and lets the dose ledger merge acupuncture points that are
//! the same place under two names (Bafeng and LR2/ST44/GB43).
//!
//! Point regions follow *WHO Standard Acupuncture Point Locations in the Western Pacific Region*
//! (2008). Extra points with several locations (EX-LE10 Bafeng, EX-LE12 Qiduan, EX-UE9 Baxie)
//! are addressed one location at a time with a numeric suffix; that suffix is this
//! vocabulary's convention, documented per point below.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Side of the body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Patient's left.
    Left,
    /// Patient's right.
    Right,
    /// On the midline (e.g. lower back, abdomen).
    Midline,
}

impl Side {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
            Side::Midline => "midline",
        }
    }

    fn parse(s: &str) -> Option<Side> {
        match s.trim().to_ascii_lowercase().as_str() {
            "left" | "l" => Some(Side::Left),
            "right" | "r" => Some(Side::Right),
            "midline" | "m" | "centre" | "center" => Some(Side::Midline),
            _ => None,
        }
    }
}

macro_rules! regions {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Body regions of the shared vocabulary. Regions never treated (eyes, head, anterior
        /// neck, chest) are listed so that a plan naming them is refused by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum BodyRegion {
            $(#[doc = $doc] $variant,)*
        }

        impl BodyRegion {
            /// Every region, in declaration order.
            pub const ALL: &'static [BodyRegion] = &[$(BodyRegion::$variant,)*];

            /// The snake_case name used in site strings.
            pub fn as_str(self) -> &'static str {
                match self { $(BodyRegion::$variant => $name,)* }
            }

            /// The region called `name` (snake_case; hyphens are accepted too).
            pub fn parse(name: &str) -> Option<BodyRegion> {
                let n = name.trim().to_ascii_lowercase().replace('-', "_");
                match n.as_str() { $($name => Some(BodyRegion::$variant),)* _ => None }
            }
        }
    };
}

regions! {
    FootDorsum => "foot_dorsum", "Top of the foot.";
    FootPlantar => "foot_plantar", "Sole of the foot.";
    FootMedial => "foot_medial", "Medial border of the foot.";
    FootLateral => "foot_lateral", "Lateral border of the foot.";
    Toes => "toes", "The toes.";
    Ankle => "ankle", "The ankle.";
    LowerLegAnterior => "lower_leg_anterior", "Front of the lower leg (shin).";
    LowerLegPosterior => "lower_leg_posterior", "Back of the lower leg (calf).";
    LowerLegLateral => "lower_leg_lateral", "Outer lower leg (peroneal nerve course).";
    LowerLegMedial => "lower_leg_medial", "Inner lower leg.";
    Knee => "knee", "The knee, including the popliteal fossa.";
    Thigh => "thigh", "The thigh.";
    HandDorsum => "hand_dorsum", "Back of the hand.";
    HandPalmar => "hand_palmar", "Palm.";
    Fingers => "fingers", "The fingers.";
    Wrist => "wrist", "The wrist.";
    Forearm => "forearm", "The forearm.";
    Elbow => "elbow", "The elbow.";
    UpperArm => "upper_arm", "The upper arm.";
    Shoulder => "shoulder", "The shoulder.";
    LowerBack => "lower_back", "Lumbar region.";
    UpperBack => "upper_back", "Thoracic back.";
    PosteriorNeck => "posterior_neck", "Back of the neck.";
    Abdomen => "abdomen", "The abdomen.";
    Chest => "chest", "The chest (never transthoracic stimulation).";
    AnteriorNeck => "anterior_neck", "Front of the neck, carotid sinus.";
    Head => "head", "The head.";
    Face => "face", "The face.";
    Mouth => "mouth", "The mouth.";
    Periorbital => "periorbital", "Around the eyes: never a laser target.";
    Eye => "eye", "The eye itself.";
}

impl BodyRegion {
    /// Regions on the eye or around it, where no optical source may ever be aimed
    /// (manufacturers' safety guides; clinical-facts.md "Eyes").
    pub fn is_ocular(self) -> bool {
        matches!(self, BodyRegion::Eye | BodyRegion::Periorbital)
    }

    /// Regions where electrical stimulation is never applied: across the head, on the eyes,
    /// over the mouth, on the front of the neck, across the chest (IEC 60601-2-10 warnings and
    /// TENS manuals; clinical-facts.md "TENS / Never").
    pub fn is_tens_forbidden(self) -> bool {
        matches!(
            self,
            BodyRegion::Head
                | BodyRegion::Face
                | BodyRegion::Eye
                | BodyRegion::Periorbital
                | BodyRegion::Mouth
                | BodyRegion::AnteriorNeck
                | BodyRegion::Chest
        )
    }
}

impl fmt::Display for BodyRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One WHO standard acupuncture point (or one location of a multi-location extra point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acupoint {
    /// WHO code, upper case, e.g. `ST36`, `EX-LE10-1`.
    pub code: &'static str,
    /// Pinyin name.
    pub name: &'static str,
    /// The body region it lies in.
    pub region: BodyRegion,
    /// Where it is, in words.
    pub location: &'static str,
    /// The code of another point at the same place, counted once in the dose ledger.
    pub same_place_as: Option<&'static str>,
    /// Traditional caution in pregnancy.
    pub pregnancy_caution: bool,
}

const fn pt(
    code: &'static str,
    name: &'static str,
    region: BodyRegion,
    location: &'static str,
) -> Acupoint {
    Acupoint {
        code,
        name,
        region,
        location,
        same_place_as: None,
        pregnancy_caution: false,
    }
}

const fn same(mut p: Acupoint, other: &'static str) -> Acupoint {
    p.same_place_as = Some(other);
    p
}

const fn preg(mut p: Acupoint) -> Acupoint {
    p.pregnancy_caution = true;
    p
}

use BodyRegion as R;

/// The point vocabulary. Source: WHO Standard Acupuncture Point Locations in the Western Pacific
/// Region (2008), as summarised in clinical-facts.md "Acupuncture points".
pub const ACUPOINTS: &[Acupoint] = &[
    pt(
        "ST34",
        "Liangqiu",
        R::Thigh,
        "anterolateral thigh, above the patella",
    ),
    pt(
        "ST36",
        "Zusanli",
        R::LowerLegAnterior,
        "anterior leg, 3 cun below ST35",
    ),
    pt("ST40", "Fenglong", R::LowerLegAnterior, "anterolateral leg"),
    pt("ST41", "Jiexi", R::Ankle, "front of the ankle"),
    pt(
        "ST44",
        "Neiting",
        R::FootDorsum,
        "dorsum of foot, web of toes 2-3",
    ),
    pt("SP3", "Taibai", R::FootMedial, "medial foot"),
    pt("SP4", "Gongsun", R::FootMedial, "medial foot"),
    preg(pt(
        "SP6",
        "Sanyinjiao",
        R::LowerLegMedial,
        "medial leg, 3 cun above the medial malleolus",
    )),
    pt(
        "SP9",
        "Yinlingquan",
        R::LowerLegMedial,
        "medial leg, below the tibial condyle",
    ),
    pt("SP10", "Xuehai", R::Thigh, "anteromedial thigh"),
    pt(
        "LR2",
        "Xingjian",
        R::FootDorsum,
        "dorsum of foot, web of toes 1-2",
    ),
    pt(
        "LR3",
        "Taichong",
        R::FootDorsum,
        "dorsum of foot, over the dorsalis pedis artery",
    ),
    pt("KI1", "Yongquan", R::FootPlantar, "sole"),
    pt("KI3", "Taixi", R::Ankle, "posteromedial ankle"),
    pt("KI7", "Fuliu", R::LowerLegMedial, "posteromedial leg"),
    pt("BL40", "Weizhong", R::Knee, "back of the knee"),
    pt("BL57", "Chengshan", R::LowerLegPosterior, "calf"),
    preg(pt("BL60", "Kunlun", R::Ankle, "posterolateral ankle")),
    pt(
        "GB34",
        "Yanglingquan",
        R::LowerLegLateral,
        "lateral leg, below the fibular head",
    ),
    pt(
        "GB39",
        "Xuanzhong",
        R::LowerLegLateral,
        "lateral leg, 3 cun above the lateral malleolus",
    ),
    pt(
        "GB41",
        "Zulinqi",
        R::FootDorsum,
        "dorsum of foot, lateral side",
    ),
    pt(
        "GB43",
        "Xiaxi",
        R::FootDorsum,
        "dorsum of foot, web of toes 4-5",
    ),
    preg(pt(
        "LI4",
        "Hegu",
        R::HandDorsum,
        "dorsum of hand, between metacarpals 1 and 2",
    )),
    pt("LI11", "Quchi", R::Elbow, "lateral elbow crease"),
    pt(
        "PC6",
        "Neiguan",
        R::Forearm,
        "anterior forearm, 2 cun above the wrist crease",
    ),
    pt("HT7", "Shenmen", R::Wrist, "anteromedial wrist crease"),
    // EX-LE10 Bafeng: four points per foot on the toe webs, numbered from the big toe. Three of
    // them are the same places as LR2, ST44 and GB43 (clinical-facts.md).
    same(
        pt("EX-LE10-1", "Bafeng", R::FootDorsum, "web of toes 1-2"),
        "LR2",
    ),
    same(
        pt("EX-LE10-2", "Bafeng", R::FootDorsum, "web of toes 2-3"),
        "ST44",
    ),
    pt("EX-LE10-3", "Bafeng", R::FootDorsum, "web of toes 3-4"),
    same(
        pt("EX-LE10-4", "Bafeng", R::FootDorsum, "web of toes 4-5"),
        "GB43",
    ),
    // EX-LE12 Qiduan: the tips of the five toes, numbered from the big toe.
    pt("EX-LE12-1", "Qiduan", R::Toes, "tip of toe 1"),
    pt("EX-LE12-2", "Qiduan", R::Toes, "tip of toe 2"),
    pt("EX-LE12-3", "Qiduan", R::Toes, "tip of toe 3"),
    pt("EX-LE12-4", "Qiduan", R::Toes, "tip of toe 4"),
    pt("EX-LE12-5", "Qiduan", R::Toes, "tip of toe 5"),
    // EX-UE9 Baxie: four points per hand on the finger webs, numbered from the thumb.
    pt("EX-UE9-1", "Baxie", R::HandDorsum, "web of fingers 1-2"),
    pt("EX-UE9-2", "Baxie", R::HandDorsum, "web of fingers 2-3"),
    pt("EX-UE9-3", "Baxie", R::HandDorsum, "web of fingers 3-4"),
    pt("EX-UE9-4", "Baxie", R::HandDorsum, "web of fingers 4-5"),
    // Periorbital points: in the vocabulary only so that a plan naming them is refused by name.
    pt(
        "BL1",
        "Jingming",
        R::Periorbital,
        "medial canthus: never a laser target",
    ),
    pt(
        "ST1",
        "Chengqi",
        R::Periorbital,
        "below the pupil on the infraorbital ridge: never a laser target",
    ),
];

/// The point with this code (case-insensitive), if the vocabulary knows it.
pub fn acupoint(code: &str) -> Option<&'static Acupoint> {
    let code = code.trim();
    ACUPOINTS.iter().find(|p| p.code.eq_ignore_ascii_case(code))
}

/// The individual locations of a multi-location extra point (`EX-LE10` → its four codes), or
/// the code itself for an ordinary point; `None` for an unknown code.
pub fn expand_point_group(code: &str) -> Option<Vec<&'static str>> {
    if let Some(p) = acupoint(code) {
        return Some(vec![p.code]);
    }
    let prefix = format!("{}-", code.trim().to_ascii_uppercase());
    let members: Vec<&'static str> = ACUPOINTS
        .iter()
        .filter(|p| p.code.starts_with(&prefix))
        .map(|p| p.code)
        .collect();
    (!members.is_empty()).then_some(members)
}

/// Where on the body: a region or an acupuncture point code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// A body region.
    Region(BodyRegion),
    /// A WHO acupuncture point code (upper case). Unknown codes can be carried so that the
    /// host can reject them by name; [`BodySite::is_known`] tells.
    Acupoint(String),
}

/// A site on the body: a location and a side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BodySite {
    /// Region or point.
    pub location: Location,
    /// Side.
    pub side: Side,
}

/// Why a site string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Not `LOCATION:side`.
    #[error(
        "site {0:?} is not of the form LOCATION:side (e.g. \"ST36:left\", \"foot_dorsum:right\")"
    )]
    Form(String),
    /// Side not left/right/midline.
    #[error("site {site:?}: side {side:?} is not one of left, right, midline")]
    Side {
        /// The whole site string.
        site: String,
        /// The side part.
        side: String,
    },
    /// Neither a region nor a known point.
    #[error(
        "site {site:?}: {location:?} is neither a body region nor a known WHO acupuncture point code"
    )]
    Unknown {
        /// The whole site string.
        site: String,
        /// The location part.
        location: String,
    },
}

impl BodySite {
    /// A region site.
    pub fn region(region: BodyRegion, side: Side) -> Self {
        BodySite {
            location: Location::Region(region),
            side,
        }
    }

    /// A point site. The code is upper-cased; it is not checked here.
    pub fn point(code: &str, side: Side) -> Self {
        BodySite {
            location: Location::Acupoint(code.trim().to_ascii_uppercase()),
            side,
        }
    }

    /// The point, if this site is a known acupuncture point.
    pub fn acupoint(&self) -> Option<&'static Acupoint> {
        match &self.location {
            Location::Acupoint(code) => acupoint(code),
            Location::Region(_) => None,
        }
    }

    /// Whether the site is in the vocabulary (every region is; points must be known).
    pub fn is_known(&self) -> bool {
        match &self.location {
            Location::Region(_) => true,
            Location::Acupoint(_) => self.acupoint().is_some(),
        }
    }

    /// The body region the site lies in (`None` for an unknown point code).
    pub fn body_region(&self) -> Option<BodyRegion> {
        match &self.location {
            Location::Region(r) => Some(*r),
            Location::Acupoint(_) => self.acupoint().map(|p| p.region),
        }
    }

    /// The site under the name the dose ledger counts it by: a point that is the same place as
    /// another point (Bafeng 1, 2, 4 as LR2, ST44, GB43) maps to that point.
    pub fn canonical(&self) -> BodySite {
        match self.acupoint().and_then(|p| p.same_place_as) {
            Some(other) => BodySite::point(other, self.side),
            None => self.clone(),
        }
    }

    /// Whether two sites act on the same tissue: the same canonical site, or a point and the
    /// region it lies in, on the same side (a midline site overlaps either side).
    pub fn overlaps(&self, other: &BodySite) -> bool {
        let sides =
            self.side == other.side || self.side == Side::Midline || other.side == Side::Midline;
        if !sides {
            return false;
        }
        let (a, b) = (self.canonical(), other.canonical());
        if a.location == b.location {
            return true;
        }
        match (&a.location, &b.location) {
            (Location::Region(r), Location::Acupoint(_)) => b.body_region() == Some(*r),
            (Location::Acupoint(_), Location::Region(r)) => a.body_region() == Some(*r),
            _ => false,
        }
    }
}

impl fmt::Display for BodySite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Region(r) => write!(f, "{}:{}", r.as_str(), self.side.as_str()),
            Location::Acupoint(c) => write!(f, "{}:{}", c, self.side.as_str()),
        }
    }
}

impl FromStr for BodySite {
    type Err = SiteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (loc, side) = s
            .rsplit_once(':')
            .ok_or_else(|| SiteError::Form(s.to_string()))?;
        let side_v = Side::parse(side).ok_or_else(|| SiteError::Side {
            site: s.to_string(),
            side: side.to_string(),
        })?;
        if let Some(r) = BodyRegion::parse(loc) {
            return Ok(BodySite::region(r, side_v));
        }
        match acupoint(loc) {
            Some(p) => Ok(BodySite::point(p.code, side_v)),
            None => Err(SiteError::Unknown {
                site: s.to_string(),
                location: loc.to_string(),
            }),
        }
    }
}

impl Serialize for BodySite {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BodySite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for BodySite {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("BodySite")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A body site as LOCATION:side, where LOCATION is a body region (e.g. foot_dorsum, lower_leg_lateral) or a WHO acupuncture point code (e.g. ST36, EX-LE10-1) and side is left, right or midline.",
            "pattern": "^[A-Za-z0-9_-]+:(left|right|midline)$",
            "examples": ["ST36:left", "foot_dorsum:right", "EX-LE10-1:left"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regions_and_points_and_round_trips() {
        for s in [
            "ST36:left",
            "foot_dorsum:right",
            "EX-LE10-1:left",
            "lower_back:midline",
        ] {
            let site: BodySite = s.parse().expect("parses");
            assert_eq!(site.to_string(), s);
        }
        let s: BodySite = "st36:Left".parse().expect("case-insensitive");
        assert_eq!(s.to_string(), "ST36:left");
        let s: BodySite = "foot-dorsum:r".parse().expect("hyphen and short side");
        assert_eq!(s, BodySite::region(BodyRegion::FootDorsum, Side::Right));
    }

    #[test]
    fn rejects_bad_sites_by_name() {
        assert!(matches!(
            "ST36".parse::<BodySite>(),
            Err(SiteError::Form(_))
        ));
        assert!(matches!(
            "ST36:up".parse::<BodySite>(),
            Err(SiteError::Side { .. })
        ));
        let e = "ZZ99:left".parse::<BodySite>().expect_err("unknown");
        assert!(e.to_string().contains("ZZ99"), "{e}");
    }

    /// clinical-facts.md: three Bafeng points coincide with LR2, ST44 and GB43 and the ledger
    /// counts each site once.
    #[test]
    fn bafeng_coincides_with_lr2_st44_gb43() {
        for (bafeng, other) in [
            ("EX-LE10-1", "LR2"),
            ("EX-LE10-2", "ST44"),
            ("EX-LE10-4", "GB43"),
        ] {
            let a = BodySite::point(bafeng, Side::Left);
            assert_eq!(a.canonical(), BodySite::point(other, Side::Left));
            assert!(a.overlaps(&BodySite::point(other, Side::Left)));
            assert!(!a.overlaps(&BodySite::point(other, Side::Right)));
        }
        let b3 = BodySite::point("EX-LE10-3", Side::Left);
        assert_eq!(b3.canonical(), b3);
    }

    #[test]
    fn points_overlap_their_region() {
        let st36 = BodySite::point("ST36", Side::Left);
        assert!(st36.overlaps(&BodySite::region(BodyRegion::LowerLegAnterior, Side::Left)));
        assert!(!st36.overlaps(&BodySite::region(BodyRegion::FootDorsum, Side::Left)));
        assert!(
            BodySite::region(BodyRegion::LowerBack, Side::Midline)
                .overlaps(&BodySite::region(BodyRegion::LowerBack, Side::Left))
        );
    }

    #[test]
    fn groups_expand_to_individual_points() {
        assert_eq!(expand_point_group("EX-LE10").map(|v| v.len()), Some(4));
        assert_eq!(expand_point_group("ex-le12").map(|v| v.len()), Some(5));
        assert_eq!(expand_point_group("ST36"), Some(vec!["ST36"]));
        assert_eq!(expand_point_group("XX1"), None);
    }

    #[test]
    fn periorbital_points_are_ocular() {
        for code in ["BL1", "ST1"] {
            let r = acupoint(code).map(|p| p.region);
            assert!(r.is_some_and(BodyRegion::is_ocular), "{code}");
        }
    }
}
