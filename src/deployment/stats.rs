//! Per-model-version counters for Triton's statistics extension.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::runtime::Timings;

#[derive(Default)]
struct Stat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Stat {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn snapshot(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// One batch size's executions (Triton's `batch_stats` entry).
#[derive(Default)]
struct BatchStat {
    compute_input: Stat,
    compute_infer: Stat,
    compute_output: Stat,
}

impl BatchStat {
    fn add(&self, t: &Timings) {
        self.compute_input.add(t.decode);
        self.compute_infer.add(t.infer);
        self.compute_output.add(t.encode);
    }

    fn snapshot(&self, batch_size: usize) -> BatchStatsSnapshot {
        BatchStatsSnapshot {
            batch_size,
            compute_input: self.compute_input.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            compute_output: self.compute_output.snapshot(),
        }
    }
}

/// Batch sizes up to this one are counted without a lock; bigger ones
/// (rare, and each an expensive execution) under a mutex.
const LOCK_FREE_BATCH_SIZES: usize = 64;

/// Per-batch-size statistics.
struct BatchStats {
    small: Box<[BatchStat]>,
    large: Mutex<BTreeMap<usize, BatchStat>>,
}

impl Default for BatchStats {
    fn default() -> BatchStats {
        BatchStats {
            small: (0..LOCK_FREE_BATCH_SIZES)
                .map(|_| BatchStat::default())
                .collect(),
            large: Mutex::new(BTreeMap::new()),
        }
    }
}

impl BatchStats {
    fn add(&self, batch_size: usize, t: &Timings) {
        match batch_size.checked_sub(1).and_then(|i| self.small.get(i)) {
            Some(stat) => stat.add(t),
            None => self
                .large
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(batch_size)
                .or_default()
                .add(t),
        }
    }

    /// The batch sizes executed so far, smallest first.
    fn snapshot(&self) -> Vec<BatchStatsSnapshot> {
        let mut all: Vec<BatchStatsSnapshot> = self
            .small
            .iter()
            .enumerate()
            .filter(|(_, s)| s.compute_infer.count.load(Ordering::Relaxed) > 0)
            .map(|(i, s)| s.snapshot(i + 1))
            .collect();
        let large = self.large.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(large.iter().map(|(&size, s)| s.snapshot(size)));
        all
    }
}

/// Lock-free counters updated on every request.
#[derive(Default)]
pub struct ModelStats {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Stat,
    fail: Stat,
    queue: Stat,
    compute_input: Stat,
    compute_infer: Stat,
    compute_output: Stat,
    batches: BatchStats,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct InferenceStats {
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// One entry of `batch_stats`: the engine executions of one batch size
/// (rows). For an execution that ran several requests as one batch, the
/// input and output times are those of the request that counts the
/// execution (each request's tensors are decoded and encoded on their own).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchStatsSnapshot {
    pub batch_size: usize,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// One entry of `{"model_stats": [...]}`.
#[derive(Serialize, Clone, Debug)]
pub struct ModelStatsSnapshot {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<BatchStatsSnapshot>,
}

fn now_ms() -> u64 {
    u64::try_from(crate::clock::now_ms()).unwrap_or(0)
}

impl ModelStats {
    pub fn success(&self, rows: usize, total: Duration, t: &Timings) {
        self.last_inference_ms.store(now_ms(), Ordering::Relaxed);
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
        if !t.shared_execution {
            self.execution_count.fetch_add(1, Ordering::Relaxed);
            let batch_size = if t.batch_rows > 0 { t.batch_rows } else { rows };
            self.batches.add(batch_size, t);
        }
        self.success.add(total);
        self.queue.add(t.queue);
        self.compute_input.add(t.decode);
        self.compute_infer.add(t.infer);
        self.compute_output.add(t.encode);
    }

    pub fn failure(&self, total: Duration) {
        self.last_inference_ms.store(now_ms(), Ordering::Relaxed);
        self.fail.add(total);
    }

    pub fn snapshot(&self, name: &str, version: u64) -> ModelStatsSnapshot {
        ModelStatsSnapshot {
            name: name.to_owned(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: self.success.snapshot(),
                fail: self.fail.snapshot(),
                queue: self.queue.snapshot(),
                compute_input: self.compute_input.snapshot(),
                compute_infer: self.compute_infer.snapshot(),
                compute_output: self.compute_output.snapshot(),
            },
            batch_stats: self.batches.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(batch_rows: usize, shared_execution: bool) -> Timings {
        Timings {
            decode: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            encode: Duration::from_nanos(1),
            shared_execution,
            batch_rows,
            ..Timings::default()
        }
    }

    #[test]
    fn batch_stats_count_each_execution_once_by_its_rows() {
        let stats = ModelStats::default();
        let d = Duration::from_micros(5);
        // Two requests alone (1 row, then 3 rows), one batch of 2 + 5 rows
        // (the second request shares the first one's execution), and one
        // execution past the lock-free sizes.
        stats.success(1, d, &timings(0, false));
        stats.success(3, d, &timings(0, false));
        stats.success(2, d, &timings(7, false));
        stats.success(5, d, &timings(7, true));
        stats.success(100, d, &timings(0, false));
        let snap = stats.snapshot("m", 1);
        assert_eq!(snap.inference_count, 1 + 3 + 2 + 5 + 100);
        assert_eq!(snap.execution_count, 4);
        let sizes: Vec<(usize, u64)> = snap
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.count))
            .collect();
        assert_eq!(sizes, [(1, 1), (3, 1), (7, 1), (100, 1)]);
        let seven = &snap.batch_stats[2];
        assert_eq!(seven.compute_input, StatDuration { count: 1, ns: 10 });
        assert_eq!(seven.compute_infer, StatDuration { count: 1, ns: 100 });
        assert_eq!(seven.compute_output, StatDuration { count: 1, ns: 1 });
        let json = serde_json::to_value(&snap).expect("serialises");
        assert_eq!(json["batch_stats"][0]["batch_size"], 1);
        assert_eq!(json["batch_stats"][0]["compute_infer"]["count"], 1);
    }
}
