//! Precomputed site facts, so that overlap tests in hot paths do not allocate.
//!
//! [`BodySite::overlaps`] and [`BodySite::canonical`] build new sites (and look points up in
//! the vocabulary) on every call. The governor resolves each distinct site once into a
//! [`SiteInfo`] and compares those; a unit test checks it agrees with the SDK.

use modalis_sdk::{BodyRegion, BodySite, Location, Side};

/// A site resolved once: its canonical name, region and side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SiteInfo {
    /// The site as written.
    pub site: BodySite,
    /// The name the ledger counts it under (Bafeng 1, 2, 4 as LR2, ST44, GB43).
    pub canonical: BodySite,
    /// The region it lies in (`None` for an unknown point).
    pub region: Option<BodyRegion>,
}

impl SiteInfo {
    pub fn new(site: &BodySite) -> Self {
        SiteInfo {
            site: site.clone(),
            canonical: site.canonical(),
            region: site.body_region(),
        }
    }

    pub fn side(&self) -> Side {
        self.site.side
    }

    pub fn is_point(&self) -> bool {
        matches!(self.canonical.location, Location::Acupoint(_))
    }

    /// Same rule as [`BodySite::overlaps`]: sides agree (midline overlaps either), and the
    /// canonical locations are equal or one is a point inside the other's region.
    pub fn overlaps(&self, other: &SiteInfo) -> bool {
        let (a, b) = (self.side(), other.side());
        if !(a == b || a == Side::Midline || b == Side::Midline) {
            return false;
        }
        if self.canonical.location == other.canonical.location {
            return true;
        }
        match (&self.canonical.location, &other.canonical.location) {
            (Location::Region(r), Location::Acupoint(_)) => other.region == Some(*r),
            (Location::Acupoint(_), Location::Region(r)) => self.region == Some(*r),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_sdk_overlap_rule() {
        let names = [
            "ST36:left",
            "ST36:right",
            "lower_leg_anterior:left",
            "lower_leg_anterior:midline",
            "EX-LE10-1:left",
            "LR2:left",
            "LR2:right",
            "foot_dorsum:left",
            "EX-LE10-3:left",
            "lower_back:midline",
            "lower_back:left",
            "GB43:left",
            "EX-LE10-4:left",
        ];
        let sites: Vec<BodySite> = names.iter().filter_map(|n| n.parse().ok()).collect();
        assert_eq!(sites.len(), names.len());
        for a in &sites {
            for b in &sites {
                let fast = SiteInfo::new(a).overlaps(&SiteInfo::new(b));
                assert_eq!(fast, a.overlaps(b), "{a} vs {b}");
            }
        }
    }
}
