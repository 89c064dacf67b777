//! Request counters and latency histograms for the request path, without
//! contention.
//!
//! The `prometheus` crate's counters and histograms are single shared
//! atomics (the histogram's sum is a compare-and-swap loop on an `f64`):
//! with every worker thread answering requests, each update bounces a cache
//! line between cores. Here each thread adds to its own cache-line-aligned
//! shard with relaxed atomics, and a scrape adds the shards up. The series
//! exposed are exactly those of a `prometheus` counter and histogram.
//!
//! Labels are fixed sets (endpoint kind, status code); nothing here can take
//! a label from a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};

/// Endpoint kinds, indexed by `metrics::Endpoint as usize`.
pub const ENDPOINTS: [&str; 3] = ["container", "imds", "admin"];
/// Status codes credvend answers with; anything else is counted as "other".
pub const CODES: [u16; 11] = [200, 400, 401, 403, 404, 405, 408, 413, 429, 431, 503];
const N_CODES: usize = CODES.len() + 1;
/// Latency buckets: 10 µs doubling to about 1.3 s, fine enough to see tens of
/// microseconds.
const N_BUCKETS: usize = 18;
/// More shards than worker threads, so threads rarely share one.
const SHARDS: usize = 16;

fn bounds() -> &'static [f64; N_BUCKETS] {
    static B: OnceLock<[f64; N_BUCKETS]> = OnceLock::new();
    B.get_or_init(|| std::array::from_fn(|i| 0.000_01 * f64::from(1u32 << i)))
}

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    counts: [[AtomicU64; N_CODES]; 3],
    /// Per bucket, not cumulative; the last slot is above every bound.
    buckets: [[AtomicU64; N_BUCKETS + 1]; 3],
    sum_nanos: [AtomicU64; 3],
}

/// The shard of the calling thread, fixed for the thread's life.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS);
    INDEX.with(|i| *i)
}

pub struct RequestStats {
    shards: Box<[Shard]>,
    descs: Vec<Desc>,
}

impl RequestStats {
    pub fn new() -> Arc<RequestStats> {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            let labels = labels.iter().map(|l| l.to_string()).collect();
            Desc::new(name.into(), help.into(), labels, HashMap::new()).expect("valid desc")
        };
        Arc::new(RequestStats {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            descs: vec![
                desc(REQUESTS, REQUESTS_HELP, &["endpoint", "code"]),
                desc(DURATION, DURATION_HELP, &["endpoint"]),
            ],
        })
    }

    /// Counts one answered request: three relaxed atomic adds on this
    /// thread's shard.
    pub fn record(&self, endpoint: usize, status: u16, seconds: f64) {
        let s = &self.shards[shard_index()];
        let code = CODES
            .iter()
            .position(|c| *c == status)
            .unwrap_or(CODES.len());
        s.counts[endpoint][code].fetch_add(1, Relaxed);
        let bucket = bounds()
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(N_BUCKETS);
        s.buckets[endpoint][bucket].fetch_add(1, Relaxed);
        s.sum_nanos[endpoint].fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    fn total(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }
}

const REQUESTS: &str = "credvend_requests_total";
const REQUESTS_HELP: &str = "Requests answered, by endpoint and status code.";
const DURATION: &str = "credvend_request_duration_seconds";
const DURATION_HELP: &str = "Time to answer a request.";

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// Registered with the registry through a shared handle.
pub struct Exported(pub Arc<RequestStats>);

impl Collector for Exported {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = &self.0;
        let mut counters = Vec::new();
        let mut histograms = Vec::new();
        for (ep, ep_name) in ENDPOINTS.iter().enumerate() {
            for code in 0..N_CODES {
                let name = CODES.get(code).map(|c| c.to_string());
                let mut c = Counter::default();
                c.set_value(stats.total(|s| &s.counts[ep][code]) as f64);
                let mut m = Metric::default();
                m.set_label(vec![
                    label("code", name.as_deref().unwrap_or("other")),
                    label("endpoint", ep_name),
                ]);
                m.set_counter(c);
                counters.push(m);
            }
            let mut cumulative = 0;
            let mut buckets = Vec::with_capacity(N_BUCKETS);
            for (i, bound) in bounds().iter().enumerate() {
                cumulative += stats.total(|s| &s.buckets[ep][i]);
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            let count = cumulative + stats.total(|s| &s.buckets[ep][N_BUCKETS]);
            let mut h = Histogram::default();
            h.set_sample_count(count);
            h.set_sample_sum(stats.total(|s| &s.sum_nanos[ep]) as f64 / 1e9);
            h.set_bucket(buckets);
            let mut m = Metric::default();
            m.set_label(vec![label("endpoint", ep_name)]);
            m.set_histogram(h);
            histograms.push(m);
        }
        vec![
            family(REQUESTS, REQUESTS_HELP, MetricType::COUNTER, counters),
            family(DURATION, DURATION_HELP, MetricType::HISTOGRAM, histograms),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_across_threads() {
        let stats = RequestStats::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.record(0, 200, 0.000_015);
                    }
                    s.record(1, 599, 5.0);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let families = Exported(stats).collect();
        let counter = |ep: &str, code: &str| {
            families[0]
                .get_metric()
                .iter()
                .find(|m| {
                    let l = m.get_label();
                    l[0].value() == code && l[1].value() == ep
                })
                .map(|m| m.get_counter().get_value())
        };
        assert_eq!(counter("container", "200"), Some(4000.0));
        assert_eq!(counter("imds", "other"), Some(4.0));
        let h = families[1].get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 4000);
        // 15 µs falls in the second bucket (le 0.00002).
        assert_eq!(h.get_bucket()[0].cumulative_count(), 0);
        assert_eq!(h.get_bucket()[1].cumulative_count(), 4000);
        assert!((h.get_sample_sum() - 0.06).abs() < 1e-6);
        let slow = families[1].get_metric()[1].get_histogram();
        assert_eq!(slow.get_sample_count(), 4, "above every bound still counts");
        assert_eq!(slow.get_bucket()[N_BUCKETS - 1].cumulative_count(), 0);
    }
}
