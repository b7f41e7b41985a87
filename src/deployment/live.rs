//! Live sets: the champion and challengers a deployment answers with, each
//! with its own capped compute for mirrored requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use serde::Serialize;

use super::LoadedModel;
use crate::config::{ChallengerConfig, ChallengerMode, ModelRef, RoutingConfig};
use crate::protocol::{TensorSpec, shape_string};
use crate::runtime::{ExecutionPlan, Runner, SpawnError, WorkerOptions};
use crate::store::{MemberCounts, Role};

/// Operational counters of one model in one deployment: kept across
/// live-set changes while the model is a member (champion or challenger),
/// saved to the store every few seconds and restored at start (see
/// `deployment::counters`); dropped when it leaves the deployment.
#[derive(Default, Debug)]
pub struct MemberStats {
    /// Requests answered live.
    pub served: AtomicU64,
    /// Mirrored requests queued.
    pub mirrored: AtomicU64,
    /// Mirrored requests dropped because its queue was full.
    pub dropped: AtomicU64,
    /// Mirrored requests that failed (engine error or panic).
    pub errors: AtomicU64,
    /// Mirrored requests abandoned after its timeout.
    pub timeouts: AtomicU64,
    /// Mirrored requests it could not take (more rows than its
    /// `max_batch_size`), so not run.
    pub rejected: AtomicU64,
    /// Mirrored requests answered in time.
    pub completed: AtomicU64,
    /// Engine time per request (µs), for the latency guardrail; like the
    /// counters, since the model joined the deployment (restored at start).
    latency: Mutex<Option<Histogram<u64>>>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct MemberStatsSnapshot {
    pub served: u64,
    pub mirrored: u64,
    pub dropped: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub rejected: u64,
    pub completed: u64,
    pub p99_us: Option<f64>,
}

/// Fewest latency samples before a p99 is reported.
const MIN_LATENCY_SAMPLES: u64 = 50;

impl MemberStats {
    /// Records one request's engine time.
    pub fn record_latency(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = h.get_or_insert_with(new_histogram);
        let _ = h.record(us);
    }

    /// Counters as saved, and the engine-time histogram's non-empty buckets
    /// (`(µs, count)`), restored.
    pub fn restored(c: MemberCounts, latency: &[(u64, u64)]) -> MemberStats {
        let histogram = (!latency.is_empty()).then(|| {
            let mut h = new_histogram();
            for &(us, n) in latency {
                let _ = h.record_n(us.clamp(1, 60_000_000), n);
            }
            h
        });
        MemberStats {
            served: AtomicU64::new(c.served),
            mirrored: AtomicU64::new(c.mirrored),
            dropped: AtomicU64::new(c.dropped),
            errors: AtomicU64::new(c.errors),
            timeouts: AtomicU64::new(c.timeouts),
            rejected: AtomicU64::new(c.rejected),
            completed: AtomicU64::new(c.completed),
            latency: Mutex::new(histogram),
        }
    }

    /// The counters now.
    pub fn counts(&self) -> MemberCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemberCounts {
            served: get(&self.served),
            mirrored: get(&self.mirrored),
            dropped: get(&self.dropped),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            rejected: get(&self.rejected),
            completed: get(&self.completed),
        }
    }

    /// Latency samples recorded so far.
    pub fn latency_samples(&self) -> u64 {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        h.as_ref().map_or(0, Histogram::len)
    }

    /// The engine-time histogram's non-empty buckets, `(µs, count)`, each
    /// bucket named by its highest equivalent value (recording it again
    /// lands in the same bucket). The histogram is copied under its lock
    /// (a few KiB) and read outside it.
    pub fn latency_buckets(&self) -> Vec<(u64, u64)> {
        let h = {
            let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            h.clone()
        };
        h.map(|h| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// p99 engine time in µs, once there are enough samples.
    pub fn p99_us(&self) -> Option<f64> {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        h.as_ref()
            .filter(|h| h.len() >= MIN_LATENCY_SAMPLES)
            .map(|h| h.value_at_quantile(0.99) as f64)
    }

    pub fn snapshot(&self) -> MemberStatsSnapshot {
        let c = self.counts();
        MemberStatsSnapshot {
            served: c.served,
            mirrored: c.mirrored,
            dropped: c.dropped,
            errors: c.errors,
            timeouts: c.timeouts,
            rejected: c.rejected,
            completed: c.completed,
            p99_us: self.p99_us(),
        }
    }
}

/// One model in a live set.
pub struct Member {
    pub model: Arc<LoadedModel>,
    pub role: Role,
    /// The challenger's settings (`None` for the champion).
    pub challenger: Option<ChallengerConfig>,
    /// Worker threads for mirrored requests (`None` when it is never mirrored).
    pub mirror: Option<Runner>,
    pub timeout: std::time::Duration,
    pub stats: Arc<MemberStats>,
    /// The Prometheus counter of mirrored copies dropped (queue full),
    /// looked up once: a drop must cost the request path no more than a
    /// refused push.
    pub mirror_dropped: std::sync::OnceLock<metrics::Counter>,
    /// The Prometheus counter of mirrored copies run and logged, registered
    /// at the first one.
    pub mirror_completed: std::sync::OnceLock<metrics::Counter>,
}

impl Member {
    pub fn new(
        model: Arc<LoadedModel>,
        challenger: Option<ChallengerConfig>,
        mirrored: bool,
        stats: Arc<MemberStats>,
    ) -> Result<Member, SpawnError> {
        let (role, workers, capacity, timeout_ms, low_priority) = match &challenger {
            Some(c) => (
                match c.mode {
                    ChallengerMode::Shadow => Role::Shadow,
                    ChallengerMode::Canary => Role::Canary,
                },
                c.workers,
                c.queue_capacity,
                c.timeout_ms,
                c.low_priority,
            ),
            // The champion's own mirrored copies (evidence for a challenger
            // that answers live traffic) are background work too.
            None => (Role::Champion, 1, 256, 10_000, true),
        };
        let mirror = mirrored
            .then(|| {
                let label = format!("{}@{}-mirror", model.name(), model.version());
                let serving = model.runner.plan();
                // The mirrored copies batch as the model's own requests do.
                let plan = ExecutionPlan::always_pool(serving.single_row_us, serving.per_row_us)
                    .with_batching(serving.batch_max_rows);
                let options = WorkerOptions {
                    workers,
                    low_priority,
                    // A mirrored request past its timeout is counted as one
                    // without spending CPU on it.
                    expire_after: Some(std::time::Duration::from_millis(timeout_ms)),
                };
                Runner::start_workers(&label, Arc::clone(model.model()), plan, capacity, options)
            })
            .transpose()?;
        Ok(Member {
            model,
            role,
            challenger,
            mirror,
            timeout: std::time::Duration::from_millis(timeout_ms),
            stats,
            mirror_dropped: std::sync::OnceLock::new(),
            mirror_completed: std::sync::OnceLock::new(),
        })
    }

    pub fn model_ref(&self) -> ModelRef {
        self.model.model_ref()
    }
}

/// What a deployment answers with right now; replaced whole, atomically.
pub struct LiveSet {
    pub champion: Arc<Member>,
    pub challengers: Vec<Arc<Member>>,
    /// How each challenger takes traffic (mode, fraction, slice), for routing.
    pub routes: Vec<crate::traffic::Lane>,
    pub routing: RoutingConfig,
    /// Which requests feed drift monitoring; `None` when it is off.
    pub drift: Option<crate::drift::monitor::Sampling>,
}

/// Whether a challenger can take the champion's requests: the same inputs
/// (names and datatypes) with compatible shapes.
pub fn compatible(champion: &[TensorSpec], challenger: &[TensorSpec]) -> Result<(), String> {
    for c in champion {
        let Some(o) = challenger.iter().find(|o| o.name == c.name) else {
            return Err(format!(
                "it has no input '{}' (the champion's inputs must all exist)",
                c.name
            ));
        };
        if o.datatype != c.datatype {
            return Err(format!(
                "input '{}' is {} but the champion's is {}",
                c.name, o.datatype, c.datatype
            ));
        }
        let fits = o.shape.len() == c.shape.len()
            && o.shape
                .iter()
                .zip(&c.shape)
                .all(|(&a, &b)| a < 0 || b < 0 || a == b);
        if !fits {
            return Err(format!(
                "input '{}' has shape {} but the champion's is {}",
                c.name,
                shape_string(&o.shape),
                shape_string(&c.shape)
            ));
        }
    }
    if let Some(extra) = challenger
        .iter()
        .find(|o| !champion.iter().any(|c| c.name == o.name))
    {
        return Err(format!(
            "it needs input '{}', which the champion's requests do not carry",
            extra.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_counters_and_latency_restore_to_the_same_evidence() {
        let stats = MemberStats::default();
        for i in 0..500u64 {
            stats.record_latency(std::time::Duration::from_micros(100 + i * 37));
        }
        stats.record_latency(std::time::Duration::from_secs(30));
        stats.served.fetch_add(501, Ordering::Relaxed);
        stats.mirrored.fetch_add(7, Ordering::Relaxed);
        stats.errors.fetch_add(2, Ordering::Relaxed);
        stats.timeouts.fetch_add(1, Ordering::Relaxed);
        stats.dropped.fetch_add(3, Ordering::Relaxed);
        stats.rejected.fetch_add(4, Ordering::Relaxed);
        stats.completed.fetch_add(4, Ordering::Relaxed);

        let restored = MemberStats::restored(stats.counts(), &stats.latency_buckets());
        assert_eq!(restored.snapshot(), stats.snapshot());
        assert_eq!(restored.latency_samples(), 501);
        assert_eq!(restored.latency_buckets(), stats.latency_buckets());
        // Counting resumes from the restored values.
        restored.served.fetch_add(1, Ordering::Relaxed);
        assert_eq!(restored.counts().served, 502);
    }

    #[test]
    fn nothing_recorded_restores_to_no_latency() {
        let restored = MemberStats::restored(MemberCounts::default(), &[]);
        assert_eq!(restored.latency_samples(), 0);
        assert_eq!(restored.p99_us(), None);
        assert!(restored.latency_buckets().is_empty());
    }
}
