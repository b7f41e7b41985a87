//! The writer thread: schema, batched prediction writes, durable feedback,
//! retention, and restoring evaluation state at start-up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::{
    Control, FeedbackItem, FeedbackResult, FeedbackStatus, PredictionRecord, Role, StoreCounters,
    StoreError, StoreSettings, StoredMemberStats, parse_outcome, sqlite_err,
};
use crate::evaluation::metrics::MetricsState;
use crate::evaluation::prediction::{Label, Prediction};
use crate::evaluation::{Evaluator, ModelKey};

pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    deployment TEXT NOT NULL, request_id TEXT NOT NULL, row INTEGER NOT NULL,
    model TEXT NOT NULL, version INTEGER NOT NULL, role TEXT NOT NULL, served INTEGER NOT NULL,
    segment TEXT, created_ms INTEGER NOT NULL, latency_us INTEGER NOT NULL, prediction TEXT NOT NULL,
    PRIMARY KEY (deployment, request_id, row, model, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created_ms);
CREATE TABLE IF NOT EXISTS labels (
    deployment TEXT NOT NULL, request_id TEXT NOT NULL, row INTEGER NOT NULL,
    label TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (deployment, request_id, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_model ON outcomes (deployment, model, version, seq);
CREATE TABLE IF NOT EXISTS model_eval (
    deployment TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    state TEXT, agree INTEGER NOT NULL, compared INTEGER NOT NULL, predictions INTEGER NOT NULL,
    PRIMARY KEY (deployment, model, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deployment_counters (
    deployment TEXT PRIMARY KEY, rows_served INTEGER NOT NULL, rows_labelled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    deployment TEXT NOT NULL, champion_model TEXT NOT NULL, champion_version INTEGER NOT NULL,
    challenger_model TEXT NOT NULL, challenger_version INTEGER NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (deployment, champion_model, champion_version, challenger_model, challenger_version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, at_ms INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_deployment ON history (deployment, seq);
CREATE TABLE IF NOT EXISTS drift (deployment TEXT PRIMARY KEY, state TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drift_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, at_ms INTEGER NOT NULL, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS member_stats (
    deployment TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    served INTEGER NOT NULL, mirrored INTEGER NOT NULL, dropped INTEGER NOT NULL,
    errors INTEGER NOT NULL, timeouts INTEGER NOT NULL, rejected INTEGER NOT NULL,
    completed INTEGER NOT NULL, latency TEXT,
    PRIMARY KEY (deployment, model, version)) WITHOUT ROWID;
";

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection with contender's settings and schema.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    open_with(path, BUSY_TIMEOUT)
}

/// [`open`], waiting at most `busy` for a lock another connection holds
/// (the connection keeps that timeout).
pub fn open_with(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let err = sqlite_err(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(busy).map_err(&err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&err)?;
    conn.execute_batch(SCHEMA).map_err(&err)?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)?;
    match version.as_deref().map(str::parse::<i64>) {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )
            .map_err(&err)?;
        }
        Some(Ok(SCHEMA_VERSION)) => {}
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "{} has schema version {other:?}; this contender reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    Ok(conn)
}

use crate::clock::now_ms;

/// Proves at start that the database can be written: a small write (the
/// start time, in `meta`) committed under `BEGIN IMMEDIATE`. Then sets the
/// connection's usual busy timeout.
pub fn prove_writable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = sqlite_err(path);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(&err)?;
    let written = conn
        .execute(
            "INSERT INTO meta (key, value) VALUES ('started_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![now_ms().to_string()],
        )
        .and_then(|_| conn.execute_batch("COMMIT"));
    if let Err(e) = written {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(err(e));
    }
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)
}

/// Why the database at `path` cannot be used, from the error that said so.
pub fn unwritable_reason(path: &Path, e: &rusqlite::Error) -> String {
    let path = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "the database {path} is locked by another process (it holds a transaction open); \
             stop it, or give this contender its own store.data_dir"
        ),
        Some(ErrorCode::ReadOnly) => format!(
            "the database {path} is read-only: this user cannot write it (or its -wal and -shm \
             files, or its directory)"
        ),
        Some(ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            format!("cannot open the database {path} for writing: {e}")
        }
        Some(ErrorCode::DiskFull) => format!("the disk holding {path} is full"),
        Some(ErrorCode::NotADatabase) => format!("{path} is not an SQLite database: {e}"),
        _ => format!("the database {path} cannot be written: {e}"),
    }
}

/// The reason, when `e` says the store cannot be written now (locked,
/// read-only, disk full, I/O error) rather than that its content is wrong.
fn store_failure(path: &Path, e: &StoreError) -> Option<String> {
    let StoreError::Sqlite { source, .. } = e else {
        return None;
    };
    matches!(
        source.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::PermissionDenied
                | ErrorCode::CannotOpen
        )
    )
    .then(|| unwritable_reason(path, source))
}

/// Rebuilds the evaluator from the stored state; equal to what it was.
pub fn restore(
    conn: &Connection,
    path: &Path,
    evaluator: &Evaluator,
    counters: &StoreCounters,
) -> Result<(), StoreError> {
    let err = sqlite_err(path);
    evaluator.clear();
    let mut stmt = conn
        .prepare("SELECT deployment, model, version, state, agree, compared, predictions FROM model_eval")
        .map_err(&err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, u64>(4)?,
                r.get::<_, u64>(5)?,
                r.get::<_, u64>(6)?,
            ))
        })
        .map_err(&err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&err)?;
    let mut recent_stmt = conn
        .prepare(
            "SELECT outcome FROM (SELECT seq, outcome FROM outcomes
               WHERE deployment = ?1 AND model = ?2 AND version = ?3 ORDER BY seq DESC LIMIT ?4)
             ORDER BY seq",
        )
        .map_err(&err)?;
    for (deployment, model, version, state, agree, compared, predictions) in rows {
        let state: Option<MetricsState> = state
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Corrupt(format!("metrics state: {e}")))
            })
            .transpose()?;
        let window = evaluator.window(&deployment);
        let recent = recent_stmt
            .query_map(params![deployment, model, version, window as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?
            .iter()
            .map(|s| parse_outcome(s))
            .collect::<Result<Vec<_>, _>>()?;
        evaluator.restore_model(
            &deployment,
            (model, version),
            state,
            recent,
            (agree, compared, predictions),
        );
    }
    let mut stmt = conn
        .prepare("SELECT deployment, rows_served, rows_labelled FROM deployment_counters")
        .map_err(&err)?;
    for row in stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, u64>(2)?,
            ))
        })
        .map_err(&err)?
    {
        let (d, served, labelled) = row.map_err(&err)?;
        evaluator.restore_counters(&d, served, labelled);
    }
    let mut stmt = conn
        .prepare(
            "SELECT deployment, champion_model, champion_version, challenger_model, challenger_version, state
             FROM comparisons",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, String>(1)?, r.get::<_, u64>(2)?),
                (r.get::<_, String>(3)?, r.get::<_, u64>(4)?),
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(&err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&err)?;
    for (deployment, champion, challenger, state) in rows {
        let c = serde_json::from_str(&state)
            .map_err(|e| StoreError::Corrupt(format!("comparison state: {e}")))?;
        evaluator.restore_comparison(&deployment, (champion, challenger), c);
    }
    let evicted: Option<u64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'evicted'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)?;
    counters
        .evicted
        .store(evicted.unwrap_or(0), Ordering::Relaxed);
    let rows: u64 = conn
        .query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
        .map_err(&err)?;
    counters.rows.store(rows, Ordering::Relaxed);
    Ok(())
}

pub struct Writer {
    conn: Connection,
    path: PathBuf,
    settings: StoreSettings,
    evaluator: Arc<Evaluator>,
    counters: Arc<StoreCounters>,
    buffer: Vec<PredictionRecord>,
    /// Models whose outcomes grew since the last pruning.
    touched_outcomes: BTreeSet<(String, String, u64)>,
    last_sweep: Instant,
    /// The last sweep stopped at [`EVICT_STEP`] rows with more to evict: the
    /// next turn of the loop sweeps again.
    sweep_pending: bool,
    /// The connection's current `synchronous` setting (`open` sets FULL).
    sync: Sync,
    /// When the oldest prediction in `buffer` was taken from the queue.
    oldest: Option<Instant>,
    /// The latest predictions per request row, for counting agreement.
    recent: Recent,
    /// Whether the last `write_predictions` began its transaction (and so
    /// took records from its batch): a write that could not begin is retried.
    write_began: bool,
    /// When a reused request id was last logged, and the rows skipped since.
    duplicate_warned: Option<Instant>,
    duplicates_unreported: u64,
    /// A close was asked for: the loop ends, and this is answered once the
    /// connection is closed.
    closing: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One model's prediction for a request row, kept in memory a while.
#[derive(Clone, Debug)]
struct RecentPrediction {
    model: Arc<str>,
    version: u64,
    role: Role,
    prediction: Prediction,
}

/// (deployment, request id, row).
type RecentKey = (Arc<str>, Arc<str>, u32);

/// (deployment, challenger, version) of a batch's agreement counts:
/// (agreed, compared).
type PairKey = (Arc<str>, Arc<str>, u64);

/// The predictions of the most recent request rows of deployments with
/// challengers, so that agreement with the champion is counted without
/// reading each row's other predictions back from the log, and the label of
/// each such row once feedback stored one, so that a prediction written after
/// its label (a shadow's, or a canary deployment's mirrored champion copy) is
/// joined without reading the labels table. Bounded: the oldest rows are
/// forgotten first (a row written after its request row was forgotten reads
/// the log instead).
///
/// Invariant: while a request row is here, its `label` is the stored label,
/// if any (feedback sets it; an entry made for a row that is not here reads
/// it from the labels table, except for a served row, which comes before
/// the other models' rows of its request).
struct Recent {
    rows: HashMap<RecentKey, RecentRow>,
    order: std::collections::VecDeque<RecentKey>,
}

/// One request row in [`Recent`].
#[derive(Debug, Default)]
struct RecentRow {
    predictions: Vec<RecentPrediction>,
    label: Option<Label>,
}

/// Request rows kept in [`Recent`]: about 1.5 s of traffic at 40,000 rows a
/// second, far more than the few milliseconds between a champion's answer
/// and its shadows'.
const RECENT_ROWS: usize = 1 << 16;

impl Recent {
    fn new() -> Recent {
        Recent {
            rows: HashMap::with_capacity(RECENT_ROWS),
            order: std::collections::VecDeque::with_capacity(RECENT_ROWS),
        }
    }

    fn get(&self, key: &RecentKey) -> Option<&RecentRow> {
        self.rows.get(key)
    }

    fn push(&mut self, key: &RecentKey, p: RecentPrediction) {
        if let Some(row) = self.rows.get_mut(key) {
            row.predictions.push(p);
        }
    }

    /// Records a label stored for a request row, when the row is here.
    fn set_label(&mut self, key: &RecentKey, label: &Label) {
        if let Some(row) = self.rows.get_mut(key) {
            row.label = Some(label.clone());
        }
    }

    fn insert(&mut self, key: RecentKey, list: RecentRow) {
        if self.order.len() >= RECENT_ROWS
            && let Some(oldest) = self.order.pop_front()
        {
            self.rows.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.rows.insert(key, list);
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.order.clear();
    }
}

/// SQLite's `synchronous` setting: FULL for what is acknowledged as durable
/// (labels, deployment changes, drift states), NORMAL for the prediction log
/// (a crash may lose the last batch, never corrupt the database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    Full,
    Normal,
}

const BATCH: usize = 1024;

/// One feedback request: deployment, class names, labels.
type FeedbackGroup = (String, Vec<String>, Vec<FeedbackItem>);
/// Where a feedback request's answer goes.
type FeedbackReply = tokio::sync::oneshot::Sender<Result<Vec<FeedbackResult>, StoreError>>;

/// Most feedback requests committed together.
const FEEDBACK_GROUP: usize = 256;

/// Rows written in one batch per (deployment, model, version, served).
type BatchCount = (Arc<str>, Arc<str>, u64, bool, u64);
/// How often the queue is drained into the batch (a wait on the control
/// queue, which wakes at once for labels and deployment changes).
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Longest a drained prediction waits for its batch to be committed. Fewer,
/// bigger commits write each B-tree page fewer times: committing every 3 ms
/// instead cost about 4 µs of CPU per logged row at 35k rows/s.
const COMMIT_AFTER: Duration = Duration::from_millis(50);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most prediction rows one sweep deletes (expired first, then the oldest
/// beyond the size cap), about 20 ms of work: a sweep that finds more leaves
/// the rest to the next turn of the loop, so labels and deployment changes
/// waiting on the writer are served in between. Deleting a row costs about
/// as much as inserting it (~5 µs), so one statement for the whole excess
/// (5 % of the default 5,000,000-row cap, 250,000 rows) would hold the
/// writer for about 1.25 s.
const EVICT_STEP: u64 = 4096;
/// Pause before the one retry of a prediction write that could not begin
/// (the database locked by another process past the busy timeout).
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// At most one warning per this period about reused request ids.
const DUPLICATE_WARN_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    pub fn new(
        conn: Connection,
        path: PathBuf,
        settings: StoreSettings,
        evaluator: Arc<Evaluator>,
        counters: Arc<StoreCounters>,
    ) -> Writer {
        Writer {
            conn,
            path,
            settings,
            evaluator,
            counters,
            buffer: Vec::with_capacity(BATCH),
            touched_outcomes: BTreeSet::new(),
            last_sweep: Instant::now(),
            sweep_pending: false,
            sync: Sync::Full,
            oldest: None,
            recent: Recent::new(),
            write_began: false,
            duplicate_warned: None,
            duplicates_unreported: 0,
            closing: None,
        }
    }

    /// Sets `synchronous` for the next transactions, when it changes.
    fn synchronous(&mut self, mode: Sync) -> Result<(), StoreError> {
        if self.sync != mode {
            let value = match mode {
                Sync::Full => "FULL",
                Sync::Normal => "NORMAL",
            };
            self.conn
                .pragma_update(None, "synchronous", value)
                .map_err(sqlite_err(&self.path))?;
            self.sync = mode;
        }
        Ok(())
    }

    /// Serves both queues until the control queue closes, then writes what
    /// is left.
    ///
    /// The thread never parks on the prediction queue: it drains it every
    /// `FLUSH_EVERY` while it waits on the control queue, so a request that
    /// logs predictions never pays for waking it (a futex wake per request
    /// cost about 5 % of the gateway's CPU). Control messages (labels,
    /// deployment changes) wake it at once, after what is queued is written.
    pub fn run(mut self, predictions: Receiver<Vec<PredictionRecord>>, control: Receiver<Control>) {
        loop {
            self.drain(&predictions);
            if self.buffer.len() >= BATCH {
                self.flush();
                continue;
            }
            match control.recv_timeout(FLUSH_EVERY) {
                Ok(Control::Feedback {
                    deployment,
                    class_names,
                    items,
                    reply,
                }) => {
                    // Group commit: take the feedback requests already
                    // waiting, then write every prediction queued before any
                    // of them, then store them in one transaction.
                    let mut group = vec![((deployment, class_names, items), reply)];
                    let mut deferred = None;
                    while group.len() < FEEDBACK_GROUP {
                        match control.try_recv() {
                            Ok(Control::Feedback {
                                deployment,
                                class_names,
                                items,
                                reply,
                            }) => group.push(((deployment, class_names, items), reply)),
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.drain_all(&predictions);
                    self.flush();
                    self.feedback_group(group);
                    if let Some(c) = deferred {
                        self.handle(c);
                    }
                }
                Ok(c) => {
                    // Everything queued before this command is written first.
                    self.drain_all(&predictions);
                    self.flush();
                    self.handle(c);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain_all(&predictions);
                    if self.oldest.is_some_and(|t| t.elapsed() >= COMMIT_AFTER) {
                        self.flush();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.closing.is_some() {
                break;
            }
            let over_cap = self.counters.rows.load(Ordering::Relaxed)
                > self.settings.max_predictions + self.settings.max_predictions / 20;
            if over_cap || self.sweep_pending || self.last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
            }
        }
        self.drain_all(&predictions);
        self.flush();
        // The connection closes before a close is answered.
        let closing = self.closing.take();
        drop(self);
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }

    /// Takes queued predictions up to a batch.
    fn drain(&mut self, predictions: &Receiver<Vec<PredictionRecord>>) {
        while self.buffer.len() < BATCH {
            match predictions.try_recv() {
                Ok(more) => {
                    if self.buffer.is_empty() {
                        self.oldest = Some(Instant::now());
                    }
                    self.buffer.extend(more);
                }
                Err(_) => break,
            }
        }
    }

    /// Writes every queued prediction, a batch at a time.
    fn drain_all(&mut self, predictions: &Receiver<Vec<PredictionRecord>>) {
        loop {
            self.drain(predictions);
            if self.buffer.len() < BATCH {
                return;
            }
            self.flush();
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Feedback {
                deployment,
                class_names,
                items,
                reply,
            } => {
                self.feedback_group(vec![((deployment, class_names, items), reply)]);
            }
            Control::SaveDeployment {
                name,
                state,
                history,
                reply,
            } => {
                let _ = reply.send(self.save_deployment(&name, &state, history.as_deref()));
            }
            Control::Flush { reply } => {
                let _ = reply.send(());
            }
            Control::Close { reply } => {
                self.closing = Some(reply);
            }
            Control::SaveDrift {
                deployment,
                state,
                event,
                reply,
            } => {
                let _ = reply.send(self.save_drift(&deployment, &state, event.as_deref()));
            }
            Control::SaveMemberStats { deployments, reply } => {
                let _ = reply.send(self.save_member_stats(&deployments));
            }
        }
    }

    /// Replaces each deployment's stored member counters, in one
    /// transaction. Counters are saved every few seconds, so NORMAL suffices:
    /// a process crash loses nothing committed.
    fn save_member_stats(
        &mut self,
        deployments: &[(String, Vec<StoredMemberStats>)],
    ) -> Result<(), StoreError> {
        self.synchronous(Sync::Normal)?;
        let err = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut clear = tx
                .prepare_cached("DELETE FROM member_stats WHERE deployment = ?1")
                .map_err(&err)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO member_stats (deployment, model, version, served, mirrored, dropped,
                       errors, timeouts, rejected, completed, latency)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(&err)?;
            for (deployment, members) in deployments {
                clear.execute(params![deployment]).map_err(&err)?;
                for m in members {
                    let c = &m.counts;
                    insert
                        .execute(params![
                            deployment,
                            m.model,
                            m.version,
                            c.served,
                            c.mirrored,
                            c.dropped,
                            c.errors,
                            c.timeouts,
                            c.rejected,
                            c.completed,
                            m.latency,
                        ])
                        .map_err(&err)?;
                }
            }
        }
        tx.commit().map_err(&err)
    }

    fn save_drift(
        &mut self,
        deployment: &str,
        state: &str,
        event: Option<&str>,
    ) -> Result<(), StoreError> {
        self.save_state(
            "INSERT INTO drift (deployment, state, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (deployment) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            "INSERT INTO drift_events (deployment, at_ms, event) VALUES (?1, ?2, ?3)",
            deployment,
            state,
            event,
        )
    }

    /// Commits a group of feedback requests together and answers each.
    fn feedback_group(&mut self, group: Vec<(FeedbackGroup, FeedbackReply)>) {
        let (requests, replies): (Vec<FeedbackGroup>, Vec<FeedbackReply>) =
            group.into_iter().unzip();
        match self.feedback(requests) {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing feedback failed");
                self.reload();
                let failure = store_failure(&self.path, &e);
                let message = e.to_string();
                for reply in replies {
                    // A store that cannot be written now is a 503 (retry),
                    // anything else a 500.
                    let _ = reply.send(Err(match &failure {
                        Some(reason) => {
                            StoreError::Unavailable(format!("the labels were not stored: {reason}"))
                        }
                        None => {
                            StoreError::Corrupt(format!("the labels were not stored: {message}"))
                        }
                    }));
                }
            }
        }
    }

    /// A deployment's state, and its audit record, in one durable transaction.
    fn save_deployment(
        &mut self,
        name: &str,
        state: &str,
        history: Option<&str>,
    ) -> Result<(), StoreError> {
        self.save_state(
            "INSERT INTO deployments (name, state, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            "INSERT INTO history (deployment, at_ms, record) VALUES (?1, ?2, ?3)",
            name,
            state,
            history,
        )
    }

    /// Upserts a deployment's state (`upsert`) and appends a log entry
    /// (`append`) in one transaction, committed with synchronous = FULL.
    fn save_state(
        &mut self,
        upsert: &str,
        append: &str,
        deployment: &str,
        state: &str,
        entry: Option<&str>,
    ) -> Result<(), StoreError> {
        self.synchronous(Sync::Full)?;
        let err = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        let now = now_ms();
        tx.execute(upsert, params![deployment, state, now])
            .map_err(&err)?;
        if let Some(e) = entry {
            tx.execute(append, params![deployment, now, e])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// After a failed transaction the in-memory state may be ahead of the
    /// database: rebuild it from what is durable.
    fn reload(&mut self) {
        // What is in memory may include rows of the failed transaction.
        self.recent.clear();
        if let Err(e) = restore(&self.conn, &self.path, &self.evaluator, &self.counters) {
            tracing::error!(error = %e, "reloading evaluation state failed");
        }
    }

    fn flush(&mut self) {
        self.oldest = None;
        if self.buffer.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.buffer);
        let started = Instant::now();
        let n = batch.len();
        let mut written = self.write_predictions(&mut batch);
        if let Err(e) = &written
            && !self.write_began
        {
            // Nothing was taken from the batch: try once more.
            tracing::warn!(error = %e, rows = n, "writing predictions failed; retrying once");
            std::thread::sleep(WRITE_RETRY_PAUSE);
            written = self.write_predictions(&mut batch);
        }
        if let Err(e) = written {
            tracing::error!(error = %e, rows = n, "writing predictions failed; they are lost (counted as write_failed)");
            self.counters
                .write_failed
                .fetch_add(n as u64, Ordering::Relaxed);
            crate::telemetry::predictions_write_failed(n as u64);
            if self.write_began {
                self.reload();
            }
        }
        crate::telemetry::store_batch(n, started.elapsed());
        batch.clear();
        self.buffer = batch;
    }

    /// Writes and empties `batch` in one transaction, counting each model's
    /// predictions and each challenger's agreement with its champion.
    fn write_predictions(&mut self, batch: &mut Vec<PredictionRecord>) -> Result<(), StoreError> {
        self.write_began = false;
        self.synchronous(Sync::Normal)?;
        let err = sqlite_err(&self.path);
        // The write lock first: a database another process holds fails
        // here, before any record is taken from the batch.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        self.write_began = true;
        // Rows not logged because their key is logged already (a request id
        // used again), and the first such id.
        let mut duplicates = 0u64;
        let mut duplicate: Option<(Arc<str>, Arc<str>)> = None;
        let mut touched: BTreeSet<(String, ModelKey)> = BTreeSet::new();
        let mut served_rows: HashMap<String, u64> = HashMap::new();
        let mut counts: Vec<BatchCount> = Vec::new();
        // Applied to the evaluator once per batch.
        let mut comparisons: HashMap<PairKey, (u64, u64)> = HashMap::new();
        // Paired comparisons that rows joined to earlier labels added to.
        let mut joined_pairs: BTreeMap<String, BTreeSet<crate::evaluation::PairKey>> =
            BTreeMap::new();
        let mut json = Vec::with_capacity(128);
        let mut inserted = 0u64;
        {
            let mut insert_many = tx.prepare_cached(&INSERT_MANY).map_err(&err)?;
            let mut insert_one = tx.prepare_cached(&INSERT_ONE).map_err(&err)?;
            let mut others = tx
                .prepare_cached(
                    "SELECT model, version, role, prediction FROM predictions
                     WHERE deployment = ?1 AND request_id = ?2 AND row = ?3 AND NOT (model = ?4 AND version = ?5)",
                )
                .map_err(&err)?;
            let mut find_label = tx.prepare_cached(FIND_LABEL).map_err(&err)?;
            let mut insert_outcome = tx.prepare_cached(INSERT_OUTCOME).map_err(&err)?;
            let mut records = batch.drain(..);
            let mut chunk: Vec<PredictionRecord> = Vec::with_capacity(INSERT_ROWS);
            let mut fresh = [false; INSERT_ROWS];
            loop {
                chunk.clear();
                chunk.extend(records.by_ref().take(INSERT_ROWS));
                if chunk.is_empty() {
                    break;
                }
                // A whole chunk goes in as one statement. Should one of its
                // rows be logged already (a request id used twice), the
                // statement changes nothing and the chunk goes in row by row,
                // where such a row is skipped.
                let all_new = chunk.len() == INSERT_ROWS
                    && insert_chunk(&mut insert_many, &chunk, &mut json).map_err(&err)?;
                for (new, r) in fresh.iter_mut().zip(&chunk) {
                    *new = all_new || {
                        bind_record(&mut insert_one, 1, r, &mut json).map_err(&err)?;
                        insert_one.raw_execute().map_err(&err)? > 0
                    };
                }
                // In order; what is left in `chunk` comes after `r`.
                chunk.reverse();
                fresh[..chunk.len()].reverse();
                while let Some(r) = chunk.pop() {
                    if !fresh[chunk.len()] {
                        duplicates += 1;
                        if duplicate.is_none() {
                            duplicate = Some((r.deployment, r.request_id));
                        }
                        continue;
                    }
                    inserted += 1;
                    // Counted per model and batch (one evaluator update each, below).
                    let counted = counts.iter_mut().find(|(d, m, v, s, _)| {
                        **d == *r.deployment && **m == *r.model && *v == r.version && *s == r.served
                    });
                    match counted {
                        Some(c) => c.4 += 1,
                        None => counts.push((
                            Arc::clone(&r.deployment),
                            Arc::clone(&r.model),
                            r.version,
                            r.served,
                            1,
                        )),
                    }
                    if !r.compare {
                        continue;
                    }
                    // Agreement between the champion and each challenger, counted
                    // once per pair: when the second of the two is written. The
                    // other models' predictions come from the recent ones kept in
                    // memory; a challenger's row that finds none there (its
                    // champion's row was evicted, or written before a restart)
                    // reads them back from the log.
                    let recent_key = (Arc::clone(&r.deployment), Arc::clone(&r.request_id), r.row);
                    let known = self.recent.get(&recent_key);
                    let from_log;
                    let earlier: &[RecentPrediction] = match known {
                        Some(row) => &row.predictions,
                        // The served champion's row comes first (a canary
                        // deployment's champion copy does not: it reads).
                        None if r.role == Role::Champion && r.served => &[],
                        None => {
                            from_log = others
                                .query_map(
                                    params![
                                        &*r.deployment,
                                        &*r.request_id,
                                        r.row,
                                        &*r.model,
                                        r.version
                                    ],
                                    |row| {
                                        Ok((
                                            row.get::<_, String>(0)?,
                                            row.get::<_, u64>(1)?,
                                            row.get::<_, String>(2)?,
                                            row.get::<_, String>(3)?,
                                        ))
                                    },
                                )
                                .map_err(&err)?
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(&err)?
                                .into_iter()
                                // Rows this chunk wrote after `r` are counted
                                // when their turn comes.
                                .filter(|(model, version, ..)| {
                                    !chunk.iter().zip(&fresh).any(|(later, &new)| {
                                        new && *later.model == **model
                                            && later.version == *version
                                            && later.row == r.row
                                            && later.request_id == r.request_id
                                            && later.deployment == r.deployment
                                    })
                                })
                                .filter_map(|(model, version, role, p)| {
                                    Some(RecentPrediction {
                                        role: Role::parse(&role)?,
                                        prediction: logged_prediction(&r.deployment, &model, &p)?,
                                        model: Arc::from(model.as_str()),
                                        version,
                                    })
                                })
                                .collect::<Vec<_>>();
                            &from_log
                        }
                    };
                    for other in earlier {
                        if *other.model == *r.model && other.version == r.version {
                            continue;
                        }
                        let (model, version) = match (r.role, other.role) {
                            (Role::Champion, Role::Shadow | Role::Canary) => {
                                (&other.model, other.version)
                            }
                            (Role::Shadow | Role::Canary, Role::Champion) => (&r.model, r.version),
                            _ => continue,
                        };
                        let pair = comparisons
                            .entry((Arc::clone(&r.deployment), Arc::clone(model), version))
                            .or_default();
                        pair.0 += u64::from(r.prediction.agrees(&other.prediction));
                        pair.1 += 1;
                    }
                    // A label stored before this row: joined now, as feedback
                    // would have joined it had the row come first. Its label
                    // is in `recent` with its request row, or else in the
                    // labels table. A served row comes first, so it reads
                    // no table (a label can only precede it when other
                    // models' rows did, and those brought it into `recent`).
                    let label = match known {
                        Some(row) => row.label.clone(),
                        None if r.served => None,
                        None => find_label
                            .query_row(params![&*r.deployment, &*r.request_id, r.row], |row| {
                                row.get::<_, String>(0)
                            })
                            .optional()
                            .map_err(&err)?
                            .map(|l| {
                                serde_json::from_str::<Label>(&l)
                                    .map_err(|e| StoreError::Corrupt(format!("label {l:?}: {e}")))
                            })
                            .transpose()?,
                    };
                    if let Some(label) = &label
                        && let Some(outcome) = r.prediction.outcome(label)
                    {
                        let outcome_json =
                            serde_json::to_string(&outcome).expect("outcomes serialise");
                        insert_outcome
                            .execute(params![&*r.deployment, &*r.model, r.version, outcome_json])
                            .map_err(&err)?;
                        let key: ModelKey = (r.model.to_string(), r.version);
                        self.touched_outcomes.insert((
                            r.deployment.to_string(),
                            key.0.clone(),
                            key.1,
                        ));
                        // The pairs this row completes: with the champion, or
                        // with each challenger, that predicted before it.
                        for other in earlier {
                            let paired = matches!(
                                (r.role, other.role),
                                (Role::Champion, Role::Shadow | Role::Canary)
                                    | (Role::Shadow | Role::Canary, Role::Champion)
                            );
                            let Some(other_outcome) =
                                paired.then(|| other.prediction.outcome(label)).flatten()
                            else {
                                continue;
                            };
                            let other_key: ModelKey = (other.model.to_string(), other.version);
                            let (pair, (champion, challenger)) = if r.role == Role::Champion {
                                ((key.clone(), other_key), (&outcome, &other_outcome))
                            } else {
                                ((other_key, key.clone()), (&other_outcome, &outcome))
                            };
                            if self.evaluator.add_pair(
                                &r.deployment,
                                &pair,
                                r.segment.as_deref(),
                                champion,
                                challenger,
                            ) {
                                joined_pairs
                                    .entry(r.deployment.to_string())
                                    .or_default()
                                    .insert(pair);
                            }
                        }
                        self.evaluator.add_outcome(&r.deployment, &key, outcome);
                        touched.insert((r.deployment.to_string(), key));
                    }
                    let mine = RecentPrediction {
                        model: r.model,
                        version: r.version,
                        role: r.role,
                        prediction: r.prediction,
                    };
                    match known {
                        Some(_) => self.recent.push(&recent_key, mine),
                        None => {
                            let mut predictions = match earlier {
                                [] => Vec::with_capacity(4),
                                _ => earlier.to_vec(),
                            };
                            predictions.push(mine);
                            self.recent
                                .insert(recent_key, RecentRow { predictions, label });
                        }
                    }
                }
            }
        }
        for ((deployment, model, version), (agreed, compared)) in comparisons {
            let key: ModelKey = (model.to_string(), version);
            self.evaluator
                .add_comparisons(&deployment, &key, agreed, compared);
            touched.insert((deployment.to_string(), key));
        }
        for (deployment, model, version, served, n) in &counts {
            let key: ModelKey = (model.to_string(), *version);
            self.evaluator
                .add_predictions(deployment, &key, *n, *served);
            if *served {
                *served_rows.entry(deployment.to_string()).or_default() += n;
            }
            touched.insert((deployment.to_string(), key));
        }
        save_evals(&self.evaluator, &self.path, &tx, &touched)?;
        for deployment in served_rows.keys() {
            save_counters(&self.evaluator, &self.path, &tx, deployment)?;
        }
        for (deployment, pairs) in &joined_pairs {
            save_comparisons(&self.evaluator, &self.path, &tx, deployment, pairs)?;
        }
        tx.commit().map_err(&err)?;
        drop(err);
        self.counters.rows.fetch_add(inserted, Ordering::Relaxed);
        if let Some((deployment, request_id)) = duplicate {
            self.duplicates(duplicates, &deployment, &request_id);
        }
        self.notify_comparisons(joined_pairs.into_keys());
        Ok(())
    }

    /// Counts prediction rows not logged because their request id was
    /// logged already, and warns (at most once a minute) naming one.
    fn duplicates(&mut self, n: u64, deployment: &str, request_id: &str) {
        self.counters.duplicate_ids.fetch_add(n, Ordering::Relaxed);
        crate::telemetry::predictions_duplicate_ids(n);
        self.duplicates_unreported += n;
        if self
            .duplicate_warned
            .is_none_or(|t| t.elapsed() >= DUPLICATE_WARN_EVERY)
        {
            tracing::warn!(
                deployment,
                request_id,
                rows = self.duplicates_unreported,
                "a request id was used again: the later request's predictions are not logged \
                 (the first request's are kept and joined); request ids must be unique per deployment"
            );
            self.duplicate_warned = Some(Instant::now());
            self.duplicates_unreported = 0;
        }
    }
}

/// The label stored for a request row.
const FIND_LABEL: &str =
    "SELECT label FROM labels WHERE deployment = ?1 AND request_id = ?2 AND row = ?3";
const INSERT_OUTCOME: &str =
    "INSERT INTO outcomes (deployment, model, version, outcome) VALUES (?1, ?2, ?3, ?4)";

/// A logged prediction read back. The log round-trips every prediction
/// (non-finite values included), so a row that does not parse is corrupt:
/// it is reported, never skipped silently.
fn logged_prediction(deployment: &str, model: &str, json: &str) -> Option<Prediction> {
    match serde_json::from_str(json) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(deployment, model, error = %e, "a logged prediction does not parse; it is left out");
            None
        }
    }
}

/// Columns of a prediction row, in the order [`bind_record`] binds them.
const PREDICTION_COLUMNS: &str = "(deployment, request_id, row, model, version, role, served, segment, created_ms, latency_us, prediction)";
/// Placeholders for one row.
const ONE_ROW: &str = "(?,?,?,?,?,?,?,?,?,?,?)";
/// Parameters bound per row.
const ROW_PARAMS: usize = 11;
/// Rows inserted by one statement. One statement per 32 rows cost about a
/// third less per row than one per row (2.5–3.3 µs against 3.4–4.9 µs a row,
/// 600,000 rows into this schema in batches of 1,000 on the benchmark
/// machine; BENCHMARKS.md).
const INSERT_ROWS: usize = 32;
/// `INSERT OR IGNORE` of one row: a row already in the log is skipped.
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT OR IGNORE INTO predictions {PREDICTION_COLUMNS} VALUES {ONE_ROW}")
});
/// `INSERT` of [`INSERT_ROWS`] rows. Without `OR IGNORE`: a row already in
/// the log makes the whole statement fail and change nothing (the
/// transaction goes on), so the chunk is then written row by row.
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    let mut sql = format!("INSERT INTO predictions {PREDICTION_COLUMNS} VALUES {ONE_ROW}");
    for _ in 1..INSERT_ROWS {
        sql.push(',');
        sql.push_str(ONE_ROW);
    }
    sql
});

/// Binds `r` to the parameters `first..first + ROW_PARAMS` of `stmt`, with
/// its prediction serialised through `json`.
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    first: usize,
    r: &PredictionRecord,
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    json.clear();
    serde_json::to_writer(&mut *json, &r.prediction).expect("predictions serialise");
    let prediction = std::str::from_utf8(json).expect("serde_json writes UTF-8");
    stmt.raw_bind_parameter(first, &*r.deployment)?;
    stmt.raw_bind_parameter(first + 1, &*r.request_id)?;
    stmt.raw_bind_parameter(first + 2, r.row)?;
    stmt.raw_bind_parameter(first + 3, &*r.model)?;
    stmt.raw_bind_parameter(first + 4, r.version)?;
    stmt.raw_bind_parameter(first + 5, r.role.as_str())?;
    stmt.raw_bind_parameter(first + 6, r.served)?;
    stmt.raw_bind_parameter(first + 7, r.segment.as_deref())?;
    stmt.raw_bind_parameter(first + 8, r.created_ms)?;
    stmt.raw_bind_parameter(first + 9, r.latency_us)?;
    // Bound as a copy (SQLite's transient text), so `json` can be reused.
    stmt.raw_bind_parameter(first + 10, prediction)
}

/// Inserts a full chunk as one statement: `Ok(false)` when a row of it is
/// in the log already, and then nothing of it was written.
fn insert_chunk(
    stmt: &mut rusqlite::Statement<'_>,
    chunk: &[PredictionRecord],
    json: &mut Vec<u8>,
) -> rusqlite::Result<bool> {
    for (i, r) in chunk.iter().enumerate() {
        bind_record(stmt, 1 + i * ROW_PARAMS, r, json)?;
    }
    match stmt.raw_execute() {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn save_evals(
    evaluator: &Evaluator,
    path: &Path,
    tx: &Transaction<'_>,
    touched: &BTreeSet<(String, ModelKey)>,
) -> Result<(), StoreError> {
    {
        let err = sqlite_err(path);
        let mut by_deployment: HashMap<&str, Vec<ModelKey>> = HashMap::new();
        for (d, k) in touched {
            by_deployment.entry(d).or_default().push(k.clone());
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO model_eval (deployment, model, version, state, agree, compared, predictions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (deployment, model, version) DO UPDATE SET state = excluded.state,
                   agree = excluded.agree, compared = excluded.compared, predictions = excluded.predictions",
            )
            .map_err(&err)?;
        for (deployment, keys) in by_deployment {
            for (key, eval) in evaluator.model_evals(deployment, &keys) {
                let state = eval
                    .cumulative_state()
                    .map(|s| serde_json::to_string(s).expect("metrics state serialises"));
                upsert
                    .execute(params![
                        deployment,
                        key.0,
                        key.1,
                        state,
                        eval.agree,
                        eval.compared,
                        eval.predictions
                    ])
                    .map_err(&err)?;
            }
        }
        Ok(())
    }
}

fn save_comparisons(
    evaluator: &Evaluator,
    path: &Path,
    tx: &Transaction<'_>,
    deployment: &str,
    pairs: &BTreeSet<crate::evaluation::PairKey>,
) -> Result<(), StoreError> {
    let err = sqlite_err(path);
    let keys: Vec<_> = pairs.iter().cloned().collect();
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO comparisons (deployment, champion_model, champion_version, challenger_model, challenger_version, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (deployment, champion_model, champion_version, challenger_model, challenger_version)
             DO UPDATE SET state = excluded.state",
        )
        .map_err(&err)?;
    for ((champion, challenger), c) in evaluator.comparison_states(deployment, &keys) {
        let state = serde_json::to_string(&c).expect("comparisons serialise");
        upsert
            .execute(params![
                deployment,
                champion.0,
                champion.1,
                challenger.0,
                challenger.1,
                state
            ])
            .map_err(&err)?;
    }
    Ok(())
}

fn save_counters(
    evaluator: &Evaluator,
    path: &Path,
    tx: &Transaction<'_>,
    deployment: &str,
) -> Result<(), StoreError> {
    {
        let (served, labelled) = evaluator.counters(deployment);
        tx.execute(
            "INSERT INTO deployment_counters (deployment, rows_served, rows_labelled) VALUES (?1, ?2, ?3)
             ON CONFLICT (deployment) DO UPDATE SET rows_served = excluded.rows_served, rows_labelled = excluded.rows_labelled",
            params![deployment, served, labelled],
        )
        .map_err(sqlite_err(path))?;
        Ok(())
    }
}

impl Writer {
    /// Stores the labels of several feedback requests in ONE transaction
    /// (group commit: one synchronous = FULL commit for all of them), and
    /// answers each request's items.
    fn feedback(
        &mut self,
        groups: Vec<FeedbackGroup>,
    ) -> Result<Vec<Vec<FeedbackResult>>, StoreError> {
        self.synchronous(Sync::Full)?;
        let err = sqlite_err(&self.path);
        let retention_ms = self.settings.retention_ms;
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut answers = Vec::with_capacity(groups.len());
        let mut changed_comparisons: Vec<String> = Vec::new();
        {
            let mut existing_label = tx.prepare_cached(FIND_LABEL).map_err(&err)?;
            let mut preds = tx
                .prepare_cached(
                    "SELECT model, version, prediction, role, segment, created_ms, served FROM predictions
                     WHERE deployment = ?1 AND request_id = ?2 AND row = ?3",
                )
                .map_err(&err)?;
            let mut insert_label = tx
                .prepare_cached(
                    "INSERT INTO labels (deployment, request_id, row, label, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(&err)?;
            let mut insert_outcome = tx.prepare_cached(INSERT_OUTCOME).map_err(&err)?;
            for (deployment, class_names, items) in groups {
                let (deployment, class_names) = (deployment.as_str(), class_names.as_slice());
                let mut results = Vec::with_capacity(items.len());
                let mut touched: BTreeSet<(String, ModelKey)> = BTreeSet::new();
                let mut labelled = 0u64;
                let mut pairs: BTreeSet<crate::evaluation::PairKey> = BTreeSet::new();
                for item in items {
                    let result = |status, message: Option<String>| FeedbackResult {
                        id: item.id.clone(),
                        row: item.row,
                        status,
                        message,
                    };
                    let predictions = preds
                        .query_map(params![deployment, item.id, item.row], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, u64>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, Option<String>>(4)?,
                                r.get::<_, i64>(5)?,
                                r.get::<_, bool>(6)?,
                            ))
                        })
                        .map_err(&err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&err)?;
                    let segment = predictions.iter().find_map(|p| p.4.clone());
                    // The answer the application got is still in the log.
                    let served = predictions.iter().any(|p| p.6);
                    // When the request was answered: its earliest row.
                    let created_ms = predictions.iter().map(|p| p.5).min();
                    let predictions: Vec<(String, u64, Prediction, Option<Role>)> = predictions
                        .into_iter()
                        .filter_map(|(m, v, p, role, ..)| {
                            logged_prediction(deployment, &m, &p)
                                .map(|p| (m, v, p, Role::parse(&role)))
                        })
                        .collect();
                    let stored: Option<String> = existing_label
                        .query_row(params![deployment, item.id, item.row], |r| r.get(0))
                        .optional()
                        .map_err(&err)?;
                    let kind = predictions.first().map(|(_, _, p, _)| p.kind());
                    if let Some(stored) = stored {
                        let stored: Option<Label> = serde_json::from_str(&stored).ok();
                        let posted =
                            kind.and_then(|k| Label::parse(&item.label, k, class_names).ok());
                        results.push(if posted.is_some() && posted == stored {
                        result(FeedbackStatus::Duplicate, None)
                    } else {
                        result(
                            FeedbackStatus::Conflict,
                            Some(format!(
                                "a different label is already stored for this id ({}); labels are not overwritten",
                                stored.map_or_else(|| "?".into(), |l| label_text(&l))
                            )),
                        )
                    });
                        continue;
                    }
                    // Past the retention window: whether the sweep deleted the
                    // rows yet (then only a contender-issued id can tell) or not.
                    let expired = match created_ms {
                        Some(ms) => ms < now - retention_ms,
                        None => is_expired(&item.id, now, retention_ms),
                    };
                    if expired {
                        results.push(result(
                            FeedbackStatus::Expired,
                            Some(format!(
                                "the predictions for request id {:?} are older than the retention \
                                 window ({} hours); labels for them are no longer taken",
                                item.id,
                                retention_ms as f64 / 3_600_000.0
                            )),
                        ));
                        continue;
                    }
                    let Some(kind) = kind else {
                        results.push(result(
                            FeedbackStatus::UnknownId,
                            Some(format!(
                                "no prediction for request id {:?} row {} in this deployment: \
                                 the id was never served here, or its predictions were removed \
                                 by retention or the size cap",
                                item.id, item.row
                            )),
                        ));
                        continue;
                    };
                    let label = match Label::parse(&item.label, kind, class_names) {
                        Ok(l) => l,
                        Err(message) => {
                            results.push(result(FeedbackStatus::Invalid, Some(message)));
                            continue;
                        }
                    };
                    let label_json = serde_json::to_string(&label).expect("labels serialise");
                    insert_label
                        .execute(params![deployment, item.id, item.row, label_json, now])
                        .map_err(&err)?;
                    // Predictions written later for this row join it then.
                    self.recent.set_label(
                        &(Arc::from(deployment), Arc::from(item.id.as_str()), item.row),
                        &label,
                    );
                    let mut champion: Option<(ModelKey, crate::evaluation::metrics::Outcome)> =
                        None;
                    let mut challengers = Vec::new();
                    let mut joined: Vec<String> = Vec::new();
                    for (model, version, prediction, role) in predictions {
                        let Some(outcome) = prediction.outcome(&label) else {
                            continue;
                        };
                        // Named only in the note of a label whose served row is gone.
                        if !served {
                            joined.push(format!("{model}@{version}"));
                        }
                        let k: ModelKey = (model.clone(), version);
                        match role {
                            Some(Role::Champion) => champion = Some((k, outcome.clone())),
                            Some(Role::Shadow | Role::Canary) => {
                                challengers.push((k, outcome.clone()))
                            }
                            None => {}
                        }
                        let outcome_json =
                            serde_json::to_string(&outcome).expect("outcomes serialise");
                        insert_outcome
                            .execute(params![deployment, model, version, outcome_json])
                            .map_err(&err)?;
                        let key: ModelKey = (model, version);
                        self.evaluator.add_outcome(deployment, &key, outcome);
                        self.touched_outcomes
                            .insert((deployment.to_owned(), key.0.clone(), key.1));
                        touched.insert((deployment.to_owned(), key));
                    }
                    // The paired comparisons: the champion's loss against each
                    // challenger's on this row (overall and in its segment).
                    if let Some((ck, co)) = &champion {
                        for (xk, xo) in &challengers {
                            let pair = (ck.clone(), xk.clone());
                            if self.evaluator.add_pair(
                                deployment,
                                &pair,
                                segment.as_deref(),
                                co,
                                xo,
                            ) {
                                pairs.insert(pair);
                            }
                        }
                    }
                    labelled += 1;
                    // Other models' rows without the served one (the size cap
                    // or retention evicted it, or the log's queue was full
                    // and it was dropped): the label joins the rows that
                    // remain (pairs only where both exist), and says so.
                    let note = (!served).then(|| {
                        format!(
                            "joined to {}; the prediction answered for request id {:?} row {} \
                             is no longer in the prediction log (evicted by retention or the \
                             size cap, store.max_predictions, or dropped when the log's queue \
                             was full)",
                            if joined.is_empty() {
                                "no model".to_owned()
                            } else {
                                joined.join(", ")
                            },
                            item.id,
                            item.row
                        )
                    });
                    results.push(result(FeedbackStatus::Accepted, note));
                }
                self.evaluator.add_labelled(deployment, labelled);
                save_evals(&self.evaluator, &self.path, &tx, &touched)?;
                save_counters(&self.evaluator, &self.path, &tx, deployment)?;
                save_comparisons(&self.evaluator, &self.path, &tx, deployment, &pairs)?;
                if !pairs.is_empty() && !changed_comparisons.iter().any(|d| d == deployment) {
                    changed_comparisons.push(deployment.to_owned());
                }
                answers.push(results);
            }
        }
        tx.commit().map_err(&err)?;
        self.notify_comparisons(changed_comparisons);
        Ok(answers)
    }

    /// Tells the promotion policy which deployments' comparisons changed.
    fn notify_comparisons(&self, deployments: impl IntoIterator<Item = String>) {
        if let Some(notify) = &self.settings.notify {
            for deployment in deployments {
                // The policy re-evaluates; if its queue is full it has work pending anyway.
                let _ = notify.try_send(deployment);
            }
        }
    }

    /// Retention, the size cap, and pruning outcomes beyond the windows.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        // A failed sweep is tried again at the next period, not at once.
        self.sweep_pending = false;
        if let Err(e) = self.try_sweep() {
            tracing::error!(error = %e, "store sweep failed");
        }
    }

    fn try_sweep(&mut self) -> Result<(), StoreError> {
        self.synchronous(Sync::Normal)?;
        let err = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        let cutoff = now_ms() - self.settings.retention_ms;
        // Expired rows first, then the oldest beyond the cap: at most
        // EVICT_STEP in all (the rest is left to the next sweep). Both are
        // the oldest rows: one statement, bounded by time or not.
        let delete_oldest = |before_ms: i64, limit: u64| {
            tx.prepare_cached(
                "DELETE FROM predictions WHERE (deployment, request_id, row, model, version) IN
                   (SELECT deployment, request_id, row, model, version FROM predictions
                    WHERE created_ms < ?1 ORDER BY created_ms LIMIT ?2)",
            )
            .and_then(|mut delete| delete.execute(params![before_ms, limit as i64]))
            .map(|n| n as u64)
            .map_err(&err)
        };
        let expired = delete_oldest(cutoff, EVICT_STEP)?;
        let mut rows = self
            .counters
            .rows
            .load(Ordering::Relaxed)
            .saturating_sub(expired);
        let mut evicted = expired;
        let budget = EVICT_STEP - expired;
        if rows > self.settings.max_predictions && budget > 0 {
            let excess = (rows - self.settings.max_predictions).min(budget);
            let capped = delete_oldest(i64::MAX, excess)?;
            rows = rows.saturating_sub(capped);
            evicted += capped;
        }
        let pending = expired == EVICT_STEP || rows > self.settings.max_predictions;
        for (deployment, model, version) in std::mem::take(&mut self.touched_outcomes) {
            let window = self.evaluator.window(&deployment) as i64;
            tx.execute(
                "DELETE FROM outcomes WHERE deployment = ?1 AND model = ?2 AND version = ?3 AND seq <
                   (SELECT seq FROM outcomes WHERE deployment = ?1 AND model = ?2 AND version = ?3
                    ORDER BY seq DESC LIMIT 1 OFFSET ?4)",
                params![deployment, model, version, window - 1],
            )
            .map_err(&err)?;
        }
        if evicted > 0 {
            let total = self.counters.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('evicted', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![total],
            )
            .map_err(&err)?;
            crate::telemetry::predictions_evicted(evicted);
        }
        tx.commit().map_err(&err)?;
        self.counters.rows.store(rows, Ordering::Relaxed);
        self.sweep_pending = pending;
        Ok(())
    }
}

fn label_text(l: &Label) -> String {
    match l {
        Label::Class(c) => format!("class {c}"),
        Label::Value(v) => format!("{v}"),
    }
}

/// Whether a request id generated by contender (UUID v7) is older than the
/// retention window. Ids chosen by the application cannot tell.
fn is_expired(id: &str, now_ms: i64, retention_ms: i64) -> bool {
    uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .and_then(|u| u.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            let ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
            ms < now_ms - retention_ms
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model: &str, version: u64, role: Role, id: &str, label: i64) -> PredictionRecord {
        PredictionRecord {
            deployment: Arc::from("d"),
            request_id: Arc::from(id),
            row: 0,
            model: Arc::from(model),
            version,
            role,
            served: role != Role::Shadow,
            segment: None,
            created_ms: now_ms(),
            latency_us: 10,
            prediction: Prediction::Class {
                label,
                probabilities: None,
            },
            compare: true,
        }
    }

    /// A writer on a fresh store in `dir` (one hour of retention, at most
    /// `max_predictions` rows), with its evaluator and counters.
    fn writer(dir: &Path, max_predictions: u64) -> (Writer, Arc<Evaluator>, Arc<StoreCounters>) {
        let path = dir.join("contender.db");
        let evaluator = Arc::new(Evaluator::default());
        let counters = Arc::new(StoreCounters::default());
        let settings = StoreSettings {
            retention_ms: 3_600_000,
            max_predictions,
            queue_capacity: 16,
            notify: None,
        };
        let w = Writer::new(
            open(&path).expect("the store opens"),
            path,
            settings,
            Arc::clone(&evaluator),
            Arc::clone(&counters),
        );
        (w, evaluator, counters)
    }

    fn agreement(evaluator: &Evaluator, version: u64) -> (u64, u64) {
        let key: ModelKey = ("m".to_owned(), version);
        let evals = evaluator.model_evals("d", std::slice::from_ref(&key));
        evals.first().map_or((0, 0), |(_, e)| (e.agree, e.compared))
    }

    /// Agreement is counted once per champion–challenger pair, from the
    /// predictions kept in memory or, when they are gone (evicted, or
    /// written before a restart), from the log; a repeated row counts once.
    #[test]
    fn agreement_is_counted_from_memory_or_from_the_log() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, _) = writer(dir.path(), 1_000_000);
        // In memory: the champion's row, then two shadows' (one agrees).
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "a", 1)])
            .expect("written");
        w.write_predictions(&mut vec![
            record("m", 2, Role::Shadow, "a", 1),
            record("m", 3, Role::Shadow, "a", 0),
        ])
        .expect("written");
        assert_eq!(agreement(&evaluator, 2), (1, 1));
        assert_eq!(agreement(&evaluator, 3), (0, 1));
        // The same rows again change nothing.
        w.write_predictions(&mut vec![record("m", 2, Role::Shadow, "a", 1)])
            .expect("written");
        assert_eq!(agreement(&evaluator, 2), (1, 1));
        // From the log: the champion's row is no longer in memory.
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "b", 0)])
            .expect("written");
        w.recent.clear();
        w.write_predictions(&mut vec![record("m", 2, Role::Shadow, "b", 0)])
            .expect("written");
        assert_eq!(agreement(&evaluator, 2), (2, 2));
        // A shadow answering before the champion: counted when the
        // champion's row comes.
        w.write_predictions(&mut vec![record("m", 3, Role::Shadow, "c", 1)])
            .expect("written");
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "c", 1)])
            .expect("written");
        assert_eq!(agreement(&evaluator, 3), (1, 2));
        // Several pairs in one batch are summed (one evaluator update).
        w.write_predictions(&mut vec![
            record("m", 1, Role::Champion, "d", 1),
            record("m", 2, Role::Shadow, "d", 1),
            record("m", 1, Role::Champion, "e", 0),
            record("m", 2, Role::Shadow, "e", 1),
        ])
        .expect("written");
        assert_eq!(agreement(&evaluator, 2), (3, 4));
        // A shadow's row before its champion's, both written by one
        // statement while the champion's is not in memory: one comparison.
        w.recent.clear();
        let mut batch = vec![
            record("m", 2, Role::Shadow, "x", 1),
            record("m", 1, Role::Champion, "x", 1),
        ];
        batch.extend((2..INSERT_ROWS).map(|i| record("m", 1, Role::Champion, &format!("f{i}"), 0)));
        w.write_predictions(&mut batch).expect("written");
        assert_eq!(agreement(&evaluator, 2), (4, 5));
    }

    /// Posts one label for row 0 of `id` in deployment `d`.
    fn label(w: &mut Writer, id: &str, label: serde_json::Value) -> FeedbackResult {
        let item = FeedbackItem {
            id: id.to_owned(),
            row: 0,
            label,
        };
        let mut answers = w
            .feedback(vec![("d".to_owned(), Vec::new(), vec![item])])
            .expect("the label is stored");
        answers.remove(0).remove(0)
    }

    /// (labelled rows, pairs compared) of model m@`version` in `d`, with
    /// champion m@1.
    fn joined(evaluator: &Evaluator, version: u64) -> (u64, u64) {
        let snapshot = evaluator.snapshot("d");
        let labelled = snapshot
            .models
            .iter()
            .find(|m| m.model == "m" && m.version == version)
            .map_or(0, |m| m.labelled);
        let pairs = snapshot
            .comparisons
            .iter()
            .find(|c| c.key == (("m".to_owned(), 1), ("m".to_owned(), version)))
            .map_or(0, |c| c.overall.pairs);
        (labelled, pairs)
    }

    /// The evaluation as a fresh evaluator restores it from the store.
    fn restored(w: &Writer) -> serde_json::Value {
        let evaluator = Evaluator::default();
        let counters = StoreCounters::default();
        restore(&w.conn, &w.path, &evaluator, &counters).expect("restores");
        serde_json::to_value(evaluator.snapshot("d")).expect("serialises")
    }

    /// A label joins the predictions written after it (shadows answering
    /// after feedback, a canary deployment's champion copy arriving after
    /// the canary's answer), from the rows kept in memory or, when they are
    /// gone, from the labels table: each model gets its outcome and each
    /// champion–challenger pair is compared once, as if the label had come
    /// last; a restore gives the same evaluation.
    #[test]
    fn a_label_joins_predictions_written_after_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, _) = writer(dir.path(), 1_000_000);
        let ok = FeedbackStatus::Accepted;
        // Shadows after the label.
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "a", 1)])
            .expect("written");
        assert_eq!(label(&mut w, "a", serde_json::json!(1)).status, ok);
        assert_eq!(joined(&evaluator, 1), (1, 0));
        w.write_predictions(&mut vec![
            record("m", 2, Role::Shadow, "a", 1),
            record("m", 3, Role::Shadow, "a", 0),
        ])
        .expect("written");
        assert_eq!(joined(&evaluator, 1).0, 1);
        assert_eq!(joined(&evaluator, 2), (1, 1));
        assert_eq!(joined(&evaluator, 3), (1, 1));
        // A row logged twice joins once.
        w.write_predictions(&mut vec![record("m", 2, Role::Shadow, "a", 1)])
            .expect("written");
        assert_eq!(joined(&evaluator, 2), (1, 1));
        // One shadow before the label, one after: each pair once.
        w.write_predictions(&mut vec![
            record("m", 1, Role::Champion, "b", 0),
            record("m", 2, Role::Shadow, "b", 0),
        ])
        .expect("written");
        assert_eq!(label(&mut w, "b", serde_json::json!(0)).status, ok);
        w.write_predictions(&mut vec![record("m", 3, Role::Shadow, "b", 1)])
            .expect("written");
        assert_eq!(joined(&evaluator, 2), (2, 2));
        assert_eq!(joined(&evaluator, 3), (2, 2));
        // The request row no longer in memory: the label is read back.
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "c", 1)])
            .expect("written");
        assert_eq!(label(&mut w, "c", serde_json::json!(1)).status, ok);
        w.recent.clear();
        w.write_predictions(&mut vec![record("m", 2, Role::Shadow, "c", 1)])
            .expect("written");
        w.write_predictions(&mut vec![record("m", 3, Role::Shadow, "c", 1)])
            .expect("written");
        assert_eq!(joined(&evaluator, 1).0, 3);
        assert_eq!(joined(&evaluator, 2), (3, 3));
        assert_eq!(joined(&evaluator, 3), (3, 3));
        // A canary's served answer, the label, then the champion's copy;
        // then the same with the canary's row no longer in memory.
        let champion_copy = |id: &str| {
            let mut r = record("m", 1, Role::Champion, id, 1);
            r.served = false;
            r
        };
        for (id, forget) in [("e", false), ("f", true)] {
            w.write_predictions(&mut vec![record("m", 4, Role::Canary, id, 0)])
                .expect("written");
            assert_eq!(label(&mut w, id, serde_json::json!(1)).status, ok);
            if forget {
                w.recent.clear();
            }
            w.write_predictions(&mut vec![champion_copy(id)])
                .expect("written");
        }
        assert_eq!(joined(&evaluator, 1).0, 5);
        assert_eq!(joined(&evaluator, 4), (2, 2));
        let accuracy = |version| {
            evaluator
                .snapshot("d")
                .models
                .iter()
                .find(|m| m.version == version)
                .and_then(|m| m.cumulative.accuracy)
        };
        assert_eq!(accuracy(1), Some(1.0));
        assert_eq!(accuracy(3), Some(1.0 / 3.0));
        assert_eq!(accuracy(4), Some(0.0));
        let (served, labelled) = evaluator.counters("d");
        assert_eq!((served, labelled), (5, 5));
        // Every outcome is stored: a restore equals the live evaluation.
        let outcomes: u64 = w
            .conn
            .query_row("SELECT COUNT(*) FROM outcomes", [], |r| r.get(0))
            .expect("counted");
        assert_eq!(outcomes, 3 + 3 + 3 + 2 + 2);
        assert_eq!(
            restored(&w),
            serde_json::to_value(evaluator.snapshot("d")).expect("serialises")
        );
    }

    /// Non-finite predictions are logged so that they read back: labels
    /// join them, the metrics count them by the documented rule, and a
    /// restore reads their outcomes back.
    #[test]
    fn non_finite_predictions_are_joined_and_restored() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, _) = writer(dir.path(), 1_000_000);
        let mut nan = record("m", 1, Role::Champion, "n", 1);
        nan.compare = false;
        nan.prediction = Prediction::Class {
            label: 1,
            probabilities: Some(vec![f64::NAN, f64::INFINITY]),
        };
        let mut fine = record("m", 1, Role::Champion, "p", 1);
        fine.compare = false;
        fine.prediction = Prediction::Class {
            label: 1,
            probabilities: Some(vec![0.5, 0.5]),
        };
        w.write_predictions(&mut vec![nan, fine]).expect("written");
        for id in ["n", "p"] {
            assert_eq!(
                label(&mut w, id, serde_json::json!(1)).status,
                FeedbackStatus::Accepted
            );
        }
        let snapshot = evaluator.snapshot("d");
        let m = &snapshot.models[0].cumulative;
        assert_eq!((m.labelled, m.non_finite), (2, 1));
        assert_eq!(m.accuracy, Some(1.0));
        let want = (-(1e-15f64.ln()) - 0.5f64.ln()) / 2.0;
        assert!(
            m.log_loss.is_some_and(|l| (l - want).abs() < 1e-12),
            "{m:?}"
        );
        assert_eq!(m.brier, Some((1.0 + 0.25) / 2.0));
        assert_eq!(
            restored(&w),
            serde_json::to_value(evaluator.snapshot("d")).expect("serialises")
        );
    }

    /// A label for predictions past the retention window is `expired` as soon
    /// as they are, before the sweep deletes them, whatever the id; an id
    /// with no prediction is `unknown_id`, saying why that can be.
    #[test]
    fn labels_past_retention_are_expired_before_the_sweep() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, _) = writer(dir.path(), 1_000_000);
        let mut old = record("m", 1, Role::Champion, "order-42", 1);
        old.compare = false;
        old.created_ms = now_ms() - 2 * 3_600_000;
        let mut fresh = record("m", 1, Role::Champion, "order-44", 1);
        fresh.compare = false;
        w.write_predictions(&mut vec![old, fresh]).expect("written");
        let r = label(&mut w, "order-42", serde_json::json!(1));
        assert_eq!(r.status, FeedbackStatus::Expired, "{r:?}");
        assert!(r.message.is_some_and(|m| m.contains("retention")));
        let r = label(&mut w, "order-43", serde_json::json!(1));
        assert_eq!(r.status, FeedbackStatus::UnknownId, "{r:?}");
        let message = r.message.expect("a message");
        for needle in ["never served here", "retention", "size cap"] {
            assert!(message.contains(needle), "{message}");
        }
        let r = label(&mut w, "order-44", serde_json::json!(1));
        assert_eq!(r.status, FeedbackStatus::Accepted, "{r:?}");
        assert_eq!(evaluator.counters("d").1, 1);
    }

    /// Rows go in 32 to a statement; a chunk holding a row that is logged
    /// already (a request id used twice, in this batch or before) is written
    /// row by row, so that row is skipped and counted once, and its first
    /// prediction stays.
    #[test]
    fn rows_go_in_by_chunks_and_a_row_logged_twice_counts_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, counters) = writer(dir.path(), 1_000_000);
        let champion = |id: String, label| {
            let mut r = record("m", 1, Role::Champion, &id, label);
            r.compare = false;
            r
        };
        let logged = |w: &Writer| -> (u64, u64, u64) {
            let rows: u64 = w
                .conn
                .query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
                .expect("counted");
            let key: ModelKey = ("m".to_owned(), 1);
            let evals = evaluator.model_evals("d", std::slice::from_ref(&key));
            let counted = evals.first().map_or(0, |(_, e)| e.predictions);
            (rows, counters.rows.load(Ordering::Relaxed), counted)
        };
        // 70 rows: two full chunks and a remainder of 6.
        let mut batch: Vec<_> = (0..70).map(|i| champion(format!("r{i}"), 1)).collect();
        w.write_predictions(&mut batch).expect("written");
        assert!(batch.is_empty());
        assert_eq!(logged(&w), (70, 70, 70));
        // A full chunk with one row logged before (r5, now with another
        // label) and one row twice (n3), then 8 new rows.
        let mut batch: Vec<_> = (0..30).map(|i| champion(format!("n{i}"), 1)).collect();
        batch.insert(10, champion("r5".to_owned(), 0));
        batch.push(champion("n3".to_owned(), 0));
        batch.extend((30..38).map(|i| champion(format!("n{i}"), 1)));
        assert_eq!(batch.len(), 40);
        w.write_predictions(&mut batch).expect("written");
        assert_eq!(logged(&w), (108, 108, 108));
        // The first prediction logged for an id stays.
        for id in ["r5", "n3"] {
            let prediction: String = w
                .conn
                .query_row(
                    "SELECT prediction FROM predictions WHERE request_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .expect("logged");
            assert!(prediction.contains(r#""label":1"#), "{id}: {prediction}");
        }
    }

    /// Expired rows go first, then the oldest beyond the size cap, at most
    /// `EVICT_STEP` rows a sweep; the row and eviction counters follow what
    /// is in the log.
    #[test]
    fn sweeps_evict_expired_then_oldest_rows_a_step_at_a_time() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cap = 100;
        let (mut w, _, counters) = writer(dir.path(), cap);
        let now = now_ms();
        let at = |i: u64, created_ms: i64| {
            let mut r = record("m", 1, Role::Champion, &format!("r{i}"), 1);
            r.compare = false;
            r.created_ms = created_ms;
            r
        };
        // 10 rows past the one-hour retention, then EVICT_STEP + 140 fresh
        // ones, a millisecond apart.
        let fresh = EVICT_STEP + 140;
        let mut batch: Vec<_> = (0..10).map(|i| at(i, now - 7_200_000)).collect();
        batch.extend((0..fresh).map(|i| at(100 + i, now - 60_000 + i as i64)));
        w.write_predictions(&mut batch).expect("written");
        let logged = |w: &Writer| -> (u64, i64) {
            w.conn
                .query_row(
                    "SELECT COUNT(*), MIN(created_ms) FROM predictions",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("counted")
        };
        let counted = || {
            (
                counters.rows.load(Ordering::Relaxed),
                counters.evicted.load(Ordering::Relaxed),
            )
        };
        // One step: the 10 expired rows and EVICT_STEP - 10 of the oldest.
        w.sweep();
        assert!(w.sweep_pending);
        let left = fresh - (EVICT_STEP - 10);
        assert_eq!(logged(&w), (left, now - 60_000 + (EVICT_STEP - 10) as i64));
        assert_eq!(counted(), (left, EVICT_STEP));
        // The next step takes the log down to the cap: the newest rows stay.
        w.sweep();
        assert!(!w.sweep_pending);
        assert_eq!(logged(&w), (cap, now - 60_000 + (fresh - cap) as i64));
        assert_eq!(counted(), (cap, 10 + fresh - cap));
        // Nothing more to do.
        w.sweep();
        assert!(!w.sweep_pending);
        assert_eq!(counted(), (cap, 10 + fresh - cap));
    }

    /// A label joins the predictions still in the log: when the size cap
    /// evicted the served row (or the queue dropped it) and kept a shadow's,
    /// the label is accepted, joins the shadow alone (no pair), and says so.
    #[test]
    fn a_label_whose_served_row_is_gone_joins_the_rest() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, evaluator, _) = writer(dir.path(), 1_000_000);
        w.write_predictions(&mut vec![
            record("m", 1, Role::Champion, "a", 1),
            record("m", 2, Role::Shadow, "a", 1),
            record("m", 1, Role::Champion, "b", 1),
            record("m", 2, Role::Shadow, "b", 1),
        ])
        .expect("written");
        // What the sweep did: the served row gone, the shadow's kept.
        w.conn
            .execute(
                "DELETE FROM predictions WHERE request_id = 'a' AND served = 1",
                [],
            )
            .expect("deleted");
        let r = label(&mut w, "a", serde_json::json!(1));
        assert_eq!(r.status, FeedbackStatus::Accepted, "{r:?}");
        let message = r.message.as_deref().unwrap_or("");
        assert!(message.contains("joined to m@2;"), "{r:?}");
        assert!(message.contains("no longer in the prediction log"), "{r:?}");
        // The shadow has its outcome; no pair without the champion's row.
        assert_eq!(joined(&evaluator, 2), (1, 0));
        // With its served row, a label joins both models.
        let r = label(&mut w, "b", serde_json::json!(1));
        assert_eq!(r.status, FeedbackStatus::Accepted, "{r:?}");
        assert_eq!(r.message, None, "{r:?}");
        assert_eq!(joined(&evaluator, 2), (2, 1));
    }

    /// A request id used again: the later rows are not logged, counted as
    /// `duplicate_ids`; the first request's prediction is the one kept.
    #[test]
    fn a_reused_request_id_is_counted() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, _, counters) = writer(dir.path(), 1_000_000);
        w.write_predictions(&mut vec![record("m", 1, Role::Champion, "a", 1)])
            .expect("written");
        w.write_predictions(&mut vec![
            record("m", 1, Role::Champion, "a", 0),
            record("m", 1, Role::Champion, "b", 0),
        ])
        .expect("written");
        assert_eq!(counters.duplicate_ids.load(Ordering::Relaxed), 1);
        assert_eq!(counters.rows.load(Ordering::Relaxed), 2);
        let kept: String = w
            .conn
            .query_row(
                "SELECT prediction FROM predictions WHERE request_id = 'a'",
                [],
                |r| r.get(0),
            )
            .expect("logged");
        assert!(kept.contains("\"label\":1"), "{kept}");
    }

    /// A database this process may only read is refused at start, saying
    /// it is read-only (what `chmod a-w contender.db` does to a non-root
    /// user).
    #[test]
    fn a_read_only_database_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("contender.db");
        let conn = open(&path).expect("the store opens");
        prove_writable(&conn, &path).expect("a writable database passes");
        let ro = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opens read-only");
        let Err(StoreError::Sqlite { source, .. }) = prove_writable(&ro, &path) else {
            panic!("a read-only database passed");
        };
        let reason = unwritable_reason(&path, &source);
        assert!(reason.contains("read-only"), "{reason}");
    }

    /// While another connection holds the database, a batch of predictions
    /// is retried once, then counted as `write_failed` (not `dropped`), and
    /// a label answers `Unavailable` (503) with the reason; once the lock
    /// is released both work again.
    #[test]
    fn a_locked_database_fails_writes_visibly() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut w, _, counters) = writer(dir.path(), 1_000_000);
        w.conn
            .busy_timeout(Duration::from_millis(20))
            .expect("sets the timeout");
        let other = Connection::open(&w.path).expect("another connection");
        other.execute_batch("BEGIN EXCLUSIVE").expect("locks");
        w.buffer.push(record("m", 1, Role::Champion, "a", 1));
        w.buffer.push(record("m", 1, Role::Champion, "b", 1));
        w.flush();
        assert_eq!(counters.write_failed.load(Ordering::Relaxed), 2);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(counters.rows.load(Ordering::Relaxed), 0);
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let item = FeedbackItem {
            id: "a".to_owned(),
            row: 0,
            label: serde_json::json!(1),
        };
        w.feedback_group(vec![(("d".to_owned(), Vec::new(), vec![item]), reply)]);
        match rx.try_recv().expect("answered") {
            Err(StoreError::Unavailable(reason)) => {
                assert!(reason.contains("locked by another process"), "{reason}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        other.execute_batch("ROLLBACK").expect("unlocks");
        w.buffer.push(record("m", 1, Role::Champion, "c", 1));
        w.flush();
        assert_eq!(counters.rows.load(Ordering::Relaxed), 1);
        assert_eq!(
            label(&mut w, "c", serde_json::json!(1)).status,
            FeedbackStatus::Accepted
        );
    }
}
