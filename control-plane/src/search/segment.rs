//! One immutable search segment: documents numbered by popularity, an `fst` term dictionary,
//! `roaring` posting lists, and the ranking rules applied bucket by bucket so only the top
//! of the ranking is ever materialised.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use fst::{Automaton, IntoStreamer, Map, Streamer};
use roaring::{MultiOps, RoaringBitmap};

use super::text::{typo_budget, words};
use super::typos::Typos;
use super::{Kind, SearchDoc};

/// Prefixes up to this many characters have their posting lists precomputed: a one-letter
/// prefix would otherwise union tens of thousands of lists per keystroke.
const SHORT_PREFIX: usize = 4;

/// Terms a query word may stand for through typos (exact and prefix matches are all kept).
const MAX_TYPO_DERIVATIONS: usize = 50;

/// Typo'd terms looked at per query word before choosing among them.
const MAX_TYPO_SCAN: usize = 500;

/// Query words beyond this many are ignored.
pub const MAX_QUERY_WORDS: usize = 8;

/// A query's words, each with its typo automaton, made once for every segment searched.
pub struct QueryWords {
    words: Vec<QueryWord>,
}

struct QueryWord {
    text: String,
    /// The last word: it matches every term it begins, as typed so far.
    prefix: bool,
    budget: u8,
    /// `None` when the word is too short for a typo (or absurdly long).
    typos: Option<Typos>,
}

impl QueryWords {
    /// The first [`MAX_QUERY_WORDS`] of `query`, the last taken as a prefix.
    pub fn new(query: &[String]) -> QueryWords {
        let n = query.len().min(MAX_QUERY_WORDS);
        let words = query[..n]
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let prefix = i + 1 == n;
                let budget = typo_budget(text);
                let typos = (budget > 0)
                    .then(|| Typos::new(text, budget, prefix))
                    .flatten();
                QueryWord {
                    text: text.clone(),
                    prefix,
                    budget,
                    typos,
                }
            })
            .collect();
        QueryWords { words }
    }
}

/// Documents matching one query word, by the typos it may take.
struct WordMatch {
    /// The typos this word may carry.
    budget: u8,
    /// `within[d]`: documents matched with at most `d` typos.
    within: [RoaringBitmap; 3],
}

impl WordMatch {
    fn all(&self) -> &RoaringBitmap {
        &self.within[2]
    }
}

/// The terms one query word stands for, by term number: the dictionary's order, so the
/// terms a prefix begins are one run of numbers.
#[derive(Default)]
struct TermSet {
    /// Terms `run.0..run.1`: those an exact prefix begins.
    run: Option<(u32, u32)>,
    /// Other terms (the word itself, typo'd terms) with their typos, sorted by term.
    each: Vec<(u32, u8)>,
}

impl TermSet {
    /// The typos the word takes to be term `t`, if it stands for it.
    fn typos(&self, t: u32) -> Option<u8> {
        if self.run.is_some_and(|(lo, hi)| (lo..hi).contains(&t)) {
            return Some(0);
        }
        self.each
            .binary_search_by_key(&t, |&(e, _)| e)
            .ok()
            .map(|i| self.each[i].1)
    }
}

/// The posting lists one query word stands for, not yet unioned.
struct WordTerms<'a> {
    budget: u8,
    lists: [Vec<&'a RoaringBitmap>; 3],
    titles: Vec<&'a RoaringBitmap>,
    set: TermSet,
}

impl<'a> WordTerms<'a> {
    /// Documents it could match at most: the cost of unioning it whole.
    fn weight(&self) -> u64 {
        self.lists.iter().flatten().map(|b| b.len()).sum()
    }

    /// What unioning the word's lists whole costs: nothing for a single list.
    fn union_cost(&self) -> u64 {
        if self.lists.iter().map(Vec::len).sum::<usize>() <= 1 {
            0
        } else {
            self.weight()
        }
    }

    /// Every document the word matches, whatever its typos: borrowed when that is one list.
    /// A many-way union is far cheaper than folding lists in one at a time.
    fn union_all(&self) -> Cow<'a, RoaringBitmap> {
        let mut lists = self.lists.iter().flatten().copied();
        match (lists.next(), lists.next()) {
            (None, _) => Cow::Owned(RoaringBitmap::new()),
            (Some(one), None) => Cow::Borrowed(one),
            _ => Cow::Owned(self.lists.iter().flatten().copied().union()),
        }
    }

    /// The word's matches by typos, among `within` when given. Each level's lists are
    /// unioned whole in one many-way union and the union intersected once: measured faster
    /// than intersecting every list with the candidates first, even for few candidates
    /// (`search_bench` p99 0.95 against 1.6 ms), as each of those intersections allocates.
    /// Title matches are left for [`WordTerms::in_title`].
    fn matches(&self, within: Option<&RoaringBitmap>) -> WordMatch {
        let union = |lists: &[&RoaringBitmap]| match (lists, within) {
            ([one], Some(c)) => *one & c,
            (_, Some(c)) => lists.iter().copied().union() & c,
            (_, None) => lists.iter().copied().union(),
        };
        let zero = union(&self.lists[0]);
        let one = union(&self.lists[1]) | &zero;
        let two = union(&self.lists[2]) | &one;
        WordMatch {
            budget: self.budget,
            within: [zero, one, two],
        }
    }

    /// The documents among `among` where the word matched in the title.
    fn in_title(&self, among: &RoaringBitmap) -> RoaringBitmap {
        self.titles.iter().map(|l| *l & among).union()
    }
}

/// A ranked match: lower `class` ranks first (typos, then title), then lower `doc`
/// (documents are numbered most popular first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ranked {
    pub class: u8,
    pub doc: u32,
}

/// An immutable segment.
pub struct Segment {
    docs: Vec<SearchDoc>,
    terms: Map<Vec<u8>>,
    postings: Vec<RoaringBitmap>,
    title_postings: Vec<RoaringBitmap>,
    prefixes: HashMap<String, (RoaringBitmap, RoaringBitmap)>,
    /// The forward index: document `n`'s terms are `fwd_terms[fwd_starts[n]..fwd_starts[n
    /// + 1]]`, by term number, its `fwd_titled[n]` title terms first.
    fwd_starts: Vec<u32>,
    fwd_terms: Vec<u32>,
    fwd_titled: Vec<u32>,
    /// Documents whose rights must be checked (not playable everywhere, always).
    restricted: RoaringBitmap,
    by_key: HashMap<(Kind, String), u32>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("docs", &self.docs.len())
            .field("terms", &self.terms.len())
            .finish()
    }
}

impl Segment {
    /// Indexes `docs`, most popular first.
    pub fn build(mut docs: Vec<SearchDoc>) -> Segment {
        docs.sort_by(|a, b| {
            b.hit
                .popularity
                .cmp(&a.hit.popularity)
                .then_with(|| a.hit.id.cmp(&b.hit.id))
        });
        let mut terms: BTreeMap<String, (RoaringBitmap, RoaringBitmap)> = BTreeMap::new();
        let mut restricted = RoaringBitmap::new();
        let mut by_key = HashMap::with_capacity(docs.len());
        for (n, doc) in docs.iter().enumerate() {
            let n = n as u32;
            for w in words(&doc.hit.title) {
                let e = terms.entry(w).or_default();
                e.0.insert(n);
                e.1.insert(n);
            }
            let others = doc.hit.artist.iter().chain(doc.hit.album.iter());
            for w in others.flat_map(|t| words(t)) {
                terms.entry(w).or_default().0.insert(n);
            }
            if doc.rights.is_some() {
                restricted.insert(n);
            }
            by_key.insert((doc.hit.kind, doc.hit.id.clone()), n);
        }
        let mut prefixes: HashMap<String, (RoaringBitmap, RoaringBitmap)> = HashMap::new();
        for (term, (all, title)) in &terms {
            for (i, _) in term.char_indices().skip(1).take(SHORT_PREFIX) {
                let e = prefixes.entry(term[..i].to_owned()).or_default();
                e.0 |= all;
                e.1 |= title;
            }
            if term.chars().count() <= SHORT_PREFIX {
                let e = prefixes.entry(term.clone()).or_default();
                e.0 |= all;
                e.1 |= title;
            }
        }
        let mut postings = Vec::with_capacity(terms.len());
        let mut title_postings = Vec::with_capacity(terms.len());
        let keys: Vec<(String, u64)> = terms
            .into_iter()
            .enumerate()
            .map(|(i, (term, (all, title)))| {
                postings.push(all);
                title_postings.push(title);
                (term, i as u64)
            })
            .collect();
        // Keys come sorted and distinct out of the BTreeMap, which is all `from_iter` needs.
        let terms = Map::from_iter(keys).unwrap_or_default();
        let (fwd_starts, fwd_terms, fwd_titled) =
            forward_index(docs.len(), &postings, &title_postings);
        Segment {
            docs,
            terms,
            postings,
            title_postings,
            prefixes,
            fwd_starts,
            fwd_terms,
            fwd_titled,
            restricted,
            by_key,
        }
    }

    /// Whether every query word matched in document `n`'s title, read from the forward
    /// index: a few term numbers per document, where the bitmap way unions each word's
    /// title lists.
    fn all_in_title(&self, n: u32, words: &[WordTerms<'_>]) -> bool {
        let (terms, titled) = self.forward(n);
        words
            .iter()
            .all(|w| terms[..titled].iter().any(|&t| w.set.typos(t).is_some()))
    }

    /// Document `n`'s terms, and how many of the first are its title's.
    fn forward(&self, n: u32) -> (&[u32], usize) {
        let n = n as usize;
        let (from, to) = (self.fwd_starts[n] as usize, self.fwd_starts[n + 1] as usize);
        (&self.fwd_terms[from..to], self.fwd_titled[n] as usize)
    }

    /// Document `n`'s class (typos in all, at most 3, times two, plus one unless every
    /// word is in the title), or `None` when a word does not match it: the ranking
    /// rules for one document, from the forward index.
    fn classify(&self, n: u32, words: &[WordTerms<'_>]) -> Option<u8> {
        let (terms, titled) = self.forward(n);
        let (mut typos, mut all_titled) = (0u8, true);
        for w in words {
            let mut best: Option<u8> = None;
            let mut in_title = false;
            for (k, &t) in terms.iter().enumerate() {
                if let Some(d) = w.set.typos(t) {
                    best = Some(best.map_or(d, |b| b.min(d)));
                    in_title |= k < titled;
                }
            }
            typos += best?;
            all_titled &= in_title;
        }
        Some(typos.min(3) * 2 + u8::from(!all_titled))
    }

    /// The run of term numbers `prefix` begins.
    fn prefix_run(&self, prefix: &str) -> (u32, u32) {
        let first_at_least = |key: &[u8]| {
            self.terms
                .range()
                .ge(key)
                .into_stream()
                .next()
                .map_or(self.postings.len() as u32, |(_, t)| t as u32)
        };
        // The first key past every key `prefix` begins: drop trailing 0xFF bytes and
        // increment the last (none: the run goes to the end).
        let mut past = prefix.as_bytes().to_vec();
        while past.last() == Some(&0xFF) {
            past.pop();
        }
        let hi = match past.last_mut() {
            Some(b) => {
                *b += 1;
                first_at_least(&past)
            }
            None => self.postings.len() as u32,
        };
        (first_at_least(prefix.as_bytes()), hi)
    }

    pub fn docs(&self) -> &[SearchDoc] {
        &self.docs
    }

    pub fn doc(&self, n: u32) -> &SearchDoc {
        &self.docs[n as usize]
    }

    pub fn position(&self, kind: Kind, id: &str) -> Option<u32> {
        self.by_key.get(&(kind, id.to_owned())).copied()
    }

    pub fn is_restricted(&self, n: u32) -> bool {
        self.restricted.contains(n)
    }

    /// Bytes held by posting lists and the term dictionary (documents not counted).
    pub fn index_bytes(&self) -> usize {
        let lists = self
            .postings
            .iter()
            .chain(&self.title_postings)
            .chain(self.prefixes.values().flat_map(|(a, b)| [a, b]))
            .map(|b| b.serialized_size())
            .sum::<usize>();
        let forward =
            4 * (self.fwd_starts.len() + self.fwd_terms.len()) + 4 * self.fwd_titled.len();
        lists + forward + self.terms.as_fst().as_bytes().len()
    }

    /// The posting lists a query word stands for, by typos, with their title lists.
    fn word_terms<'a>(&'a self, query: &QueryWord) -> WordTerms<'a> {
        let (word, prefix, budget) = (query.text.as_str(), query.prefix, query.budget);
        let mut terms = WordTerms {
            budget,
            lists: Default::default(),
            titles: Vec::new(),
            set: TermSet::default(),
        };
        let add_term = |terms: &mut WordTerms<'a>, typos: u8, t: u64| {
            terms.lists[usize::from(typos.min(2))].push(&self.postings[t as usize]);
            terms.titles.push(&self.title_postings[t as usize]);
        };
        // Exact matches, all of them: the word itself, or every term it begins.
        if !prefix {
            if let Some(t) = self.terms.get(word) {
                add_term(&mut terms, 0, t);
                terms.set.each.push((t as u32, 0));
            }
        } else if word.chars().count() <= SHORT_PREFIX {
            if let Some((all, title)) = self.prefixes.get(word) {
                terms.lists[0].push(all);
                terms.titles.push(title);
                terms.set.run = Some(self.prefix_run(word));
            }
        } else {
            let mut stream = self
                .terms
                .search(fst::automaton::Str::new(word).starts_with())
                .into_stream();
            let mut run: Option<(u32, u32)> = None;
            while let Some((_, t)) = stream.next() {
                add_term(&mut terms, 0, t);
                let t = t as u32;
                run = Some(run.map_or((t, t + 1), |(lo, _)| (lo, t + 1)));
            }
            terms.set.run = run;
        }
        if let Some(automaton) = &query.typos {
            // A short word with a typo can be near thousands of terms (a typo'd prefix
            // matches every completion): look at the first few hundred in dictionary order,
            // and keep the closest, and among equally close the most frequent.
            let mut stream = self.terms.search_with_state(automaton).into_stream();
            let mut typoed = Vec::new();
            while let Some((_, t, state)) = stream.next() {
                if let Some(d @ 1..) = automaton.distance(&state) {
                    typoed.push((d, t));
                    if typoed.len() == MAX_TYPO_SCAN {
                        break;
                    }
                }
            }
            if typoed.len() > MAX_TYPO_DERIVATIONS {
                typoed
                    .sort_by_key(|&(d, t)| (d, std::cmp::Reverse(self.postings[t as usize].len())));
                typoed.truncate(MAX_TYPO_DERIVATIONS);
            }
            for (d, t) in typoed {
                add_term(&mut terms, d, t);
                terms.set.each.push((t as u32, d));
            }
            terms.set.each.sort_unstable();
        }
        terms
    }

    /// The best `want` matches for `query` that `keep` accepts, in rank order, and how many
    /// documents matched before `keep` was asked (an estimate of the total).
    pub fn search(
        &self,
        query: &QueryWords,
        want: usize,
        keep: impl FnMut(u32) -> bool,
    ) -> (Vec<Ranked>, u64) {
        self.search_with(query, want, keep, FORWARD_CANDIDATES)
    }

    /// [`Segment::search`], checking documents against the forward index once at most
    /// `forward` candidates are left.
    fn search_with(
        &self,
        query: &QueryWords,
        want: usize,
        mut keep: impl FnMut(u32) -> bool,
        forward: u64,
    ) -> (Vec<Ranked>, u64) {
        let n = query.words.len();
        if n == 0 || want == 0 || self.docs.is_empty() {
            return (Vec::new(), 0);
        }
        let terms: Vec<WordTerms<'_>> = query.words.iter().map(|w| self.word_terms(w)).collect();
        // Every word must match: start from the rarest, and take each further word only
        // where the words before it matched.
        // The first word is unioned whole, so it is the cheapest to union (a single list
        // costs nothing); the rest narrow the candidates smallest first.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| terms[i].weight());
        if let Some(cheapest) = (0..n).min_by_key(|&i| (terms[i].union_cost(), terms[i].weight())) {
            order.retain(|&i| i != cheapest);
            order.insert(0, cheapest);
        }
        let mut matches: Vec<Option<WordMatch>> = (0..n).map(|_| None).collect();
        let mut all: Option<Cow<'_, RoaringBitmap>> = None;
        for &i in &order {
            // Few candidates left: checking each against the forward index is cheaper than
            // intersecting every posting list of the words still to come with them.
            if let Some(c) = &all
                && c.len() <= forward
            {
                return self.rank_forward(c, &terms, want, &mut keep);
            }
            let narrowed = match &all {
                None if n == 1 => {
                    let m = terms[i].matches(None);
                    let narrowed = m.all().clone();
                    matches[i] = Some(m);
                    Cow::Owned(narrowed)
                }
                // The first word's typo levels wait for the final candidates (below).
                None => terms[i].union_all(),
                Some(c) => {
                    let m = terms[i].matches(Some(c));
                    let narrowed = m.all().clone();
                    matches[i] = Some(m);
                    Cow::Owned(narrowed)
                }
            };
            if narrowed.is_empty() {
                return (Vec::new(), 0);
            }
            all = Some(narrowed);
        }
        let all = all.unwrap_or_default();
        // Every word has narrowed the candidates; when few are left, classifying each is
        // cheaper than working out the first word's typo levels and the buckets. (A single
        // word has its levels already, and the buckets stop at the first `want`.)
        if n > 1 && all.len() <= forward {
            return self.rank_forward(&all, &terms, want, &mut keep);
        }
        if let Some(&first) = order.first()
            && matches[first].is_none()
        {
            matches[first] = Some(terms[first].matches(Some(&all)));
        }
        let matches: Vec<WordMatch> = matches.into_iter().flatten().collect();
        let total = all.len();
        if total == 0 {
            return (Vec::new(), 0);
        }
        let mut out = Vec::with_capacity(want);
        let mut seen = RoaringBitmap::new();
        // Rule 1, typos: buckets of at most 0, 1, 2 typos in all, then the rest.
        for typos in 0..=3usize {
            let bucket = if typos == 3 {
                all.as_ref() - &seen
            } else {
                within_total(&matches, &order, typos) - &seen
            };
            seen |= &bucket;
            if bucket.is_empty() {
                continue;
            }
            // Rule 2, attribute: every word found in the title first. Rule 3, popularity:
            // document numbers are popularity ranks, so walking the bucket in order and
            // checking titles in the forward index finds the first titled documents at
            // once; only when titled documents are rare is the bucket split with bitmaps.
            let class = typos as u8 * 2;
            let (titled, rest) =
                match self.walk_bucket(&bucket, &terms, want - out.len(), &mut keep) {
                    Some(split) => split,
                    None => {
                        let title_first = order.iter().fold(bucket.clone(), |acc, &i| {
                            if acc.is_empty() {
                                acc
                            } else {
                                terms[i].in_title(&acc)
                            }
                        });
                        let rest = &bucket - &title_first;
                        let room = want - out.len();
                        let titled: Vec<u32> =
                            title_first.iter().filter(|&d| keep(d)).take(room).collect();
                        let rest = rest
                            .iter()
                            .filter(|&d| keep(d))
                            .take(room - titled.len())
                            .collect();
                        (titled, rest)
                    }
                };
            for (sub, docs) in [(0u8, titled), (1, rest)] {
                for doc in docs {
                    out.push(Ranked {
                        class: class + sub,
                        doc,
                    });
                    if out.len() == want {
                        return (out, total);
                    }
                }
            }
            if seen.len() == total {
                break;
            }
        }
        (out, total)
    }
}

impl Segment {
    /// The best `want` of `candidates` that `keep` accepts, every document classified by
    /// [`Segment::classify`], and how many matched every word.
    fn rank_forward(
        &self,
        candidates: &RoaringBitmap,
        terms: &[WordTerms<'_>],
        want: usize,
        keep: &mut impl FnMut(u32) -> bool,
    ) -> (Vec<Ranked>, u64) {
        let mut classes: [Vec<u32>; 8] = Default::default();
        let mut total = 0;
        for doc in candidates {
            let Some(class) = self.classify(doc, terms) else {
                continue;
            };
            total += 1;
            let bucket = &mut classes[usize::from(class)];
            if bucket.len() < want && keep(doc) {
                bucket.push(doc);
            }
        }
        let ranked = classes
            .iter()
            .zip(0u8..)
            .flat_map(|(docs, class)| docs.iter().map(move |&doc| Ranked { class, doc }))
            .take(want)
            .collect();
        (ranked, total)
    }

    /// The first `room` documents of `bucket` that `keep` accepts with every word in the
    /// title, and the first of the others to fill `room`, in order; `None` when
    /// [`WALK_LIMIT`] documents did not settle it (few titled ones), for the bitmap way.
    fn walk_bucket(
        &self,
        bucket: &RoaringBitmap,
        terms: &[WordTerms<'_>],
        room: usize,
        keep: &mut impl FnMut(u32) -> bool,
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let (mut titled, mut rest) = (Vec::new(), Vec::new());
        for (walked, doc) in bucket.iter().enumerate() {
            if walked == WALK_LIMIT {
                return None;
            }
            if !keep(doc) {
                continue;
            }
            if self.all_in_title(doc, terms) {
                titled.push(doc);
                if titled.len() == room {
                    rest.clear();
                    break;
                }
            } else if rest.len() < room {
                rest.push(doc);
            }
        }
        rest.truncate(room - titled.len());
        Some((titled, rest))
    }
}

/// Candidates at or below which the remaining words are checked document by document.
const FORWARD_CANDIDATES: u64 = 256;

/// Documents of a bucket checked one by one before its titled documents are worked out
/// with bitmaps instead.
const WALK_LIMIT: usize = 2048;

/// The forward index from the posting lists: where each document's run of terms starts,
/// the runs one after another (title terms first), and how many of each run are the title's.
fn forward_index(
    docs: usize,
    postings: &[RoaringBitmap],
    title_postings: &[RoaringBitmap],
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; docs + 1];
    let mut titled = vec![0u32; docs];
    for list in postings {
        for n in list {
            starts[n as usize + 1] += 1;
        }
    }
    for list in title_postings {
        for n in list {
            titled[n as usize] += 1;
        }
    }
    for n in 0..docs {
        starts[n + 1] += starts[n];
    }
    // Each document fills its title terms from the front and the others after them.
    let mut title_at = starts[..docs].to_vec();
    let mut other_at: Vec<u32> = (0..docs).map(|n| starts[n] + titled[n]).collect();
    let mut terms = vec![0u32; starts[docs] as usize];
    for (t, (all, title)) in postings.iter().zip(title_postings).enumerate() {
        for n in all {
            let at = if title.contains(n) {
                &mut title_at[n as usize]
            } else {
                &mut other_at[n as usize]
            };
            terms[*at as usize] = t as u32;
            *at += 1;
        }
    }
    (starts, terms, titled)
}

fn intersect(mut sets: impl Iterator<Item = RoaringBitmap>) -> RoaringBitmap {
    let Some(mut acc) = sets.next() else {
        return RoaringBitmap::new();
    };
    for s in sets {
        if acc.is_empty() {
            break;
        }
        acc &= s;
    }
    acc
}

/// Documents whose words match with at most `total` typos in all: the union, over every way
/// of spending exactly `total` typos across the words (each within its budget), of the
/// words' matches within their share.
fn within_total(matches: &[WordMatch], order: &[usize], total: usize) -> RoaringBitmap {
    let mut out = RoaringBitmap::new();
    let mut shares = vec![0usize; matches.len()];
    spend(matches, order, total, 0, &mut shares, &mut out);
    out
}

fn spend(
    matches: &[WordMatch],
    order: &[usize],
    left: usize,
    word: usize,
    shares: &mut Vec<usize>,
    out: &mut RoaringBitmap,
) {
    if word == matches.len() {
        if left == 0 {
            *out |= intersect(order.iter().map(|&i| matches[i].within[shares[i]].clone()));
        }
        return;
    }
    for share in 0..=left.min(usize::from(matches[word].budget)) {
        shares[word] = share;
        spend(matches, order, left - share, word + 1, shares, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Hit;

    /// Both ways of ranking (bitmaps throughout, and the forward index once candidates are
    /// few) agree on every query, over a catalogue of common and rare words with typos.
    #[test]
    fn the_forward_index_ranks_as_the_bitmaps_do() {
        let vocab = [
            "love",
            "lover",
            "loves",
            "night",
            "nights",
            "knight",
            "stone",
            "stones",
            "stoned",
            "river",
            "rivers",
            "driver",
            "heart",
            "hearts",
            "hurt",
            "forever",
            "fever",
            "dream",
            "dreams",
            "dreamer",
            "light",
            "lights",
            "flight",
            "blue",
            "blues",
            "glue",
            "road",
            "roads",
            "broad",
            "moon",
            "moonlight",
            "soon",
        ];
        let mut next = crate::search::test_numbers(0x9e37_79b9_7f4a_7c15);
        let phrase = |words: usize, next: &mut dyn FnMut(usize) -> usize| {
            (0..words)
                .map(|_| vocab[next(vocab.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let docs: Vec<SearchDoc> = (0..3000)
            .map(|i| {
                let title = phrase(1 + next(3), &mut next);
                let artist = phrase(1 + next(2), &mut next);
                SearchDoc {
                    hit: Hit {
                        kind: Kind::Track,
                        id: format!("t{i}"),
                        title,
                        artist: Some(artist),
                        album: None,
                        popularity: next(10_000) as u64,
                    },
                    rights: None,
                }
            })
            .collect();
        let segment = Segment::build(docs);
        let mut compared = 0;
        for _ in 0..400 {
            let mut q = words(&phrase(2 + next(2), &mut next));
            // The last word as typed so far, sometimes with a typo.
            let last = q.pop().unwrap_or_default();
            let mut last: String = last.chars().take(2 + next(5)).collect();
            if next(2) == 0 && last.len() > 4 {
                last.replace_range(1..2, "x");
            }
            q.push(last);
            let keep = |n: u32| n % 7 != 3;
            let words = QueryWords::new(&q);
            let bitmaps = segment.search_with(&words, 10, keep, 0);
            let forward = segment.search_with(&words, 10, keep, u64::MAX);
            assert_eq!(bitmaps, forward, "{q:?}");
            compared += usize::from(!bitmaps.0.is_empty());
        }
        assert!(compared > 300, "only {compared} queries matched anything");
    }
}
