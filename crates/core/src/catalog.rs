//! The procedure catalog: what each procedure is, its recovery, risks and cost breakdown.
//!
//! The built-in catalog (`catalog.json`, seeded from ASPS figures with each row's source noted)
//! can be replaced by a JSON file of the same shape (`AFTERVIEW_CATALOG`). Costs are whole
//! currency units as low/high ranges: never a single number, always an estimate.

use serde::{Deserialize, Serialize};

const BUILTIN: &str = include_str!("catalog.json");

/// The largest total cost of a procedure, in whole currency units.
pub const MAX_TOTAL: u64 = (u32::MAX / 2) as u64;

/// A low-high range in whole currency units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostRange {
    /// Lower bound.
    pub low: u32,
    /// Upper bound.
    pub high: u32,
}

impl CostRange {
    fn add(self, o: Self) -> Self {
        Self {
            low: self.low + o.low,
            high: self.high + o.high,
        }
    }
}

/// The components of a procedure's total cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostBreakdown {
    /// Surgeon's (or injector's) fee.
    pub surgeon: CostRange,
    pub anesthesia: CostRange,
    /// Facility / operating room.
    pub facility: CostRange,
    /// Tests, prescriptions, garments, implants, supplies.
    pub other: CostRange,
}

impl CostBreakdown {
    /// The components in display order, with their labels.
    pub fn components(&self) -> [(&'static str, CostRange); 4] {
        [
            ("Surgeon", self.surgeon),
            ("Anesthesia", self.anesthesia),
            ("Facility", self.facility),
            ("Other", self.other),
        ]
    }

    /// The sum of the components.
    pub fn total(&self) -> CostRange {
        self.surgeon
            .add(self.anesthesia)
            .add(self.facility)
            .add(self.other)
    }
}

/// Recovery expectations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// Time off work / social downtime.
    pub downtime: String,
    /// When the final result shows.
    pub final_result: String,
    /// Milestones in order.
    pub timeline: Vec<String>,
}

/// One procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    /// Stable slug, e.g. `rhinoplasty`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Treated area (`nose`, `eyes`, `face`, `lips`, `chin`, `forehead`, `ears`, `skin`).
    pub category: String,
    /// What it is and what the preview shows.
    pub description: String,
    /// Typical operating time.
    pub duration: String,
    /// Typical anesthesia.
    pub anesthesia_type: String,
    /// Typical setting.
    pub setting: String,
    pub recovery: Recovery,
    /// Main risks.
    pub risks: Vec<String>,
    /// Cost breakdown (in the catalog's currency).
    pub costs: CostBreakdown,
    /// Where the figures come from.
    pub cost_source: String,
    /// Currency (filled from the catalog).
    #[serde(default)]
    pub currency: String,
}

/// The catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// ISO 4217 currency of every amount.
    pub currency: String,
    /// Shown with every cost figure.
    pub disclaimer: String,
    /// The procedures, in display order.
    pub procedures: Vec<Procedure>,
}

/// Every procedure Afterview can preview: the one list the catalog, the local engine's recipes
/// (`afterview_imaging::procedures`), the Gemini prompts and the tests are checked against. A
/// catalog (the built-in one or `AFTERVIEW_CATALOG`) naming anything else is refused at start.
pub const RENDERABLE: &[&str] = &[
    "rhinoplasty",
    "blepharoplasty",
    "facelift",
    "lip-augmentation",
    "chin-augmentation",
    "brow-lift",
    "otoplasty",
    "skin-resurfacing",
];

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        Self::from_json(BUILTIN).expect("the built-in catalog is valid")
    }

    /// Parses and checks a catalog file.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut c: Catalog =
            serde_json::from_str(text).map_err(|e| format!("invalid catalog: {e}"))?;
        c.validate()?;
        for p in &mut c.procedures {
            p.currency = c.currency.clone();
        }
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "currency must be an ISO 4217 code, got {:?}",
                self.currency
            ));
        }
        if self.procedures.is_empty() {
            return Err("the catalog has no procedures".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.procedures {
            if p.id.is_empty()
                || !p
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("procedure id {:?} must be a lowercase slug", p.id));
            }
            if !seen.insert(p.id.as_str()) {
                return Err(format!("procedure id {:?} appears twice", p.id));
            }
            if !RENDERABLE.contains(&p.id.as_str()) {
                return Err(format!(
                    "procedure {:?} has no preview recipe; Afterview previews {}",
                    p.id,
                    RENDERABLE.join(", ")
                ));
            }
            for (label, r) in p.costs.components() {
                if r.low > r.high {
                    return Err(format!(
                        "{}: {label} cost low {} > high {}",
                        p.id, r.low, r.high
                    ));
                }
            }
            // Totals are sums of whole units in 32 bits (and low + high is taken for a bar's
            // middle): a catalog in a currency of large numbers must stay below the bound,
            // rather than wrap to a small total.
            let high: u64 = p
                .costs
                .components()
                .iter()
                .map(|(_, r)| u64::from(r.high))
                .sum();
            if high > MAX_TOTAL {
                return Err(format!(
                    "{}: the costs total up to {high}, more than {MAX_TOTAL} units",
                    p.id
                ));
            }
        }
        Ok(())
    }

    /// A procedure by id.
    pub fn get(&self, id: &str) -> Option<&Procedure> {
        self.procedures.iter().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_required_procedures_with_costs() {
        let c = Catalog::builtin();
        assert_eq!(c.procedures.len(), RENDERABLE.len());
        for id in RENDERABLE {
            let p = c.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert!(p.costs.total().low > 0 && p.costs.total().high >= p.costs.total().low);
            assert!(
                !p.cost_source.is_empty() && !p.risks.is_empty() && !p.recovery.timeline.is_empty()
            );
            assert_eq!(p.currency, "USD");
        }
        let r = c.get("rhinoplasty").unwrap().costs.total();
        assert_eq!((r.low, r.high), (6550, 12200));
    }

    #[test]
    fn bad_catalogs_are_rejected() {
        let good = include_str!("catalog.json");
        assert!(Catalog::from_json(&good.replace("\"USD\"", "\"usd\"")).is_err());
        assert!(
            Catalog::from_json(&good.replace("\"otoplasty\"", "\"facelift\""))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            Catalog::from_json(&good.replace("{\"low\": 4600", "{\"low\": 99999"))
                .unwrap_err()
                .contains("low")
        );
        assert!(Catalog::from_json("{}").is_err());
    }

    #[test]
    fn a_catalog_procedure_without_a_recipe_is_refused_by_name() {
        let mut v: serde_json::Value = serde_json::from_str(BUILTIN).unwrap();
        v["procedures"][0]["id"] = "liposuction".into();
        let err = Catalog::from_json(&v.to_string()).unwrap_err();
        assert!(
            err.contains("\"liposuction\" has no preview recipe"),
            "{err}"
        );
        assert!(err.contains("rhinoplasty"), "names what is possible: {err}");
    }
}
