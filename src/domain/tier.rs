//! Tier policy: tiers follow lifetime earned points, with configurable thresholds.

use std::fmt;

/// One tier and the lifetime points it starts at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierRule {
    pub name: String,
    pub min_lifetime: u64,
}

/// Tiers in ascending order of their thresholds; the first starts at 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPolicy {
    rules: Vec<TierRule>,
}

/// Why a tier specification was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TierPolicyError {
    #[error("tier list is empty")]
    Empty,
    #[error("tier entry {0:?} is not NAME:MIN_LIFETIME_POINTS")]
    Malformed(String),
    #[error("the first tier must start at 0 lifetime points")]
    FirstNotZero,
    #[error("tier thresholds must strictly increase (at {0:?})")]
    NotIncreasing(String),
    #[error("tier names must be unique (duplicate {0:?})")]
    Duplicate(String),
}

impl TierPolicy {
    /// Builds a policy, checking that thresholds start at 0 and strictly increase.
    pub fn new(rules: Vec<TierRule>) -> Result<Self, TierPolicyError> {
        let first = rules.first().ok_or(TierPolicyError::Empty)?;
        if first.min_lifetime != 0 {
            return Err(TierPolicyError::FirstNotZero);
        }
        for pair in rules.windows(2) {
            if pair[1].min_lifetime <= pair[0].min_lifetime {
                return Err(TierPolicyError::NotIncreasing(pair[1].name.clone()));
            }
        }
        for (index, rule) in rules.iter().enumerate() {
            if rule.name.is_empty() || rule.name.len() > 32 {
                return Err(TierPolicyError::Malformed(rule.name.clone()));
            }
            if rules[..index].iter().any(|r| r.name == rule.name) {
                return Err(TierPolicyError::Duplicate(rule.name.clone()));
            }
        }
        Ok(Self { rules })
    }

    /// Parses `Member:0,Silver:10000,Gold:50000`.
    pub fn parse(spec: &str) -> Result<Self, TierPolicyError> {
        let mut rules = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, min) = entry
                .split_once(':')
                .ok_or_else(|| TierPolicyError::Malformed(entry.to_string()))?;
            let min_lifetime = min
                .trim()
                .parse()
                .map_err(|_| TierPolicyError::Malformed(entry.to_string()))?;
            rules.push(TierRule {
                name: name.trim().to_string(),
                min_lifetime,
            });
        }
        Self::new(rules)
    }

    /// The tier for a lifetime-earned total.
    pub fn tier_for(&self, lifetime: u64) -> &str {
        let rule = self
            .rules
            .iter()
            .rev()
            .find(|r| r.min_lifetime <= lifetime)
            .expect("the first tier starts at 0, so some tier matches");
        &rule.name
    }

    /// The tier a new account starts in.
    pub fn base(&self) -> &str {
        &self.rules[0].name
    }
}

impl Default for TierPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_TIERS).expect("the default tier list is valid")
    }
}

impl fmt::Display for TierPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{}:{}", r.name, r.min_lifetime))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The default tiers, in lifetime points.
pub const DEFAULT_TIERS: &str = "Member:0,Silver:10000,Gold:50000,Platinum:200000";
