//! Property tests of the rights decision over random licence windows, countries and times.

use cadenza_common::Licence;
use cadenza_control_plane::rights::{Refusal, TrackRights, decide, open_at};
use proptest::prelude::*;

const COUNTRIES: [&str; 5] = ["GB", "SE", "US", "CN", "JP"];
const HORIZON: u64 = 400;

fn territories() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::subsequence(COUNTRIES.to_vec(), 1..=3).prop_map(|c| c.join(",")),
        proptest::sample::subsequence(COUNTRIES.to_vec(), 0..=2).prop_map(|c| std::iter::once(
            "WW".to_owned()
        )
        .chain(c.iter().map(|x| format!("-{x}")))
        .collect::<Vec<_>>()
        .join(",")),
    ]
}

fn licence() -> impl Strategy<Value = Licence> {
    (
        territories(),
        proptest::option::of(0..HORIZON),
        proptest::option::of(1..HORIZON),
    )
        .prop_map(|(t, starts_at, len)| Licence {
            territories: t.parse().expect("generated territories parse"),
            starts_at,
            ends_at: len.map(|l| starts_at.unwrap_or(0) + l),
        })
}

#[derive(Debug, Clone)]
struct Case {
    release_at: Option<u64>,
    taken_down_at: Option<u64>,
    licences: Vec<Licence>,
    country: Option<&'static str>,
    now: u64,
}

impl Case {
    fn rights(&self) -> TrackRights<'_> {
        TrackRights {
            release_at: self.release_at,
            taken_down_at: self.taken_down_at,
            licences: &self.licences,
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::option::of(0..HORIZON),
        proptest::option::of(0..HORIZON),
        proptest::collection::vec(licence(), 0..5),
        proptest::option::of(proptest::sample::select(COUNTRIES.to_vec())),
        0..HORIZON,
    )
        .prop_map(|(release_at, taken_down_at, licences, country, now)| Case {
            release_at,
            taken_down_at,
            licences,
            country,
            now,
        })
}

fn covered_now(c: &Case, t: u64) -> bool {
    c.licences
        .iter()
        .any(|l| open_at(l, t) && c.country.is_none_or(|k| l.territories.allows(k)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Allowed exactly when not taken down, released, and some open window covers the country.
    #[test]
    fn allowed_iff_open_window_covers(c in case()) {
        let down = c.taken_down_at.is_some_and(|t| t <= c.now);
        let embargoed = c.release_at.is_some_and(|r| c.now < r);
        let got = decide(&c.rights(), c.country, c.now);
        prop_assert_eq!(got.is_ok(), !down && !embargoed && covered_now(&c, c.now));
        match got {
            Err(Refusal::TakenDown) => prop_assert!(down),
            Err(Refusal::Embargoed { until }) => prop_assert!(!down && until > c.now),
            _ => {}
        }
    }

    /// A grant's `until` is exact: playable at every moment before it, not at it (for a known
    /// country); never bounded means playable to the horizon.
    #[test]
    fn until_bounds_the_grant(c in case()) {
        if let Ok(allowed) = decide(&c.rights(), c.country, c.now) {
            if let Some(k) = c.country {
                prop_assert!(allowed.territories.allows(k));
            }
            let end = allowed.until.unwrap_or(c.now + 2 * HORIZON);
            prop_assert!(end > c.now);
            for t in c.now..end {
                prop_assert!(decide(&c.rights(), c.country, t).is_ok(), "refused at {}", t);
            }
            if let (Some(u), Some(_)) = (allowed.until, c.country) {
                prop_assert!(decide(&c.rights(), c.country, u).is_err(), "still allowed at {}", u);
            }
        }
    }

    /// A refusal's times are right: a licence that is yet to start does start then (unless a
    /// takedown comes first); an ended one ended in the past and nothing covering comes later.
    #[test]
    fn refusal_times_are_real(c in case()) {
        match decide(&c.rights(), c.country, c.now) {
            Err(Refusal::NotYetLicensed { from, .. }) => {
                prop_assert!(from > c.now);
                let later = decide(&c.rights(), c.country, from);
                let down_by_then = c.taken_down_at.is_some_and(|t| t <= from);
                prop_assert_eq!(later.is_ok(), !down_by_then);
            }
            Err(Refusal::LicenceEnded { ended_at, .. }) => {
                prop_assert!(ended_at <= c.now);
                for t in c.now..c.now + 2 * HORIZON {
                    prop_assert!(!covered_now(&c, t));
                }
            }
            Err(Refusal::NotLicensed { .. }) => {
                for t in 0..3 * HORIZON {
                    prop_assert!(!covered_now(&c, t));
                }
            }
            _ => {}
        }
    }

    /// More licences never take a right away.
    #[test]
    fn adding_a_window_never_refuses(c in case(), extra in licence()) {
        let before = decide(&c.rights(), c.country, c.now).is_ok();
        let mut more = c.clone();
        more.licences.push(extra);
        prop_assert!(!before || decide(&more.rights(), more.country, more.now).is_ok());
    }
}
