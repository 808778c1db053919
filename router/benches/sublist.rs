//! Sublist benchmarks: insert, remove, and match with and without a cache hit
//! on a trie of ~10k subscriptions mixing literals, `*`, `>` and queue groups.
//!
//! Run with `cargo bench -p router --bench sublist -- --quick`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use router::sublist::{SubItem, Sublist};

/// Stands in for the server's `Arc<Subscription>`, so cloning into a match
/// result costs what it will in the server.
#[derive(Clone)]
struct Sub(Arc<u64>);

impl SubItem for Sub {
    fn id(&self) -> u64 {
        *self.0
    }
}

fn sub(id: u64) -> Sub {
    Sub(Arc::new(id))
}

/// Builds the ~10k-subscription trie the benchmarks run against.
fn populated() -> (Sublist<Sub>, u64) {
    let sl = Sublist::new();
    let mut id = 0u64;
    let mut add = |subject: String, queue: Option<&[u8]>| {
        id += 1;
        sl.insert(subject.as_bytes(), queue, sub(id)).unwrap();
    };
    for a in 0..100 {
        // 7,000 literal subscriptions.
        for b in 0..70 {
            add(format!("svc.{a}.{b}.req"), None);
        }
        // 2,000 wildcard subscriptions, a third of them in queue groups.
        for _ in 0..7 {
            add(format!("svc.{a}.*.req"), None);
        }
        for _ in 0..7 {
            add(format!("svc.{a}.*.req"), Some(b"workers"));
        }
        for _ in 0..6 {
            add(format!("svc.{a}.>"), None);
        }
        // 1,000 more in other shapes.
        for c in 0..5 {
            add(format!("evt.{a}.{c}.>"), None);
            add(format!("*.{a}.{c}"), None);
        }
    }
    (sl, id)
}

fn benches(c: &mut Criterion) {
    let (sl, last_id) = populated();
    eprintln!("sublist populated with {} subscriptions", sl.count());

    // A pool of subjects for insert/remove so formatting is not timed.
    let pool: Vec<String> = (0..1024)
        .map(|i| format!("bench.{}.x.{}", i % 32, i))
        .collect();

    c.bench_function("insert", |b| {
        let mut next = last_id + 1;
        b.iter_custom(|iters| {
            let first = next;
            let start = Instant::now();
            for i in 0..iters {
                let subject = &pool[(i % 1024) as usize];
                sl.insert(subject.as_bytes(), None, sub(next + i)).unwrap();
            }
            let took = start.elapsed();
            for i in 0..iters {
                let subject = &pool[(i % 1024) as usize];
                sl.remove(subject.as_bytes(), None, first + i);
            }
            next += iters;
            took
        });
    });

    c.bench_function("remove", |b| {
        let mut next = last_id + 1_000_000_000;
        b.iter_custom(|iters| {
            let first = next;
            for i in 0..iters {
                let subject = &pool[(i % 1024) as usize];
                sl.insert(subject.as_bytes(), None, sub(first + i)).unwrap();
            }
            let start = Instant::now();
            for i in 0..iters {
                let subject = &pool[(i % 1024) as usize];
                black_box(sl.remove(subject.as_bytes(), None, first + i));
            }
            next += iters;
            start.elapsed()
        });
    });

    // A handful of hot subjects that stay cached; each matches a literal, two
    // `*` groups (one a queue group) and a `>`.
    let hot: Vec<String> = (0..8).map(|i| format!("svc.{}.{}.req", i * 7, i)).collect();
    for s in &hot {
        let r = sl.matches(s.as_bytes());
        assert_eq!(r.plain.len(), 1 + 7 + 6);
        assert_eq!(r.queues.len(), 1);
    }
    c.bench_function("match_cache_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 7;
            black_box(sl.matches(black_box(hot[i].as_bytes())))
        });
    });

    // Far more distinct subjects than the cache holds, visited cyclically,
    // so (nearly) every lookup walks the trie and refills the cache.
    let cold: Vec<String> = (0..20_000)
        .map(|i| format!("svc.{}.{}.req", i % 100, i / 100))
        .collect();
    c.bench_function("match_cache_miss", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            if i == cold.len() {
                i = 0;
            }
            black_box(sl.matches(black_box(cold[i].as_bytes())))
        });
    });

    let st = sl.stats();
    eprintln!(
        "stats: subs={} cache={} matches={} hit_rate={:.3} max_fanout={} avg_fanout={:.2}",
        st.num_subscriptions,
        st.num_cache,
        st.num_matches,
        st.cache_hit_rate,
        st.max_fanout,
        st.avg_fanout
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = sublist;
    config = config();
    targets = benches
}
criterion_main!(sublist);
