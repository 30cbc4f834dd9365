//! Where a worker VM's memory goes for a rule set: heap bytes held after compiling the
//! configuration, split into the URL patterns, the any-host `RegexSet` and the rest, then after
//! the first match (which builds the regex engines' lazy caches). Run on the benchmark's
//! configuration: `cargo run --release -p portcullis-core --example footprint -- FILE.json`
//! (`make bench-filter` writes `target/bench-filter/memory-portcullis-*/portcullis.json`).
//! Native pointers are twice wasm32's, so the module's figures are somewhat lower.
//! Also prints the peak while compiling: a VM's linear memory never shrinks, so the peak, not
//! what is held after, is what a worker VM keeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use portcullis_core::config::Engine;
use portcullis_core::matcher::{IndexEntry, MatchingStrategy, RuleIndex, UrlPattern};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn kb(bytes: usize) -> String {
    format!("{:8.0} KB", bytes as f64 / 1024.0)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: footprint CONFIG.json [URL]");
    let url = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "http://bench.shop.svc.cluster.local/api/resource".to_string());
    let bytes = std::fs::read(&path).expect("reading the configuration");
    let config: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    let urls: Vec<String> = config["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["match"]["url"].as_str().expect("url").to_string())
        .collect();

    let before = live();
    PEAK.store(before, Ordering::Relaxed);
    let engine = Engine::from_json(&bytes).expect("configuration compiles");
    let whole = live() - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;

    let before = live();
    let patterns: Vec<UrlPattern> = urls
        .iter()
        .map(|u| UrlPattern::compile(u, MatchingStrategy::Regexp).expect("pattern"))
        .collect();
    let just_patterns = live() - before;
    let entries: Vec<IndexEntry> = patterns
        .into_iter()
        .map(|pattern| IndexEntry {
            methods: vec!["GET".into()],
            pattern,
            captures: false,
        })
        .collect();
    let before = live();
    let index = RuleIndex::new(entries);
    let index_extra = live() - before;
    let before = live();
    let found = index.find("GET", &url);
    let first_match = live() - before;

    println!("{} rules ({path})", urls.len());
    println!("  engine after from_json          {}", kb(whole));
    println!("  peak during from_json           {}", kb(peak));
    println!("    URL patterns (fancy-regex)    {}", kb(just_patterns));
    println!("    index (any-host RegexSet ...) {}", kb(index_extra));
    println!(
        "    the rest (handlers, templates){}",
        kb(whole.saturating_sub(just_patterns + index_extra))
    );
    println!(
        "  first match, lazy caches        {}   ({found:?})",
        kb(first_match)
    );
    drop(engine);
}
