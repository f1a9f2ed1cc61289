//! The same catalogue and queries as `search_bench`, through tantivy's fuzzy query: each
//! word a `FuzzyTermQuery` over title, artist and album at the same typo budget (the last
//! word as a prefix), all words required, the top 10 by plays.
//!
//! `cargo run --release --manifest-path benches/search-peer/Cargo.toml -- [TRACKS] [QUERIES]`

use std::time::Instant;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, FuzzyTermQuery, Occur, Query};
use tantivy::schema::{FAST, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexWriter, Order, TantivyDocument, Term, doc};

#[path = "../search_data.rs"]
mod search_data;

use search_data::{peak_rss_mb, percentile, typo_budget, words};

fn main() -> tantivy::Result<()> {
    let mut args = std::env::args().skip(1);
    let tracks: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let catalogue = search_data::catalogue(tracks);
    let cases = search_data::queries(&catalogue, queries);

    let mut schema = Schema::builder();
    let id = schema.add_text_field("id", STRING | STORED);
    let title = schema.add_text_field("title", TEXT);
    let artist = schema.add_text_field("artist", TEXT);
    let album = schema.add_text_field("album", TEXT);
    let plays = schema.add_u64_field("plays", FAST);
    let index = Index::create_in_ram(schema.build());
    let built = Instant::now();
    {
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 500_000_000)?;
        for t in &catalogue {
            writer.add_document(doc!(
                id => t.id.as_str(),
                title => t.title.as_str(),
                artist => t.artist.as_str(),
                album => t.album.as_deref().unwrap_or(""),
                plays => t.plays,
            ))?;
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
    }
    let build_s = built.elapsed().as_secs_f64();
    drop(catalogue);
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let fields = [title, artist, album];

    let mut latencies = Vec::with_capacity(cases.len());
    let mut found = 0;
    for (target, text) in &cases {
        let started = Instant::now();
        let ws = words(text);
        let clauses: Vec<(Occur, Box<dyn Query>)> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let budget = typo_budget(w);
                let per_field: Vec<(Occur, Box<dyn Query>)> = fields
                    .iter()
                    .map(|&f| {
                        let term = Term::from_field_text(f, w);
                        let q: Box<dyn Query> = if i + 1 == ws.len() {
                            Box::new(FuzzyTermQuery::new_prefix(term, budget, true))
                        } else {
                            Box::new(FuzzyTermQuery::new(term, budget, true))
                        };
                        (Occur::Should, q)
                    })
                    .collect();
                (
                    Occur::Must,
                    Box::new(BooleanQuery::new(per_field)) as Box<dyn Query>,
                )
            })
            .collect();
        let query = BooleanQuery::new(clauses);
        let top = searcher.search(
            &query,
            &TopDocs::with_limit(10).order_by_fast_field::<u64>("plays", Order::Desc),
        )?;
        let mut hit = false;
        for (_, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if doc.get_first(id).and_then(|v| v.as_str()) == Some(target.as_str()) {
                hit = true;
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        found += usize::from(hit);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "tantivy fuzzy: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; recall@10 {:.1} %; built in {build_s:.1} s; segments {}; peak RSS {:.0} MB",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        100.0 * found as f64 / cases.len() as f64,
        searcher.segment_readers().len(),
        peak_rss_mb()
    );
    Ok(())
}
