//! Rights: whether a listener in a country may hear a track at a moment, and until when.
//!
//! A pure function of the track's rights (takedown, release embargo, licence windows per
//! territory), the listener's country and `now`, so it is decided the same way at grant time,
//! in tests and in search filtering. Precedence, first match wins: taken down, embargoed, then
//! the licence windows.

use cadenza_common::{Licence, Territories};

/// What decides a track's playability.
#[derive(Debug, Clone, Copy)]
pub struct TrackRights<'a> {
    /// When the track is released (seconds since the epoch); nothing plays before.
    pub release_at: Option<u64>,
    /// When it was (or will be) taken down; nothing plays from then on.
    pub taken_down_at: Option<u64>,
    /// Where and when it is licensed. A country may be heard while any window covering it is
    /// open.
    pub licences: &'a [Licence],
}

/// A grant may be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The first moment from which it may no longer be played (a licence window ends or a
    /// scheduled takedown comes), if any: tokens must not outlive it.
    pub until: Option<u64>,
    /// Territories licensed at `now`, for the edge token: the edge refuses the others.
    pub territories: Territories,
}

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its label took it down.
    TakenDown,
    /// Its release time has not come.
    Embargoed { until: u64 },
    /// No window, past or future, covers the country.
    NotLicensed { country: Option<String> },
    /// A window covering the country opens later: the earliest such start.
    NotYetLicensed { country: Option<String>, from: u64 },
    /// Every window covering the country has closed: the latest such end.
    LicenceEnded {
        country: Option<String>,
        ended_at: u64,
    },
}

/// Whether `licence` is open at `t`: windows are half-open, `[starts_at, ends_at)`.
pub fn open_at(licence: &Licence, t: u64) -> bool {
    licence.starts_at.is_none_or(|s| s <= t) && licence.ends_at.is_none_or(|e| t < e)
}

fn covers(licence: &Licence, country: Option<&str>) -> bool {
    country.is_none_or(|c| licence.territories.allows(c))
}

/// Whether a listener in `country` (ISO 3166-1 alpha-2; `None` when it is not known, in which
/// case any open window allows and the edge enforces the territories) may hear the track at
/// `now`.
pub fn decide(
    rights: &TrackRights<'_>,
    country: Option<&str>,
    now: u64,
) -> Result<Allowed, Refusal> {
    if rights.taken_down_at.is_some_and(|t| t <= now) {
        return Err(Refusal::TakenDown);
    }
    if let Some(until) = rights.release_at.filter(|&r| now < r) {
        return Err(Refusal::Embargoed { until });
    }
    let covering: Vec<&Licence> = rights
        .licences
        .iter()
        .filter(|l| covers(l, country))
        .collect();
    let open: Vec<&Licence> = covering
        .iter()
        .copied()
        .filter(|l| open_at(l, now))
        .collect();
    if open.is_empty() {
        let owned = country.map(str::to_ascii_uppercase);
        let next_start = covering
            .iter()
            .filter_map(|l| l.starts_at.filter(|&s| s > now))
            .min();
        if let Some(from) = next_start {
            return Err(Refusal::NotYetLicensed {
                country: owned,
                from,
            });
        }
        return Err(match covering.iter().filter_map(|l| l.ends_at).max() {
            Some(ended_at) => Refusal::LicenceEnded {
                country: owned,
                ended_at,
            },
            None => Refusal::NotLicensed { country: owned },
        });
    }
    // What the edge may serve: every territory with a window open now (a superset of the
    // listener's, which is among them).
    let territories = rights
        .licences
        .iter()
        .filter(|l| open_at(l, now))
        .fold(open[0].territories.clone(), |acc, l| {
            acc.union(&l.territories)
        });
    let licensed_until = match country {
        Some(_) => covered_until(&covering, now),
        // Unknown country: the territory set changes when the first open window closes.
        None => open.iter().filter_map(|l| l.ends_at).min(),
    };
    let takedown = rights.taken_down_at.filter(|&t| t > now);
    let until = licensed_until.into_iter().chain(takedown).min();
    Ok(Allowed { until, territories })
}

/// The end of the unbroken run of windows from `now` (some window is open at `now`): windows
/// that meet or overlap extend it. `None` when it never ends.
fn covered_until(windows: &[&Licence], now: u64) -> Option<u64> {
    let mut frontier = now;
    loop {
        let open: Vec<&&Licence> = windows.iter().filter(|l| open_at(l, frontier)).collect();
        if open.iter().any(|l| l.ends_at.is_none()) {
            return None;
        }
        match open.iter().filter_map(|l| l.ends_at).max() {
            Some(end) if end > frontier => frontier = end,
            _ => return Some(frontier),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn licence(territories: &str, starts_at: Option<u64>, ends_at: Option<u64>) -> Licence {
        Licence {
            territories: territories.parse().expect("territories"),
            starts_at,
            ends_at,
        }
    }

    /// Rights, country, now, and the expected `until` or refusal.
    type Case<'a> = (
        TrackRights<'a>,
        Option<&'a str>,
        u64,
        Result<Option<u64>, Refusal>,
    );

    #[test]
    fn table() {
        let gb_2020s = [licence("GB", Some(100), Some(200))];
        let split = [
            licence("GB,SE", None, Some(150)),
            licence("WW,-CN", Some(150), None),
        ];
        let rights = |release_at, taken_down_at, licences| TrackRights {
            release_at,
            taken_down_at,
            licences,
        };
        let gb = Some("gb");
        let cases: Vec<Case<'_>> = vec![
            (rights(None, None, &gb_2020s), gb, 100, Ok(Some(200))),
            (rights(None, None, &gb_2020s), gb, 199, Ok(Some(200))),
            (
                rights(None, None, &gb_2020s),
                gb,
                200,
                Err(Refusal::LicenceEnded {
                    country: Some("GB".into()),
                    ended_at: 200,
                }),
            ),
            (
                rights(None, None, &gb_2020s),
                gb,
                99,
                Err(Refusal::NotYetLicensed {
                    country: Some("GB".into()),
                    from: 100,
                }),
            ),
            (
                rights(None, None, &gb_2020s),
                Some("FR"),
                150,
                Err(Refusal::NotLicensed {
                    country: Some("FR".into()),
                }),
            ),
            // Takedown beats embargo beats licences.
            (
                rights(Some(500), Some(120), &gb_2020s),
                gb,
                130,
                Err(Refusal::TakenDown),
            ),
            (
                rights(Some(180), None, &gb_2020s),
                gb,
                130,
                Err(Refusal::Embargoed { until: 180 }),
            ),
            // A scheduled takedown bounds the grant.
            (rights(None, Some(170), &gb_2020s), gb, 130, Ok(Some(170))),
            // Windows that meet carry GB on; SE stops at 150; CN never.
            (rights(None, None, &split), gb, 10, Ok(None)),
            (rights(None, None, &split), Some("SE"), 10, Ok(None)),
            (
                rights(None, None, &split),
                Some("FR"),
                10,
                Err(Refusal::NotYetLicensed {
                    country: Some("FR".into()),
                    from: 150,
                }),
            ),
            (rights(None, None, &split), Some("FR"), 150, Ok(None)),
            (
                rights(None, None, &split),
                Some("CN"),
                10,
                Err(Refusal::NotLicensed {
                    country: Some("CN".into()),
                }),
            ),
            // Unknown country: open anywhere, bounded by the first window to close.
            (rights(None, None, &split), None, 10, Ok(Some(150))),
            (
                rights(None, None, &[]),
                None,
                10,
                Err(Refusal::NotLicensed { country: None }),
            ),
        ];
        for (i, (r, country, now, want)) in cases.into_iter().enumerate() {
            let got = decide(&r, country, now).map(|a| a.until);
            assert_eq!(got, want, "case {i}: {country:?} at {now}");
        }
    }

    #[test]
    fn token_territories_are_the_windows_open_now() {
        let split = [
            licence("GB,SE", None, Some(150)),
            licence("US", Some(100), None),
            licence("JP", Some(300), None),
        ];
        let r = TrackRights {
            release_at: None,
            taken_down_at: None,
            licences: &split,
        };
        let at = |now| decide(&r, None, now).map(|a| a.territories.to_string());
        assert_eq!(at(10), Ok("GB,SE".into()));
        assert_eq!(at(120), Ok("GB,SE,US".into()));
        assert_eq!(at(200), Ok("US".into()));
        assert_eq!(at(400), Ok("JP,US".into()));
    }
}
