//! The async bridge to a blocking [`Model`]: inline for requests that fit the
//! inline budget, dedicated worker threads behind a bounded queue otherwise.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::{Model, RuntimeError};
use crate::protocol::Tensor;

/// How a model's requests are executed, decided from warm-up measurements.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ExecutionPlan {
    /// Batches of at most this many rows run inline on the calling tokio
    /// worker; bigger ones go to the worker pool. 0 = always the pool.
    pub inline_max_rows: usize,
    /// Measured median latency of a one-row batch, in microseconds.
    pub single_row_us: f64,
    /// Measured marginal cost of one more row, in microseconds.
    pub per_row_us: f64,
}

impl ExecutionPlan {
    /// Plan from measurements: the largest batch whose estimated latency
    /// (`single_row + (rows − 1) × per_row`) fits `budget_us`.
    pub fn from_measurements(
        single_row_us: f64,
        per_row_us: f64,
        budget_us: f64,
        max_rows: usize,
    ) -> ExecutionPlan {
        let inline_max_rows = if single_row_us > budget_us {
            0
        } else if per_row_us <= 0.0 {
            max_rows
        } else {
            let extra = ((budget_us - single_row_us) / per_row_us).floor();
            (1.0 + extra).min(max_rows as f64) as usize
        };
        ExecutionPlan {
            inline_max_rows,
            single_row_us,
            per_row_us,
        }
    }

    pub fn always_pool(single_row_us: f64, per_row_us: f64) -> ExecutionPlan {
        ExecutionPlan {
            inline_max_rows: 0,
            single_row_us,
            per_row_us,
        }
    }
}

/// Durations of one request's phases, reported in the log, the metrics and
/// the `Server-Timing` response header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub decode: Duration,
    pub queue: Duration,
    pub infer: Duration,
    pub encode: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("model '{model}' is overloaded: its queue of {capacity} requests is full; retry later")]
    QueueFull { model: String, capacity: usize },
    #[error("model '{0}' is shutting down")]
    Stopped(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

type JobResult = (Result<Vec<Tensor>, RuntimeError>, Duration, Duration);

/// Runs inference for one loaded model.
pub struct Runner {
    label: String,
    model: Arc<dyn Model>,
    plan: ExecutionPlan,
    queue: Sender<Job>,
    capacity: usize,
}

impl Runner {
    /// Starts one worker thread per model instance, fed by a queue of
    /// `queue_capacity` requests.
    pub fn start(
        label: &str,
        model: Arc<dyn Model>,
        plan: ExecutionPlan,
        queue_capacity: usize,
    ) -> Runner {
        let workers = model.instances();
        Runner::start_workers(label, model, plan, queue_capacity, workers)
    }

    /// Starts `workers` worker threads (a compute cap) fed by a queue of
    /// `queue_capacity` requests.
    pub fn start_workers(
        label: &str,
        model: Arc<dyn Model>,
        plan: ExecutionPlan,
        queue_capacity: usize,
        workers: usize,
    ) -> Runner {
        let capacity = queue_capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
        for instance in 0..workers.max(1) {
            let rx = rx.clone();
            let model = Arc::clone(&model);
            std::thread::Builder::new()
                .name(format!("infer-{instance}-{label}"))
                .spawn(move || {
                    // Exits when the Runner (the only sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        let started = Instant::now();
                        let queued = started - job.enqueued;
                        let result = guarded(|| model.infer_on(instance, &job.inputs));
                        let _ = job.reply.send((result, queued, started.elapsed()));
                    }
                })
                .expect("spawning an inference worker thread");
        }
        Runner {
            label: label.to_owned(),
            model,
            plan,
            queue: tx,
            capacity,
        }
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn plan(&self) -> ExecutionPlan {
        self.plan
    }

    /// Requests waiting in the worker queue right now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Queues one batch on the workers without waiting for a place: refused
    /// at once when the queue is full. Await the result with [`Pending::wait`].
    pub fn try_submit(&self, inputs: Vec<Tensor>) -> Result<Pending, RunnerError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => Ok(Pending {
                rx,
                label: self.label.clone(),
            }),
            Err(TrySendError::Full(_)) => Err(RunnerError::QueueFull {
                model: self.label.clone(),
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(RunnerError::Stopped(self.label.clone())),
        }
    }

    /// Runs one batch of `rows` rows. Inline when the plan says it is cheaper
    /// than a hand-off; otherwise on a worker, refusing at once when the
    /// queue is full.
    pub async fn run(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Result<(Vec<Tensor>, Timings), RunnerError> {
        if rows <= self.plan.inline_max_rows {
            let started = Instant::now();
            let outputs = guarded(|| self.model.infer(&inputs))?;
            let timings = Timings {
                infer: started.elapsed(),
                ..Timings::default()
            };
            return Ok((outputs, timings));
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(RunnerError::QueueFull {
                    model: self.label.clone(),
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(RunnerError::Stopped(self.label.clone()));
            }
        }
        let (result, queue, infer) = rx
            .await
            .map_err(|_| RunnerError::Stopped(self.label.clone()))?;
        Ok((
            result?,
            Timings {
                queue,
                infer,
                ..Timings::default()
            },
        ))
    }
}

/// A batch queued by [`Runner::try_submit`].
pub struct Pending {
    rx: oneshot::Receiver<JobResult>,
    label: String,
}

impl Pending {
    pub async fn wait(self) -> Result<(Vec<Tensor>, Timings), RunnerError> {
        let (result, queue, infer) = self
            .rx
            .await
            .map_err(|_| RunnerError::Stopped(self.label))?;
        Ok((
            result?,
            Timings {
                queue,
                infer,
                ..Timings::default()
            },
        ))
    }
}

/// Runs `f`, turning a panic inside an engine into an error instead of
/// taking down the thread that serves other requests.
fn guarded<T>(f: impl FnOnce() -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(RuntimeError::Inference(format!("engine panicked: {what}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_the_budget() {
        // 6 µs for one row, 0.5 µs per extra row, 50 µs budget → 89 rows inline.
        let plan = ExecutionPlan::from_measurements(6.0, 0.5, 50.0, 1024);
        assert_eq!(plan.inline_max_rows, 89);
        // A model slower than the budget never runs inline.
        assert_eq!(
            ExecutionPlan::from_measurements(80.0, 1.0, 50.0, 1024).inline_max_rows,
            0
        );
        // Free rows are capped by the model's max batch.
        assert_eq!(
            ExecutionPlan::from_measurements(5.0, 0.0, 50.0, 64).inline_max_rows,
            64
        );
    }
}
