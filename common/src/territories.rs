//! Where a track may be heard: a set of ISO 3166-1 alpha-2 country codes, or the whole world
//! less some exclusions.
//!
//! Text form, used in the CLI, the ingest API and edge tokens: `GB,SE,US` lists countries;
//! `WW` is worldwide; `WW,-CN,-RU` is worldwide except China and Russia.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a territory list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TerritoryError {
    /// The list is empty: a track licensed nowhere cannot be ingested.
    #[error("territory list is empty")]
    Empty,
    /// An entry is not two ASCII letters.
    #[error("{0:?} is not an ISO 3166-1 alpha-2 code")]
    BadCode(String),
    /// An exclusion (`-XX`) appears without `WW`.
    #[error("exclusion {0:?} needs WW (worldwide) in the list")]
    ExclusionWithoutWorldwide(String),
}

/// A country code: two uppercase ASCII letters.
type Code = [u8; 2];

/// Licensed territories.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Territories {
    /// Only these countries.
    Only(BTreeSet<Code>),
    /// Every country except these.
    WorldwideExcept(BTreeSet<Code>),
}

fn parse_code(s: &str) -> Result<Code, TerritoryError> {
    match s.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Ok([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => Err(TerritoryError::BadCode(s.to_owned())),
    }
}

impl Territories {
    /// Worldwide, no exclusions.
    pub fn worldwide() -> Self {
        Self::WorldwideExcept(BTreeSet::new())
    }

    /// Whether a listener in `country` (alpha-2, any case) may hear the track.
    pub fn allows(&self, country: &str) -> bool {
        let Ok(code) = parse_code(country) else {
            return false;
        };
        match self {
            Self::Only(set) => set.contains(&code),
            Self::WorldwideExcept(set) => !set.contains(&code),
        }
    }

    /// Every country either allows.
    pub fn union(&self, other: &Territories) -> Territories {
        use Territories::*;
        match (self, other) {
            (Only(a), Only(b)) => Only(a | b),
            (WorldwideExcept(out), Only(some)) | (Only(some), WorldwideExcept(out)) => {
                WorldwideExcept(out - some)
            }
            (WorldwideExcept(a), WorldwideExcept(b)) => WorldwideExcept(a & b),
        }
    }
}

impl FromStr for Territories {
    type Err = TerritoryError;
    fn from_str(s: &str) -> Result<Self, TerritoryError> {
        let mut worldwide = false;
        let mut listed = BTreeSet::new();
        let mut excluded = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("WW") {
                worldwide = true;
            } else if let Some(code) = part.strip_prefix('-') {
                excluded.push((part, parse_code(code)?));
            } else {
                listed.insert(parse_code(part)?);
            }
        }
        if worldwide {
            Ok(Self::WorldwideExcept(
                excluded.into_iter().map(|(_, c)| c).collect(),
            ))
        } else if let Some((part, _)) = excluded.first() {
            Err(TerritoryError::ExclusionWithoutWorldwide(
                (*part).to_owned(),
            ))
        } else if listed.is_empty() {
            Err(TerritoryError::Empty)
        } else {
            Ok(Self::Only(listed))
        }
    }
}

impl fmt::Display for Territories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = |c: &Code| String::from_utf8_lossy(c).into_owned();
        let parts: Vec<String> = match self {
            Self::Only(set) => set.iter().map(code).collect(),
            Self::WorldwideExcept(set) => std::iter::once("WW".to_owned())
                .chain(set.iter().map(|c| format!("-{}", code(c))))
                .collect(),
        };
        f.write_str(&parts.join(","))
    }
}

impl fmt::Debug for Territories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Territories({self})")
    }
}

impl TryFrom<String> for Territories {
    type Error = TerritoryError;
    fn try_from(s: String) -> Result<Self, TerritoryError> {
        s.parse()
    }
}

impl From<Territories> for String {
    fn from(t: Territories) -> String {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_exclusions() {
        let t: Territories = "gb, SE,US".parse().unwrap();
        assert_eq!(t.to_string(), "GB,SE,US");
        assert!(t.allows("se") && !t.allows("FR") && !t.allows("") && !t.allows("GBR"));
        let w: Territories = "WW,-cn".parse().unwrap();
        assert_eq!(w.to_string(), "WW,-CN");
        assert!(w.allows("FR") && !w.allows("CN"));
        assert_eq!("".parse::<Territories>(), Err(TerritoryError::Empty));
        assert!(matches!(
            "G1".parse::<Territories>(),
            Err(TerritoryError::BadCode(_))
        ));
        assert!(matches!(
            "GB,-FR".parse::<Territories>(),
            Err(TerritoryError::ExclusionWithoutWorldwide(_))
        ));
        assert_eq!(Territories::worldwide().to_string(), "WW");
    }

    #[test]
    fn union_allows_what_either_allows() {
        let cases = [
            ("GB,SE", "SE,US", "GB,SE,US"),
            ("WW,-CN,-RU", "RU,GB", "WW,-CN"),
            ("FR", "WW,-FR,-DE", "WW,-DE"),
            ("WW,-CN,-RU", "WW,-RU,-US", "WW,-RU"),
        ];
        for (a, b, want) in cases {
            let (a, b): (Territories, Territories) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(a.union(&b).to_string(), want);
            assert_eq!(b.union(&a).to_string(), want);
            for c in ["GB", "SE", "US", "CN", "RU", "FR", "DE", "JP"] {
                assert_eq!(
                    a.union(&b).allows(c),
                    a.allows(c) || b.allows(c),
                    "{a} {b} {c}"
                );
            }
        }
    }
}
