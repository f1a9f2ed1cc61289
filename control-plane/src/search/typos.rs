//! A Levenshtein automaton over a term dictionary, simulated bit-parallel instead of built.
//!
//! Building a DFA for a query word (`levenshtein_automata`) cost half as much as walking the
//! dictionary with it, a sixth of a typical query (`benches/README.md`). This automaton
//! needs only a table of where each character occurs in the word. Its state is one bit
//! vector per typo count:
//! bit `i` of `r[e]` is set when the term read so far matches the word's first `i`
//! characters with `e` typos. A typo is a substitution, an insertion, a deletion or a
//! transposition of two neighbours (the restricted Damerau distance, as
//! `levenshtein_automata` counts with transpositions on). Distances count characters, not
//! bytes: the automaton reads UTF-8 and steps once per character.

use fst::Automaton;

/// The most typos counted.
pub const MAX_TYPOS: u8 = 2;

/// Words longer than this many characters get no typo automaton (a vector is one `u64`).
pub const MAX_CHARS: usize = 63;

/// "No match yet" in [`State::best`].
const NONE: u8 = u8::MAX;

/// A word within `budget` typos of a term (`prefix`: of one of the term's prefixes).
#[derive(Debug)]
pub struct Typos {
    budget: u8,
    prefix: bool,
    /// `ascii[b]`: the positions of ASCII character `b` in the word.
    ascii: [u64; 128],
    /// The same for the word's other characters.
    others: Vec<(char, u64)>,
    /// Bit `len`: the whole word matched.
    done: u64,
    /// Bits `0..=len`.
    mask: u64,
}

/// Where the automaton is after some bytes of a term.
#[derive(Clone, Debug)]
pub struct State {
    r: [u64; MAX_TYPOS as usize + 1],
    /// Positions `i` where the last character was the word's `i + 1`-th: a transposition
    /// completes if the next one is its `i`-th.
    swap: [u64; MAX_TYPOS as usize],
    /// Prefix mode: the fewest typos any prefix read so far matched the word with.
    best: u8,
    /// A character being read: its bits so far, and continuation bytes still to come.
    partial: u32,
    pending: u8,
}

impl Typos {
    /// The automaton for `word` at `budget` typos (at most [`MAX_TYPOS`]), or `None` when
    /// the word is longer than [`MAX_CHARS`].
    pub fn new(word: &str, budget: u8, prefix: bool) -> Option<Typos> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_CHARS {
            return None;
        }
        let mut t = Typos {
            budget: budget.min(MAX_TYPOS),
            prefix,
            ascii: [0; 128],
            others: Vec::new(),
            done: 1 << chars.len(),
            mask: (1 << (chars.len() + 1)) - 1,
        };
        for (i, &c) in chars.iter().enumerate() {
            if c.is_ascii() {
                t.ascii[c as usize] |= 1 << i;
            } else if let Some(e) = t.others.iter_mut().find(|e| e.0 == c) {
                e.1 |= 1 << i;
            } else {
                t.others.push((c, 1 << i));
            }
        }
        Some(t)
    }

    fn positions(&self, c: u32) -> u64 {
        match usize::try_from(c) {
            Ok(b) if b < 128 => self.ascii[b],
            _ => self
                .others
                .iter()
                .find(|e| u32::from(e.0) == c)
                .map_or(0, |e| e.1),
        }
    }

    /// The state after one more character of the term.
    fn step(&self, s: &State, c: u32) -> State {
        let at = self.positions(c);
        let k = usize::from(self.budget);
        let mut next = State {
            r: [0; MAX_TYPOS as usize + 1],
            swap: [0; MAX_TYPOS as usize],
            best: s.best,
            partial: 0,
            pending: 0,
        };
        for e in 0..=k {
            let mut v = (s.r[e] & at) << 1;
            if e > 0 {
                let fewer = s.r[e - 1];
                // Substitution, insertion, deletion (of the word's next character, which
                // reads nothing) and a completed transposition.
                v |= (fewer << 1) | fewer | (next.r[e - 1] << 1) | ((s.swap[e - 1] & at) << 2);
            }
            next.r[e] = v & self.mask;
            if e < k {
                next.swap[e] = s.r[e] & (at >> 1);
            }
        }
        if self.prefix {
            next.best = next.best.min(self.distance_of(&next.r));
        }
        next
    }

    /// The fewest typos whose vector has the whole word matched, or [`NONE`].
    fn distance_of(&self, r: &[u64; MAX_TYPOS as usize + 1]) -> u8 {
        (0..=self.budget)
            .find(|&e| r[usize::from(e)] & self.done != 0)
            .unwrap_or(NONE)
    }

    /// The typos the term read into `s` is at, if within the budget (prefix mode: of its
    /// best prefix).
    pub fn distance(&self, s: &State) -> Option<u8> {
        let d = if self.prefix {
            s.best
        } else {
            self.distance_of(&s.r)
        };
        (d != NONE && s.pending == 0).then_some(d)
    }

    /// The typos between the word and `term`, if within the budget.
    #[cfg(test)]
    pub fn eval(&self, term: &str) -> Option<u8> {
        let mut s = self.start();
        for &b in term.as_bytes() {
            s = self.accept(&s, b);
        }
        self.distance(&s)
    }
}

impl Automaton for Typos {
    type State = State;

    fn start(&self) -> State {
        // Deleting the word's first characters costs one typo each.
        let mut r = [0; MAX_TYPOS as usize + 1];
        r[0] = 1;
        for e in 1..=usize::from(self.budget) {
            r[e] = (r[e - 1] | (r[e - 1] << 1)) & self.mask;
        }
        let best = if self.prefix {
            self.distance_of(&r)
        } else {
            NONE
        };
        State {
            r,
            swap: [0; MAX_TYPOS as usize],
            best,
            partial: 0,
            pending: 0,
        }
    }

    fn is_match(&self, s: &State) -> bool {
        self.distance(s).is_some()
    }

    fn can_match(&self, s: &State) -> bool {
        s.best != NONE || s.r.iter().chain(&s.swap).any(|&v| v != 0)
    }

    fn will_always_match(&self, s: &State) -> bool {
        self.prefix && s.best == 0
    }

    fn accept(&self, s: &State, byte: u8) -> State {
        match byte {
            0x00..=0x7F => self.step(s, u32::from(byte)),
            // A continuation byte: the character completes when none is left to come.
            0x80..=0xBF => {
                let partial = (s.partial << 6) | u32::from(byte & 0x3F);
                if s.pending <= 1 {
                    self.step(s, partial)
                } else {
                    State {
                        partial,
                        pending: s.pending - 1,
                        ..s.clone()
                    }
                }
            }
            // A lead byte: its length says how many continuation bytes follow.
            _ => {
                let (bits, pending) = match byte {
                    0xC0..=0xDF => (byte & 0x1F, 1),
                    0xE0..=0xEF => (byte & 0x0F, 2),
                    _ => (byte & 0x07, 3),
                };
                State {
                    partial: u32::from(bits),
                    pending,
                    ..s.clone()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder};

    /// The definition: the restricted Damerau distance (optimal string alignment) by
    /// dynamic programming over characters; in prefix mode the least over the term's
    /// prefixes.
    fn definition(word: &str, term: &str, budget: u8, prefix: bool) -> Option<u8> {
        let (a, b): (Vec<char>, Vec<char>) = (word.chars().collect(), term.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let mut v = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]));
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = v;
            }
        }
        let last = &d[a.len()];
        let best = if prefix {
            last.iter().copied().min().unwrap_or(0)
        } else {
            last[b.len()]
        };
        (best <= usize::from(budget)).then_some(best as u8)
    }

    /// `levenshtein_automata`'s DFAs, transpositions counted as one typo.
    fn library(word: &str, term: &str, budget: u8, prefix: bool) -> Option<u8> {
        static BUILDERS: std::sync::OnceLock<[LevenshteinAutomatonBuilder; 2]> =
            std::sync::OnceLock::new();
        let builders =
            BUILDERS.get_or_init(|| [1, 2].map(|d| LevenshteinAutomatonBuilder::new(d, true)));
        let b = &builders[usize::from(budget.clamp(1, 2) - 1)];
        let dfa = if prefix {
            b.build_prefix_dfa(word)
        } else {
            b.build_dfa(word)
        };
        match dfa.eval(term) {
            Distance::Exact(d) if d <= budget => Some(d),
            _ => None,
        }
    }

    /// Random words over a small alphabet, with two-byte and three-byte characters, so
    /// near pairs are common.
    fn pairs(n: usize) -> impl Iterator<Item = (String, String, u8, bool)> {
        let alphabet = ['a', 'b', 'c', 'é', 'ж', '音'];
        let mut next = crate::search::test_numbers(0x2545_f491_4f6c_dd1d);
        (0..n).map(move |_| {
            let (w_len, t_len) = (1 + next(7), next(9));
            let w: String = (0..w_len).map(|_| alphabet[next(6)]).collect();
            let t: String = (0..t_len).map(|_| alphabet[next(6)]).collect();
            (w, t, 1 + next(2) as u8, next(2) == 0)
        })
    }

    #[test]
    fn distances_follow_the_definition() {
        let mut matched = [0usize; 3];
        for (w, t, budget, prefix) in pairs(30_000) {
            let ours = Typos::new(&w, budget, prefix).and_then(|a| a.eval(&t));
            let want = definition(&w, &t, budget, prefix);
            assert_eq!(ours, want, "{w:?} against {t:?}, {budget}, prefix {prefix}");
            if let Some(d) = want {
                matched[usize::from(d)] += 1;
            }
        }
        assert!(
            matched.iter().all(|&n| n > 300),
            "too few near pairs: {matched:?}"
        );
    }

    /// Whole words are measured as `levenshtein_automata` measures them. Its prefix DFAs
    /// stop at a state from which no continuation can do better, which sometimes misses a
    /// shorter prefix closer still ("feef" is two deletions from "ff", the start of
    /// "ffdadb"; the library says more than two): this automaton finds every term it finds,
    /// at no more typos.
    #[test]
    fn whole_words_agree_with_levenshtein_automata_and_prefixes_find_more() {
        let mut more = 0;
        for (w, t, budget, prefix) in pairs(30_000) {
            let ours = Typos::new(&w, budget, prefix).and_then(|a| a.eval(&t));
            let theirs = library(&w, &t, budget, prefix);
            if prefix {
                if let Some(d) = theirs {
                    assert!(
                        ours.is_some_and(|o| o <= d),
                        "{w:?} against {t:?}, {budget}"
                    );
                }
                more += usize::from(ours.is_some() && theirs.is_none());
            } else {
                assert_eq!(ours, theirs, "{w:?} against {t:?}, {budget}");
            }
        }
        assert_eq!(library("feef", "ffdadb", 2, true), None);
        assert_eq!(
            Typos::new("feef", 2, true).and_then(|a| a.eval("ffdadb")),
            Some(2)
        );
        println!("prefix pairs only this automaton matched: {more}");
    }

    #[test]
    fn transpositions_and_prefixes() {
        let one = |w: &str, t: &str, prefix: bool| Typos::new(w, 1, prefix).and_then(|a| a.eval(t));
        assert_eq!(one("night", "nihgt", false), Some(1));
        assert_eq!(one("night", "night", false), Some(0));
        assert_eq!(one("night", "nights", false), Some(1));
        assert_eq!(one("night", "nightingale", false), None);
        assert_eq!(one("night", "nightingale", true), Some(0));
        assert_eq!(one("nihgt", "nightingale", true), Some(1));
        assert_eq!(one("café", "cafe", false), Some(1));
        assert!(Typos::new(&"a".repeat(MAX_CHARS + 1), 2, false).is_none());
    }

    #[test]
    fn the_automaton_walks_a_dictionary() {
        use fst::{IntoStreamer, Set, Streamer};
        let set = Set::from_iter(["dreamer", "dreams", "driver", "river", "rivers"]).unwrap();
        let a = Typos::new("rivr", 1, true).unwrap();
        let mut found = Vec::new();
        let mut stream = set.search(&a).into_stream();
        while let Some(k) = stream.next() {
            found.push(String::from_utf8_lossy(k).into_owned());
        }
        // "driver" needs two: the inserted d and the missing e.
        assert_eq!(found, ["river", "rivers"]);
    }
}
