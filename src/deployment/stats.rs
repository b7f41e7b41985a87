//! Per-model-version counters for Triton's statistics extension.

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

/// One entry of `{"model_stats": [...]}`.
#[derive(Serialize, Clone, Debug)]
pub struct ModelStatsSnapshot {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<serde_json::Value>,
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
            batch_stats: Vec::new(),
        }
    }
}
