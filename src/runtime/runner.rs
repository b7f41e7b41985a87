//! The async bridge to a blocking [`Model`]: inline for requests that fit the
//! inline budget, dedicated worker threads behind a bounded queue otherwise.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
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
    /// Dynamic batching: a worker runs the requests waiting in its queue
    /// together, up to this many rows in all. 0 = one request per run.
    pub batch_max_rows: usize,
    /// Inline only while the model is idle (nothing queued or running) and
    /// its requests do not come in quick succession; under load requests
    /// queue for the workers, which batch them. Set for `execution =
    /// "auto"` with dynamic batching.
    pub inline_when_idle: bool,
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
            batch_max_rows: 0,
            inline_when_idle: false,
        }
    }

    pub fn always_pool(single_row_us: f64, per_row_us: f64) -> ExecutionPlan {
        ExecutionPlan {
            inline_max_rows: 0,
            single_row_us,
            per_row_us,
            batch_max_rows: 0,
            inline_when_idle: false,
        }
    }

    /// Turns on dynamic batching of up to `max_rows` rows per run.
    pub fn with_batching(mut self, max_rows: usize) -> ExecutionPlan {
        self.batch_max_rows = max_rows;
        self
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
    /// Ran in a dynamic batch whose one engine execution is counted by the
    /// batch's first request (Triton's `execution_count`).
    pub shared_execution: bool,
    /// Rows of the engine execution that answered: the batch's when the
    /// request ran in a dynamic batch, else 0 (the request's own rows).
    pub batch_rows: usize,
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

/// A runner whose worker threads could not all be started; the ones that
/// were have been stopped and joined.
#[derive(Debug, thiserror::Error)]
#[error("cannot start worker thread {started_of} of '{model}': {source}")]
pub struct SpawnError {
    pub model: String,
    /// `n/total`: the thread that failed.
    started_of: String,
    #[source]
    source: std::io::Error,
}

struct Job {
    inputs: JobInputs,
    /// Rows (the first input's first dimension; 0 when it has none).
    rows: usize,
    enqueued: Instant,
    reply: Reply,
}

/// A job's inputs: its own, or a copy shared with other models' jobs (a
/// request mirrored to several challengers is copied once).
enum JobInputs {
    Owned(Vec<Tensor>),
    Shared(Arc<Vec<Tensor>>),
}

impl JobInputs {
    /// The tensors, owned: taken (leaving none behind), or copied when
    /// another job still shares them.
    fn take(&mut self) -> Vec<Tensor> {
        match std::mem::replace(self, JobInputs::Owned(Vec::new())) {
            JobInputs::Owned(v) => v,
            JobInputs::Shared(shared) => Arc::unwrap_or_clone(shared),
        }
    }
}

impl std::ops::Deref for JobInputs {
    type Target = [Tensor];

    fn deref(&self) -> &[Tensor] {
        match self {
            JobInputs::Owned(v) => v,
            JobInputs::Shared(v) => v,
        }
    }
}

/// A request's outputs and timings, or why there are none.
pub type Answer = Result<(Vec<Tensor>, Timings), RunnerError>;

/// Where a job's result goes: a waiting request, or a function the worker
/// thread calls (background work nobody awaits, such as mirrored requests).
enum Reply {
    Channel(oneshot::Sender<JobResult>),
    Call(Box<dyn FnOnce(Answer) + Send>),
}

impl Job {
    fn new(inputs: JobInputs, reply: Reply) -> Job {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .and_then(|&d| usize::try_from(d).ok())
            .unwrap_or(0);
        Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
        }
    }
}

type JobResult = (Result<Vec<Tensor>, RuntimeError>, Timings);

/// Runs inference for one loaded model.
pub struct Runner {
    label: String,
    model: Arc<dyn Model>,
    plan: ExecutionPlan,
    queue: Queue,
    capacity: usize,
    /// Requests queued for or running on the workers, plus inline runs in
    /// progress: whether the model is idle.
    busy: Arc<AtomicUsize>,
    epoch: Instant,
    /// When the last request asked to run (µs since `epoch`).
    last_arrival_us: AtomicU64,
    /// Moving average of the time between requests (µs; each new gap
    /// weighs 1/16).
    arrival_gap_us: AtomicU64,
    /// Small requests queue for batching (the average gap fell below
    /// [`BATCH_BELOW_GAP_US`] and has not yet risen above
    /// [`INLINE_ABOVE_GAP_US`]).
    batching: AtomicBool,
}

/// Under `auto`, while a model's requests arrive on average closer together
/// than this, small ones queue for its workers, which batch them, instead
/// of running inline. Measured on 2 vCPUs with breast_cancer v1
/// (BENCHMARKS.md): at concurrency 2 (about 80 µs apart) inline is faster;
/// at 8 and 32 (20–35 µs apart) batching is.
const BATCH_BELOW_GAP_US: u64 = 40;

/// Once batching, small requests run inline again only when the average
/// gap is back above this: at a rate near the threshold the choice does not
/// flip back and forth (inline runs mixed with batches were measured slower
/// than batches alone; BENCHMARKS.md has the run at 25,000 req/s).
const INLINE_ABOVE_GAP_US: u64 = 60;

/// Longest gap the average takes in (µs): any longer pause counts as this
/// one, so that after it the average comes down to the threshold within
/// about 50 quick requests.
const MAX_GAP_US: u64 = 1_000;

/// Decrements the busy count when dropped (also on panic or cancellation).
struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runner {
    /// Starts one worker thread per model instance, fed by a queue of
    /// `queue_capacity` requests.
    pub fn start(
        label: &str,
        model: Arc<dyn Model>,
        plan: ExecutionPlan,
        queue_capacity: usize,
    ) -> Result<Runner, SpawnError> {
        let workers = model.instances();
        let options = WorkerOptions {
            workers,
            low_priority: false,
            expire_after: None,
        };
        Runner::start_workers(label, model, plan, queue_capacity, options)
    }

    /// Starts worker threads fed by a queue of `queue_capacity` requests.
    /// When a thread cannot be started (the system's thread or memory
    /// limit), the ones already started are stopped and joined before the
    /// error returns: a failed start leaves nothing running.
    pub fn start_workers(
        label: &str,
        model: Arc<dyn Model>,
        plan: ExecutionPlan,
        queue_capacity: usize,
        options: WorkerOptions,
    ) -> Result<Runner, SpawnError> {
        let WorkerOptions {
            workers,
            low_priority,
            expire_after,
        } = options;
        let spawn_error = |n: usize, source| SpawnError {
            model: label.to_owned(),
            started_of: format!("{}/{}", n + 1, workers.max(1)),
            source,
        };
        if low_priority {
            // Started from here, at normal priority: a thread inherits its
            // creator's scheduling class, so an idle worker must not start it.
            Recorder::start().map_err(|e| spawn_error(0, e))?;
        }
        let capacity = queue_capacity.max(1);
        let (queue, source) = if low_priority {
            let q = Arc::new(IdleQueue::new(capacity));
            (Queue::Idle(Arc::clone(&q)), Source::Idle(q))
        } else {
            let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
            (Queue::Channel(tx), Source::Channel(rx))
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(workers.max(1));
        for instance in 0..workers.max(1) {
            let worker = Worker {
                instance,
                model: Arc::clone(&model),
                batch_max_rows: plan.batch_max_rows,
                busy: Arc::clone(&busy),
                batches: crate::telemetry::dynamic_batch(label),
                expire_after,
                low_priority,
            };
            let worker_source = source.clone();
            let name = format!("infer-{instance}-{label}");
            let spawned = spawn_thread(name.clone(), move || {
                if low_priority {
                    idle_priority(&name);
                }
                worker.run(&worker_source);
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Close the queue (its only sender, or the idle queue's
                    // flag), then wait for the started workers to see it.
                    drop(source);
                    match queue {
                        Queue::Channel(tx) => drop(tx),
                        Queue::Idle(q) => {
                            q.close();
                            for h in &handles {
                                h.thread().unpark();
                            }
                        }
                    }
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(spawn_error(instance, e));
                }
            }
        }
        drop(source);
        if let Queue::Idle(q) = &queue {
            let _ = q
                .workers
                .set(handles.iter().map(|h| h.thread().clone()).collect());
        }
        Ok(Runner {
            label: label.to_owned(),
            model,
            plan,
            queue,
            capacity,
            busy,
            epoch: Instant::now(),
            last_arrival_us: AtomicU64::new(0),
            arrival_gap_us: AtomicU64::new(MAX_GAP_US),
            batching: AtomicBool::new(false),
        })
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn plan(&self) -> ExecutionPlan {
        self.plan
    }

    /// Requests waiting in the worker queue right now.
    pub fn queue_depth(&self) -> usize {
        match &self.queue {
            Queue::Channel(tx) => tx.len(),
            Queue::Idle(q) => q.len.load(Ordering::Relaxed),
        }
    }

    /// Queues one batch without waiting for a place (refused at once when
    /// the queue is full); the worker thread that runs it calls `then` with
    /// the result. Nothing on the caller's side waits: no task, no timer.
    /// The inputs may be shared with other runners' jobs (a request mirrored
    /// to several models is copied once); a worker copies them only to
    /// combine them into a batch while another job still holds them.
    pub fn try_submit_then(
        &self,
        inputs: Arc<Vec<Tensor>>,
        then: impl FnOnce(Answer) + Send + 'static,
    ) -> Result<(), RunnerError> {
        self.enqueue(Job::new(
            JobInputs::Shared(inputs),
            Reply::Call(Box::new(then)),
        ))
        .map_err(|e| self.refused(&e))
    }

    /// Whether the workers' queue is full right now, so that a caller can
    /// skip preparing a job that would be refused. A hint: the queue may
    /// fill or drain just after.
    pub fn is_full(&self) -> bool {
        self.queue_depth() >= self.capacity
    }

    /// Puts a job on the workers' queue, counting it busy until a worker
    /// has answered it.
    fn enqueue(&self, job: Job) -> Result<(), TrySendError<Job>> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        let queued = match &self.queue {
            Queue::Channel(tx) => tx.try_send(job),
            Queue::Idle(q) => q.push(job),
        };
        queued.inspect_err(|_| {
            self.busy.fetch_sub(1, Ordering::AcqRel);
        })
    }

    fn refused(&self, e: &TrySendError<Job>) -> RunnerError {
        match e {
            TrySendError::Full(_) => RunnerError::QueueFull {
                model: self.label.clone(),
                capacity: self.capacity,
            },
            TrySendError::Disconnected(_) => RunnerError::Stopped(self.label.clone()),
        }
    }

    /// Runs on the calling thread; counted busy while it runs when the plan
    /// reads that count (`inline_when_idle`).
    fn run_inline(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Timings), RunnerError> {
        let started = Instant::now();
        let _busy = self.plan.inline_when_idle.then(|| {
            self.busy.fetch_add(1, Ordering::AcqRel);
            BusyGuard(&self.busy)
        });
        let outputs = guarded(|| self.model.infer(inputs))?;
        let timings = Timings {
            infer: started.elapsed(),
            ..Timings::default()
        };
        Ok((outputs, timings))
    }

    /// Whether a batch of `rows` rows runs inline on the calling thread.
    /// Only `auto` reads the clock (for the arrival rate).
    fn inline(&self, rows: usize) -> bool {
        let now_us = if self.plan.inline_when_idle {
            u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        self.inline_at(rows, now_us)
    }

    /// [`Runner::inline`] for a request arriving at `now` (µs since
    /// `epoch`). Under `auto` (`inline_when_idle`): inline while requests
    /// come far enough apart and nothing is queued or running; otherwise
    /// to the workers, which batch what waits.
    fn inline_at(&self, rows: usize, now: u64) -> bool {
        if !self.plan.inline_when_idle {
            return rows <= self.plan.inline_max_rows;
        }
        // Racing requests may each overwrite the other's update: the
        // average stays an estimate, which is all the choice needs.
        let gap = now.saturating_sub(self.last_arrival_us.swap(now, Ordering::Relaxed));
        let average = self.arrival_gap_us.load(Ordering::Relaxed);
        let average = average - average / 16 + gap.min(MAX_GAP_US) / 16;
        self.arrival_gap_us.store(average, Ordering::Relaxed);
        let was_batching = self.batching.load(Ordering::Relaxed);
        let batching = if was_batching {
            average <= INLINE_ABOVE_GAP_US
        } else {
            average < BATCH_BELOW_GAP_US
        };
        if batching != was_batching {
            self.batching.store(batching, Ordering::Relaxed);
        }
        rows <= self.plan.inline_max_rows && !batching && self.busy.load(Ordering::Acquire) == 0
    }

    /// Runs one batch of `rows` rows. Inline when the plan says it is cheaper
    /// than a hand-off; otherwise on a worker, refusing at once when the
    /// queue is full.
    pub async fn run(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Result<(Vec<Tensor>, Timings), RunnerError> {
        if self.inline(rows) {
            return self.run_inline(&inputs);
        }
        let (reply, rx) = oneshot::channel();
        match self.enqueue(Job::new(JobInputs::Owned(inputs), Reply::Channel(reply))) {
            Ok(()) => {}
            // Under `auto`, a request small enough to run inline does so when
            // the workers' queue is full instead of being refused: batching
            // never makes a model refuse what inline execution would serve.
            Err(TrySendError::Full(job))
                if self.plan.inline_when_idle && rows <= self.plan.inline_max_rows =>
            {
                return self.run_inline(&job.inputs);
            }
            Err(e) => return Err(self.refused(&e)),
        }
        let (result, timings) = rx
            .await
            .map_err(|_| RunnerError::Stopped(self.label.clone()))?;
        Ok((result?, timings))
    }
}

/// One worker thread: takes a job, and with dynamic batching every job
/// already waiting behind it that fits, and runs them as one batch.
struct Worker {
    instance: usize,
    model: Arc<dyn Model>,
    batch_max_rows: usize,
    busy: Arc<AtomicUsize>,
    /// Requests per batch run (batches of more than one).
    batches: metrics::Histogram,
    /// Jobs that waited longer than this are answered without running.
    expire_after: Option<Duration>,
    /// Runs at idle priority: its callbacks go through the [`Recorder`].
    low_priority: bool,
}

type Callback = Box<dyn FnOnce(Answer) + Send>;

/// Calls a job's callback; a panic in it must not end the calling thread.
fn call(then: Callback, answer: Answer) {
    if catch_unwind(AssertUnwindSafe(|| then(answer))).is_err() {
        tracing::error!("a background inference callback panicked");
    }
}

/// Runs the callbacks of idle-priority workers on one normal-priority thread.
///
/// A callback records a mirrored answer: it pushes onto lock-free queues
/// (prediction log, drift samples) whose normal-priority consumers spin
/// while a sender that has claimed a slot has not yet filled it. An
/// idle-priority thread preempted in that window would keep the store
/// writer spinning on a core for as long as the CPU stays busy (measured:
/// champion p99 up to 60× at half load). Idle workers therefore only hand
/// their answers over here, under a mutex whose waiters sleep instead.
struct Recorder {
    state: Mutex<RecorderState>,
    ready: Condvar,
}

struct RecorderState {
    queue: VecDeque<(Callback, Answer)>,
    /// The recorder waits on `ready`.
    waiting: bool,
    /// It found nothing for a whole tick: the next answer wakes it.
    idle: bool,
}

/// Most answers waiting for the recorder; beyond it they are recorded as
/// errors on the spot (counted, never queued without bound).
const RECORDER_CAPACITY: usize = 1 << 16;

/// While answers come, the recorder drains its queue this often, or at once
/// when this many wait; after a tick without any, the next one wakes it.
const RECORDER_TICK: Duration = Duration::from_millis(2);
const RECORDER_WAKE: usize = 4096;

static RECORDER: Recorder = Recorder {
    state: Mutex::new(RecorderState {
        queue: VecDeque::new(),
        waiting: false,
        idle: false,
    }),
    ready: Condvar::new(),
};

impl Recorder {
    /// The recorder; its thread runs once [`Recorder::start`] succeeded
    /// (before any idle-priority worker exists).
    fn global() -> &'static Recorder {
        &RECORDER
    }

    /// Starts the recorder's thread unless it runs already.
    fn start() -> std::io::Result<()> {
        static STARTED: Mutex<bool> = Mutex::new(false);
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if !*started {
            spawn_thread("mirror-recorder".into(), || RECORDER.run())?;
            *started = true;
        }
        Ok(())
    }

    fn push(&self, then: Callback, answer: Answer) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.queue.len() >= RECORDER_CAPACITY {
            drop(state);
            call(
                then,
                Err(RunnerError::Runtime(RuntimeError::Inference(
                    "answer not recorded: the mirror recorder is behind".into(),
                ))),
            );
            return;
        }
        state.queue.push_back((then, answer));
        // Woken only when answers pile up; otherwise it drains on its timer,
        // so that recording mirrored answers costs batches, not a wake-up
        // (and a preemption of the request path) per answer.
        let wake = state.waiting && (state.idle || state.queue.len() >= RECORDER_WAKE);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    fn run(&self) {
        let mut batch = VecDeque::new();
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while state.queue.is_empty() {
                    state.waiting = true;
                    if state.idle {
                        state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                    } else {
                        let (s, timeout) = self
                            .ready
                            .wait_timeout(state, RECORDER_TICK)
                            .unwrap_or_else(|e| e.into_inner());
                        state = s;
                        state.idle = timeout.timed_out() && state.queue.is_empty();
                    }
                }
                state.waiting = false;
                state.idle = false;
                std::mem::swap(&mut batch, &mut state.queue);
            }
            for (then, answer) in batch.drain(..) {
                call(then, answer);
            }
        }
    }
}

/// How many worker threads a runner starts, and how.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    pub workers: usize,
    /// At the operating system's idle priority (see [`idle_priority`]).
    pub low_priority: bool,
    /// A job that waited in the queue longer than this is answered with an
    /// error instead of running (its answer would come too late to count).
    pub expire_after: Option<Duration>,
}

impl Worker {
    /// Serves the queue until the Runner (the only sender) is dropped.
    fn run(self, source: &Source) {
        match source {
            Source::Channel(rx) => {
                let mut next: Option<Job> = None;
                while let Some(group) = self.next_group(rx, &mut next) {
                    self.run_group(group);
                }
            }
            Source::Idle(q) => {
                while let Some(group) = q.next_group(self.batch_max_rows) {
                    self.run_group(group);
                }
            }
        }
    }

    /// The next job (`held` first, else waiting for one) and, with dynamic
    /// batching, the jobs queued behind it that fit into the same batch. A
    /// job that does not fit is kept in `held` for the next group. `None`
    /// once the queue is closed and empty.
    fn next_group(&self, rx: &Receiver<Job>, held: &mut Option<Job>) -> Option<Vec<Job>> {
        let first = held.take().or_else(|| rx.recv().ok())?;
        Some(fill_group(first, self.batch_max_rows, held, || {
            rx.try_recv().ok()
        }))
    }

    fn run_group(&self, mut group: Vec<Job>) {
        let started = Instant::now();
        if let Some(limit) = self.expire_after.filter(|&limit| {
            group
                .iter()
                .any(|j| started.saturating_duration_since(j.enqueued) > limit)
        }) {
            let (stale, fresh): (Vec<Job>, Vec<Job>) = group
                .into_iter()
                .partition(|j| started.saturating_duration_since(j.enqueued) > limit);
            for job in stale {
                let waited = started.saturating_duration_since(job.enqueued);
                let e = RuntimeError::Inference(format!(
                    "not run: it waited {} ms in the queue, past its {} ms timeout",
                    waited.as_millis(),
                    limit.as_millis()
                ));
                self.answer(job, Err(e), started, false, 0);
            }
            if fresh.is_empty() {
                return;
            }
            group = fresh;
        }
        if group.len() == 1 {
            let job = group.pop().expect("one job");
            let result = guarded(|| self.model.infer_on(self.instance, &job.inputs));
            self.answer(job, result, started, false, 0);
            return;
        }
        self.batches.record(group.len() as f64);
        let rows: Vec<usize> = group.iter().map(|j| j.rows).collect();
        let batch_rows: usize = rows.iter().sum();
        let inputs = combine(group.iter_mut().map(|j| j.inputs.take()));
        let outputs = guarded(|| self.model.infer_on(self.instance, &inputs))
            .ok()
            .and_then(|outputs| split(outputs, &rows));
        match outputs {
            Some(parts) => {
                for (i, (job, outputs)) in group.into_iter().zip(parts).enumerate() {
                    self.answer(job, Ok(outputs), started, i > 0, batch_rows);
                }
            }
            None => {
                // The batch failed (or its outputs do not split by rows): run
                // each request alone, so each gets its own answer or error.
                let parts = split(inputs, &rows).expect("inputs combined by rows split back");
                for (mut job, inputs) in group.into_iter().zip(parts) {
                    job.inputs = JobInputs::Owned(inputs);
                    let started = Instant::now();
                    let result = guarded(|| self.model.infer_on(self.instance, &job.inputs));
                    self.answer(job, result, started, false, 0);
                }
            }
        }
    }

    fn answer(
        &self,
        job: Job,
        result: Result<Vec<Tensor>, RuntimeError>,
        started: Instant,
        shared_execution: bool,
        batch_rows: usize,
    ) {
        let timings = Timings {
            queue: started.saturating_duration_since(job.enqueued),
            infer: started.elapsed(),
            shared_execution,
            batch_rows,
            ..Timings::default()
        };
        self.busy.fetch_sub(1, Ordering::AcqRel);
        match job.reply {
            Reply::Channel(tx) => {
                let _ = tx.send((result, timings));
            }
            Reply::Call(then) => {
                let result = result.map(|outputs| (outputs, timings));
                let answer = result.map_err(RunnerError::from);
                if self.low_priority {
                    // Never from an idle-priority thread: see `Recorder`.
                    Recorder::global().push(then, answer);
                } else {
                    call(then, answer);
                }
            }
        }
    }
}

/// Where a runner's jobs wait for its workers.
enum Queue {
    /// Normal-priority workers.
    Channel(Sender<Job>),
    /// Idle-priority workers (mirrored requests).
    Idle(Arc<IdleQueue>),
}

/// The workers' side of a [`Queue`].
#[derive(Clone)]
enum Source {
    Channel(Receiver<Job>),
    Idle(Arc<IdleQueue>),
}

impl Drop for Runner {
    fn drop(&mut self) {
        // A channel closes with its sender; this queue is told.
        if let Queue::Idle(q) = &self.queue {
            q.close();
        }
    }
}

/// The queue of idle-priority (mirror) workers: the request path never
/// waits for one of them.
///
/// In a lock-free channel (crossbeam's bounded one) a sender that reaches
/// the slot a receiver is still reading spins until that receiver finishes:
/// with a full queue, a receiver at idle priority preempted mid-read keeps a
/// tokio worker spinning for as long as the CPU stays busy (in the
/// three-shadow benchmark the slowest champion request of a run reached
/// 220–430 ms; BENCHMARKS.md has the runs since). This queue is a wait-free
/// single-producer ring ([`rtrb`]): a push only reads how far the workers
/// have got, so a worker preempted mid-read makes the queue look one job
/// fuller, never makes the push wait. The request paths share the producer
/// end under a mutex (normal-priority threads only); the workers share the
/// consumer end under another.
///
/// While copies come, a worker sleeps [`GATHER_TICK`] between batches and
/// then runs everything that gathered as one batch: one engine run and one
/// wake-up per tick instead of one per copy, and the CPU halts when the
/// batch is done. Mirroring a copy wakes a worker only when the queue
/// reaches half its capacity (so that a burst is not dropped while the
/// workers sleep), or when a whole tick passed without any copy and the
/// workers went to sleep until the next one.
struct IdleQueue {
    producer: Mutex<rtrb::Producer<Job>>,
    /// The consumer end, and a job that did not fit into the last batch.
    consumer: Mutex<(rtrb::Consumer<Job>, Option<Job>)>,
    /// Jobs queued (pushed and not yet taken).
    len: AtomicUsize,
    /// A push that brings `len` to this wakes the workers sleeping a tick.
    wake_at: usize,
    /// Workers sleeping a tick while a batch gathers.
    gathering: AtomicUsize,
    /// Workers asleep until the next copy comes (or about to be).
    parked: AtomicUsize,
    /// The last batch left queued jobs behind (they did not fit).
    backlog: AtomicBool,
    /// The workers' threads, to unpark.
    workers: OnceLock<Vec<std::thread::Thread>>,
    closed: AtomicBool,
}

/// While mirrored copies come, how long a worker lets them gather before it
/// runs them as one batch.
const GATHER_TICK: Duration = Duration::from_millis(1);

/// How long a parked worker sleeps before looking again, should a wake-up
/// have been missed.
const PARK_TIMEOUT: Duration = Duration::from_millis(100);

impl IdleQueue {
    fn new(capacity: usize) -> IdleQueue {
        let capacity = capacity.max(1);
        let (producer, consumer) = rtrb::RingBuffer::new(capacity);
        IdleQueue {
            producer: Mutex::new(producer),
            consumer: Mutex::new((consumer, None)),
            len: AtomicUsize::new(0),
            wake_at: capacity.div_ceil(2),
            gathering: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            backlog: AtomicBool::new(false),
            workers: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a job if there is room; never waits for a worker.
    fn push(&self, job: Job) -> Result<(), TrySendError<Job>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Disconnected(job));
        }
        let len = {
            let mut producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
            if producer.is_full() {
                return Err(TrySendError::Full(job));
            }
            // Counted before a worker can take it, so `len` never goes
            // below zero; the push cannot fail: this is the only producer,
            // and workers only make room.
            let len = self.len.fetch_add(1, Ordering::SeqCst) + 1;
            if let Err(rtrb::PushError::Full(job)) = producer.push(job) {
                self.len.fetch_sub(1, Ordering::SeqCst);
                return Err(TrySendError::Full(job));
            }
            len
        };
        if self.must_wake(len) {
            self.unpark();
        }
        Ok(())
    }

    /// Whether a push that brought the queue to `len` jobs wakes the
    /// workers: one sleeps until the next copy, or the queue is half full
    /// while one lets a batch gather.
    fn must_wake(&self, len: usize) -> bool {
        self.parked.load(Ordering::SeqCst) > 0
            || (len >= self.wake_at && self.gathering.load(Ordering::SeqCst) > 0)
    }

    fn unpark(&self) {
        for t in self.workers.get().into_iter().flatten() {
            t.unpark();
        }
    }

    /// The next group of jobs: after a [`GATHER_TICK`], everything queued
    /// that fits into one batch (with `batch_max_rows` > 0; else one job);
    /// a job that does not fit comes first next time. `None` once the
    /// queue is closed and empty.
    fn next_group(&self, batch_max_rows: usize) -> Option<Vec<Job>> {
        loop {
            if !self.ready() {
                self.gathering.fetch_add(1, Ordering::SeqCst);
                if !self.ready() {
                    std::thread::park_timeout(GATHER_TICK);
                }
                self.gathering.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(group) = self.take(batch_max_rows) {
                return Some(group);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            // A whole tick without a copy: sleep until the next one.
            self.parked.fetch_add(1, Ordering::SeqCst);
            if self.len.load(Ordering::SeqCst) == 0 && !self.closed.load(Ordering::SeqCst) {
                std::thread::park_timeout(PARK_TIMEOUT);
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a batch can be taken without gathering: the queue is half
    /// full, the last batch was full and left jobs behind, or the queue is
    /// closing.
    fn ready(&self) -> bool {
        self.len.load(Ordering::SeqCst) >= self.wake_at
            || self.backlog.load(Ordering::SeqCst)
            || self.closed.load(Ordering::SeqCst)
    }

    /// Takes a group of jobs, if any is queued.
    fn take(&self, batch_max_rows: usize) -> Option<Vec<Job>> {
        let mut guard = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        let (consumer, held) = &mut *guard;
        let Some(first) = held.take().or_else(|| consumer.pop().ok()) else {
            self.backlog.store(false, Ordering::SeqCst);
            return None;
        };
        let group = fill_group(first, batch_max_rows, held, || consumer.pop().ok());
        self.len.fetch_sub(group.len(), Ordering::SeqCst);
        // `fill_group` takes all it can: what is left did not fit.
        self.backlog
            .store(held.is_some() || !consumer.is_empty(), Ordering::SeqCst);
        Some(group)
    }

    /// No more jobs: the workers finish what is queued, then stop.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.unpark();
    }
}

/// Starts a named thread. Under test, [`tests::fail_spawn_after`] makes the
/// calling thread's later spawns fail, as the system would at its limit.
fn spawn_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    #[cfg(test)]
    tests::spawn_allowed()?;
    std::thread::Builder::new().name(name).spawn(f)
}

/// Moves the calling thread to the idle scheduling class (Linux
/// `SCHED_IDLE`; elsewhere the lowest priority): it runs only when no
/// normal thread wants the CPU. Mirror workers run there by default.
pub fn lower_to_idle_priority() -> Result<(), String> {
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let result = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle),
    );
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let result = thread_priority::set_current_thread_priority(ThreadPriority::Min);
    result.map_err(|e| format!("{e:?}"))
}

/// [`lower_to_idle_priority`] for a worker thread; a failure is logged and
/// the thread runs at normal priority.
fn idle_priority(thread: &str) {
    if let Err(error) = lower_to_idle_priority() {
        tracing::warn!(
            thread,
            error,
            "could not lower the thread's priority; it runs at normal priority"
        );
    }
}

/// `first` and, with dynamic batching (`batch_max_rows` > 0), the jobs
/// `next` has waiting that fit into one batch behind it: only what is
/// already queued, so batching never delays a request. A job that does not
/// fit goes to `held`, to start the next group.
fn fill_group(
    first: Job,
    batch_max_rows: usize,
    held: &mut Option<Job>,
    mut next: impl FnMut() -> Option<Job>,
) -> Vec<Job> {
    let mut rows = first.rows;
    let mut group = vec![first];
    while batch_max_rows > 0 && rows < batch_max_rows {
        let Some(job) = next() else { break };
        if rows + job.rows <= batch_max_rows && batchable(&group[0], &job) {
            rows += job.rows;
            group.push(job);
        } else {
            *held = Some(job);
            break;
        }
    }
    group
}

/// Whether `job` can run in one batch with `first`: the same inputs, with
/// the same datatypes and the same dimensions after the first.
fn batchable(first: &Job, job: &Job) -> bool {
    first.inputs.len() == job.inputs.len()
        && first.inputs.iter().zip(job.inputs.iter()).all(|(a, b)| {
            a.name == b.name
                && a.datatype() == b.datatype()
                && a.shape.len() == b.shape.len()
                && a.shape.get(1..) == b.shape.get(1..)
                && a.shape.first().and_then(|&d| usize::try_from(d).ok()) == Some(first.rows)
                && b.shape.first().and_then(|&d| usize::try_from(d).ok()) == Some(job.rows)
        })
}

/// Concatenates the jobs' inputs (checked by [`batchable`]) along the first
/// dimension.
fn combine(mut jobs: impl Iterator<Item = Vec<Tensor>>) -> Vec<Tensor> {
    let mut combined = jobs.next().unwrap_or_default();
    for inputs in jobs {
        for (c, t) in combined.iter_mut().zip(inputs) {
            c.shape[0] += t.shape[0];
            c.data.append(t.data);
        }
    }
    combined
}

/// Splits every tensor along its first dimension into pieces of `rows`;
/// `None` when a tensor's first dimension is not the rows' sum.
fn split(tensors: Vec<Tensor>, rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(tensors.len()))
        .collect();
    for t in tensors {
        if t.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(total) {
            return None;
        }
        let per_row = t.data.len().checked_div(total).unwrap_or(0);
        if per_row * total != t.data.len() {
            return None;
        }
        let lens: Vec<usize> = rows.iter().map(|r| r * per_row).collect();
        for ((part, data), &r) in parts.iter_mut().zip(t.data.split(&lens)).zip(rows) {
            let mut shape = t.shape.clone();
            shape[0] = r as i64;
            part.push(Tensor {
                name: t.name.clone(),
                shape,
                data,
            });
        }
    }
    Some(parts)
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
    use crate::protocol::TensorData;
    use std::cell::Cell;

    thread_local! {
        /// Spawns this thread may still make (`None`: no limit).
        static SPAWNS_LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// From now on, spawns from this thread fail after `n` more succeed
    /// (`None`: no limit again).
    pub(super) fn fail_spawn_after(n: Option<usize>) {
        SPAWNS_LEFT.with(|c| c.set(n));
    }

    pub(super) fn spawn_allowed() -> std::io::Result<()> {
        SPAWNS_LEFT.with(|c| match c.get() {
            None => Ok(()),
            Some(0) => Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "Resource temporarily unavailable (the test's thread limit)",
            )),
            Some(n) => {
                c.set(Some(n - 1));
                Ok(())
            }
        })
    }

    /// A runner whose fourth worker thread cannot start returns an error
    /// (no panic), and the three it started are stopped and joined before
    /// it returns: each held the model, and none holds it any more.
    #[test]
    fn a_failed_start_stops_and_joins_the_workers_it_started() {
        let model = example_model(1);
        for low_priority in [false, true] {
            Recorder::start().expect("the recorder starts");
            fail_spawn_after(Some(3));
            let started = Runner::start_workers(
                "spawn-test",
                Arc::clone(&model),
                ExecutionPlan::always_pool(10.0, 1.0).with_batching(32),
                16,
                WorkerOptions {
                    workers: 8,
                    low_priority,
                    expire_after: None,
                },
            );
            fail_spawn_after(None);
            let e = started.err().expect("the fourth worker cannot start");
            assert!(e.to_string().contains("thread 4/8 of 'spawn-test'"), "{e}");
            assert_eq!(
                Arc::strong_count(&model),
                1,
                "a worker still holds the model (low_priority = {low_priority})"
            );
        }
        // And a start that succeeds serves.
        let runner = Runner::start_workers(
            "spawn-test",
            Arc::clone(&model),
            ExecutionPlan::always_pool(10.0, 1.0),
            16,
            WorkerOptions {
                workers: 2,
                low_priority: false,
                expire_after: None,
            },
        )
        .expect("workers start");
        let rows = holdout_rows();
        let (tx, rx) = std::sync::mpsc::channel();
        runner
            .try_submit_then(Arc::new(input(&rows[..1])), move |a| {
                let _ = tx.send(a.is_ok());
            })
            .expect("queued");
        assert_eq!(rx.recv(), Ok(true));
    }

    /// The held-out breast-cancer rows the example models were checked on.
    fn holdout_rows() -> Vec<Vec<f32>> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/_data/breast_cancer_holdout.json"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("held-out file"))
                .expect("held-out JSON");
        doc["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect()
    }

    fn input(rows: &[Vec<f32>]) -> Vec<Tensor> {
        let cols = rows[0].len();
        vec![Tensor::new(
            "input",
            vec![rows.len() as i64, cols as i64],
            TensorData::Fp32(rows.concat()),
        )]
    }

    /// The example model through the real engine (the set-up script's ONNX Runtime).
    fn example_model(version: u32) -> Arc<dyn Model> {
        super::super::onnx::init(&super::super::onnx::default_library_path())
            .expect("ONNX Runtime (make setup)");
        let path = format!(
            "{}/models/breast_cancer/{version}/model.onnx",
            env!("CARGO_MANIFEST_DIR")
        );
        let settings = super::super::EngineSettings {
            instances: 1,
            intra_op_threads: 1,
        };
        Arc::from(super::super::load(std::path::Path::new(&path), &settings).expect("model loads"))
    }

    /// Jobs for `inputs`, each with the receiver its result arrives on.
    fn jobs(
        inputs: impl IntoIterator<Item = Vec<Tensor>>,
    ) -> (Vec<Job>, Vec<oneshot::Receiver<JobResult>>) {
        inputs
            .into_iter()
            .map(|inputs| {
                let (reply, answer) = oneshot::channel();
                (
                    Job::new(JobInputs::Owned(inputs), Reply::Channel(reply)),
                    answer,
                )
            })
            .unzip()
    }

    /// Queues `jobs` on a closed channel and lets `w` serve it to the end;
    /// the rows of each job, group by group.
    fn serve_all(w: &Worker, jobs: Vec<Job>) -> Vec<Vec<usize>> {
        let (tx, rx) = crossbeam_channel::bounded(jobs.len().max(1));
        for job in jobs {
            assert!(tx.send(job).is_ok(), "queued");
        }
        drop(tx);
        let mut held = None;
        let mut groups = Vec::new();
        while let Some(group) = w.next_group(&rx, &mut held) {
            groups.push(group.iter().map(|j| j.rows).collect());
            w.run_group(group);
        }
        groups
    }

    fn worker(model: &Arc<dyn Model>, batch_max_rows: usize) -> Worker {
        Worker {
            instance: 0,
            model: Arc::clone(model),
            batch_max_rows,
            busy: Arc::new(AtomicUsize::new(0)),
            batches: crate::telemetry::dynamic_batch("test"),
            expire_after: None,
            low_priority: false,
        }
    }

    /// Same names, shapes and labels; probabilities within 1e-6 (a batch
    /// takes the engine's matrix-matrix kernel, a single row its
    /// matrix-vector one, which round differently in the last float32 bits).
    fn assert_same(got: &[Tensor], alone: &[Tensor], version: u32) {
        assert_eq!(got.len(), alone.len());
        for (g, a) in got.iter().zip(alone) {
            assert_eq!((&g.name, &g.shape), (&a.name, &a.shape), "model v{version}");
            match (&g.data, &a.data) {
                (TensorData::Fp32(g), TensorData::Fp32(a)) => {
                    for (x, y) in g.iter().zip(a) {
                        assert!((x - y).abs() <= 1e-6, "model v{version}: {x} vs {y} alone");
                    }
                }
                (g, a) => assert_eq!(g, a, "model v{version}"),
            }
        }
    }

    #[test]
    fn queued_requests_run_as_one_batch_and_each_gets_its_own_answer() {
        for version in [1, 2] {
            let model = example_model(version);
            let rows = holdout_rows();
            // Requests of 1, 2, 3, 1, 2, 3, … rows over the held-out sample.
            let mut requests = Vec::new();
            let mut at = 0;
            for n in [1, 2, 3].into_iter().cycle() {
                if at + n > rows.len() {
                    break;
                }
                requests.push(input(&rows[at..at + n]));
                at += n;
            }
            let (queued, answers) = jobs(requests.iter().cloned());
            let groups = serve_all(&worker(&model, 16), queued);
            for group in &groups {
                let group_rows: usize = group.iter().sum();
                assert!(
                    group_rows <= 16,
                    "a batch of {group_rows} rows exceeds the cap"
                );
            }
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            // Everything was already queued: full batches of 8 requests
            // (1+2+3+1+2+3+1+2 = 15 rows; the next 3-row request would pass 16).
            assert_eq!(sizes[0], 8, "group sizes {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), requests.len());
            let mut executions = 0;
            for (inputs, mut answer) in requests.iter().zip(answers) {
                let (result, timings) = answer.try_recv().expect("answered");
                // One request per batch counts the engine execution.
                executions += usize::from(!timings.shared_execution);
                let got = result.expect("inference succeeds");
                let alone = model.infer(inputs).expect("inference alone");
                assert_same(&got, &alone, version);
            }
            assert_eq!(executions, sizes.len(), "one execution per batch");
        }
    }

    #[test]
    fn jobs_sharing_their_inputs_batch_and_keep_the_shared_copy_intact() {
        // A mirrored request's copy is shared by every mirrored member's
        // job: a worker batching one of them copies it out and leaves the
        // shared tensors as they were for the others.
        let model = example_model(1);
        let rows = holdout_rows();
        let requests: Vec<Arc<Vec<Tensor>>> = [&rows[0..1], &rows[1..3], &rows[3..4]]
            .into_iter()
            .map(|r| Arc::new(input(r)))
            .collect();
        let (queued, answers): (Vec<Job>, Vec<_>) = requests
            .iter()
            .map(|inputs| {
                let (reply, answer) = oneshot::channel();
                let job = Job::new(JobInputs::Shared(Arc::clone(inputs)), Reply::Channel(reply));
                (job, answer)
            })
            .unzip();
        assert_eq!(queued.iter().map(|j| j.rows).collect::<Vec<_>>(), [1, 2, 1]);
        let groups = serve_all(&worker(&model, 16), queued);
        assert_eq!(groups, [vec![1, 2, 1]], "one batch of the three jobs");
        for (inputs, mut answer) in requests.iter().zip(answers) {
            let (result, _) = answer.try_recv().expect("answered");
            let alone = model.infer(inputs).expect("inference alone");
            assert_same(&result.expect("inference succeeds"), &alone, 1);
        }
        // The shared copies still hold their own rows, unmerged.
        for (inputs, want) in requests.iter().zip([1, 2, 1]) {
            assert_eq!(inputs[0].shape[0], want);
            assert_eq!(Arc::strong_count(inputs), 1, "the workers let go of it");
        }
    }

    #[test]
    fn a_request_of_another_shape_waits_for_the_next_batch() {
        let model = example_model(1);
        let rows = holdout_rows();
        let short: Vec<Vec<f32>> = rows[..2].iter().map(|r| r[..29].to_vec()).collect();
        let (queued, answers) = jobs([
            input(&rows[..1]),
            input(&rows[1..3]),
            input(&short),
            input(&rows[3..4]),
        ]);
        let groups = serve_all(&worker(&model, 1024), queued);
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        // The 29-column request runs alone: it is not batched with the
        // requests before it, nor with the one after it.
        assert_eq!(sizes, vec![2, 1, 1]);
        let results: Vec<_> = answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("answered").0)
            .collect();
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
        // The engine refuses 29 columns; that error is this request's alone.
        assert!(
            matches!(results[2], Err(RuntimeError::InvalidInput(_))),
            "{:?}",
            results[2]
        );
    }

    #[test]
    fn auto_runs_inline_only_while_idle_and_requests_come_apart() {
        let model = example_model(1);
        let plan = ExecutionPlan {
            inline_when_idle: true,
            ..ExecutionPlan::from_measurements(4.0, 0.1, 50.0, 1024).with_batching(1024)
        };
        let runner = Runner::start("test", model, plan, 8).expect("workers start");
        let mut now = 0;
        let mut arrive = |gap: u64, rows: usize| {
            now += gap;
            runner.inline_at(rows, now)
        };
        assert!(arrive(1_000, 1), "idle: inline");
        assert!(!arrive(1_000, 1_000), "too many rows for inline");
        runner.busy.fetch_add(1, Ordering::AcqRel);
        assert!(!arrive(1_000, 1), "busy: queued for batching");
        runner.busy.fetch_sub(1, Ordering::AcqRel);
        assert!(arrive(1_000, 1), "idle again: inline");
        // Requests 10 µs apart: once the average gap is below the
        // threshold they queue for batching, even when the model is idle.
        let queued = (0..200).filter(|_| !arrive(10, 1)).count();
        assert!(queued > 100, "only {queued} of 200 queued");
        assert!(!arrive(10, 1), "still under load");
        // Between the two thresholds (50 µs apart) the choice holds: still
        // batching, with no flipping back and forth.
        let inline = (0..200).filter(|_| arrive(50, 1)).count();
        assert_eq!(inline, 0, "50 µs apart after 10 µs apart: still batching");
        // The load eases (1 ms apart): inline again within a few requests.
        let first_inline = (1..=20).find(|_| arrive(1_000, 1));
        assert!(
            first_inline.is_some_and(|n| n <= 5),
            "inline again after {first_inline:?} requests"
        );
        // And from inline, 50 µs apart stays inline.
        let queued = (0..200).filter(|_| !arrive(50, 1)).count();
        assert_eq!(queued, 0, "50 µs apart after 1 ms apart: still inline");
        // One quick pair among sparse requests does not switch.
        assert!(arrive(1_000, 1));
        assert!(arrive(1_000, 1));
        assert!(arrive(1, 1), "one short gap among long ones: still inline");
        // A pinned plan ignores the count.
        let pinned = Runner::start(
            "test-pinned",
            example_model(1),
            ExecutionPlan::from_measurements(4.0, 0.1, 50.0, 1024),
            8,
        )
        .expect("workers start");
        pinned.busy.fetch_add(1, Ordering::AcqRel);
        assert!(pinned.inline_at(1, 10));
    }

    #[test]
    fn the_idle_queue_never_makes_the_request_path_wait() {
        let rows = holdout_rows();
        let job = |n: usize| {
            Job::new(
                JobInputs::Owned(input(&rows[..n])),
                Reply::Channel(oneshot::channel().0),
            )
        };
        let queue = Arc::new(IdleQueue::new(3));
        // A worker holding its end (preempted mid-read, say) does not hold up
        // a push: the two ends share nothing a push waits for.
        {
            let _reading = queue.consumer.lock().expect("consumer end");
            for n in [1, 2, 3] {
                assert!(queue.push(job(n)).is_ok(), "room for {n}");
            }
            assert!(
                matches!(queue.push(job(1)), Err(TrySendError::Full(_))),
                "full"
            );
        }
        // One batch of 1 + 2 rows; the 3-row job comes first next time.
        let sizes = |g: Vec<Job>| g.iter().map(|j| j.rows).collect::<Vec<_>>();
        assert_eq!(queue.next_group(4).map(sizes), Some(vec![1, 2]));
        assert_eq!(queue.next_group(4).map(sizes), Some(vec![3]));
        assert_eq!(queue.len.load(Ordering::SeqCst), 0);
        // A worker parked on the empty queue is woken by the next job, and
        // stops once the queue is closed and empty.
        let worker = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(group) = queue.next_group(0) {
                    got.push(group.len());
                }
                got
            })
        };
        let _ = queue.workers.set(vec![worker.thread().clone()]);
        while queue.parked.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(queue.push(job(1)).is_ok());
        while queue.len.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        queue.close();
        assert!(matches!(
            queue.push(job(1)),
            Err(TrySendError::Disconnected(_))
        ));
        assert_eq!(worker.join().expect("worker thread"), vec![1]);
    }

    #[test]
    fn mirror_workers_let_copies_gather_and_are_woken_only_when_needed() {
        let rows = holdout_rows();
        let job = || {
            Job::new(
                JobInputs::Owned(input(&rows[..1])),
                Reply::Channel(oneshot::channel().0),
            )
        };
        let queue = IdleQueue::new(8);
        assert_eq!(queue.wake_at, 4);
        // Nobody asleep: a push wakes nobody.
        assert!(!queue.must_wake(1) && !queue.must_wake(8));
        // A worker letting a batch gather is woken only once the queue is
        // half full, not by every copy.
        queue.gathering.fetch_add(1, Ordering::SeqCst);
        assert!(!queue.must_wake(1) && !queue.must_wake(3));
        assert!(queue.must_wake(4) && queue.must_wake(8));
        queue.gathering.fetch_sub(1, Ordering::SeqCst);
        // A worker asleep until the next copy is woken by the first.
        queue.parked.fetch_add(1, Ordering::SeqCst);
        assert!(queue.must_wake(1));
        queue.parked.fetch_sub(1, Ordering::SeqCst);
        // A half-full queue, or a job left over from the last batch, is
        // taken at once; fewer copies gather first.
        for _ in 0..3 {
            assert!(queue.push(job()).is_ok());
        }
        assert!(!queue.ready());
        assert!(queue.push(job()).is_ok());
        assert!(queue.ready());
        let sizes = |g: Vec<Job>| g.iter().map(|j| j.rows).collect::<Vec<_>>();
        // Batches of at most 3 rows: the fourth copy is left over.
        assert_eq!(queue.next_group(3).map(sizes), Some(vec![1, 1, 1]));
        assert!(queue.ready(), "a left-over job is taken without gathering");
        assert_eq!(queue.next_group(3).map(sizes), Some(vec![1]));
        assert!(!queue.ready());
        queue.close();
        assert!(
            queue.ready(),
            "a closing queue is drained without gathering"
        );
        assert!(queue.next_group(3).is_none());
    }

    #[test]
    fn a_job_past_its_timeout_is_answered_without_running() {
        let model = example_model(1);
        let rows = holdout_rows();
        let (mut queued, answers) = jobs([input(&rows[..1]), input(&rows[..1])]);
        for (job, waited) in queued
            .iter_mut()
            .zip([Duration::from_secs(5), Duration::ZERO])
        {
            job.enqueued = Instant::now()
                .checked_sub(waited)
                .expect("an earlier instant");
        }
        let w = Worker {
            expire_after: Some(Duration::from_secs(1)),
            ..worker(&model, 16)
        };
        serve_all(&w, queued);
        let mut results = answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("answered").0);
        let stale = results.next().expect("the stale job's answer");
        assert!(
            matches!(&stale, Err(RuntimeError::Inference(m)) if m.contains("past its 1000 ms timeout")),
            "{stale:?}"
        );
        assert!(results.next().expect("the fresh job's answer").is_ok());
    }

    #[test]
    fn split_refuses_outputs_without_the_batch_rows() {
        let t = Tensor::new(
            "p",
            vec![3, 2],
            TensorData::Fp32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        );
        let parts = split(vec![t.clone()], &[1, 2]).expect("splits by rows");
        assert_eq!(parts[0][0].shape, vec![1, 2]);
        assert_eq!(parts[1][0].data, TensorData::Fp32(vec![2.0, 3.0, 4.0, 5.0]));
        // A first dimension that is not the rows' sum is not split.
        assert!(split(vec![t], &[1, 1]).is_none());
        let combined = combine(parts.into_iter());
        assert_eq!(combined[0].shape, vec![3, 2]);
        assert_eq!(combined[0].data.len(), 6);
    }

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
