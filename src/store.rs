//! Durable state in an embedded SQLite database (WAL mode) under
//! `store.data_dir`: deployments, the prediction log, labels, the
//! evaluation state derived from them, and each member's traffic counters.
//!
//! One writer thread owns the write connection. Predictions reach it through
//! a bounded queue and are written in batches (synchronous = NORMAL: a
//! process crash loses nothing committed); when the queue is full a request's
//! predictions are dropped and counted, never waited for. Feedback and
//! deployment changes go through a second bounded queue and are committed
//! with synchronous = FULL before the caller is answered: a 2xx means the
//! label or the change is on disk. Because the same thread writes both, a
//! label always sees every prediction queued before it; a prediction written
//! after its row's label (a shadow answering late, a canary deployment's
//! mirrored champion copy) is joined to that label when it is written.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Sender, TrySendError};
use rusqlite::params;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::evaluation::Evaluator;
use crate::evaluation::metrics::{MetricsState, Outcome};
use crate::evaluation::prediction::Prediction;

pub use writer::SCHEMA_VERSION;

/// A model's part in a deployment when it predicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Champion,
    Shadow,
    Canary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Shadow => "shadow",
            Role::Canary => "canary",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Champion, Role::Shadow, Role::Canary]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// One row's prediction by one model, for the prediction log.
#[derive(Clone, Debug)]
pub struct PredictionRecord {
    pub deployment: Arc<str>,
    pub request_id: Arc<str>,
    pub row: u32,
    pub model: Arc<str>,
    pub version: u64,
    pub role: Role,
    /// Whether this answer went back to the caller.
    pub served: bool,
    pub segment: Option<Arc<str>>,
    pub created_ms: i64,
    pub latency_us: u32,
    pub prediction: Prediction,
    /// Whether other models may predict for the same request (the
    /// deployment has challengers): only then is agreement looked up.
    pub compare: bool,
}

/// One posted label.
#[derive(Clone, Debug)]
pub struct FeedbackItem {
    pub id: String,
    pub row: u32,
    pub label: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackStatus {
    /// Stored and joined to every model's prediction.
    Accepted,
    /// The same label was already stored; counted once.
    Duplicate,
    /// A different label is already stored for this id; refused.
    Conflict,
    /// No prediction for this id and row: never served in this deployment,
    /// or its rows were deleted (retention, the size cap) and the id cannot
    /// be dated (an id the application chose).
    UnknownId,
    /// The id's predictions are older than the retention window: dated by
    /// the logged rows, or once they are deleted by a contender-generated
    /// id (UUID v7).
    Expired,
    /// The label does not fit the model's task.
    Invalid,
}

#[derive(Clone, Debug, Serialize)]
pub struct FeedbackResult {
    pub id: String,
    pub row: u32,
    pub status: FeedbackStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is busy ({0} writes waiting); retry")]
    Busy(usize),
    #[error("the store's writer has stopped")]
    Stopped,
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot be written (locked by another process, read-only,
    /// the disk full, an I/O error): nothing was stored; retry later.
    #[error("the store cannot be written: {0}")]
    Unavailable(String),
    /// At start: the data directory cannot be used (another contender holds
    /// it, the database is locked or read-only, ...).
    #[error("{reason}")]
    DataDir { path: String, reason: String },
}

pub(crate) enum Control {
    Feedback {
        deployment: String,
        class_names: Vec<String>,
        items: Vec<FeedbackItem>,
        reply: oneshot::Sender<Result<Vec<FeedbackResult>, StoreError>>,
    },
    SaveDeployment {
        name: String,
        state: String,
        history: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// Write what is queued, close the database and stop the writer; the
    /// reply comes once the connection is closed.
    Close {
        reply: oneshot::Sender<()>,
    },
    SaveDrift {
        deployment: String,
        state: String,
        event: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SaveMemberStats {
        /// Per deployment, every member's counters: they replace the
        /// deployment's stored rows.
        deployments: Vec<(String, Vec<StoredMemberStats>)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Traffic counters of one model in one deployment (see
/// `deployment::MemberStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub served: u64,
    pub mirrored: u64,
    pub dropped: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub rejected: u64,
    pub completed: u64,
}

/// One member's counters as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMemberStats {
    pub model: String,
    pub version: u64,
    pub counts: MemberCounts,
    /// The engine-time histogram (JSON, opaque to the store).
    pub latency: Option<String>,
}

/// Counters shared with the writer thread.
#[derive(Default, Debug)]
pub struct StoreCounters {
    /// Predictions dropped because the write queue was full.
    pub dropped: AtomicU64,
    /// Predictions lost because writing them failed (twice: the write is
    /// retried once).
    pub write_failed: AtomicU64,
    /// Predictions not logged because their request id (with row, model and
    /// version) was already in the log: the first request's are kept.
    pub duplicate_ids: AtomicU64,
    /// Predictions evicted by retention or the size cap.
    pub evicted: AtomicU64,
    /// Predictions currently in the log.
    pub rows: AtomicU64,
}

/// Handle to the store; cheap to clone and share.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    predictions: Sender<Vec<PredictionRecord>>,
    control: Sender<Control>,
    counters: Arc<StoreCounters>,
    evaluator: Arc<Evaluator>,
    /// The data directory's lock (`contender.lock`), held while this store
    /// serves; [`Store::close`] releases it.
    lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

/// Persisted evaluation state of one model in one deployment.
pub struct StoredModelEval {
    pub deployment: String,
    pub model: String,
    pub version: u64,
    pub state: Option<MetricsState>,
    pub agree: u64,
    pub compared: u64,
    pub predictions: u64,
}

/// Settings the writer needs.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub retention_ms: i64,
    pub max_predictions: u64,
    pub queue_capacity: usize,
    /// Told the deployment's name when its comparisons changed.
    pub notify: Option<tokio::sync::mpsc::Sender<String>>,
}

impl Store {
    /// Opens (creating when needed) `<data_dir>/contender.db` and starts the
    /// writer thread. Call [`Store::restore`] once the evaluator knows each
    /// deployment's window, before any traffic.
    pub fn open(
        data_dir: &Path,
        settings: StoreSettings,
        evaluator: Arc<Evaluator>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.display().to_string(),
            source,
        })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join("contender.db");
        let unusable = |e: StoreError| match e {
            StoreError::Sqlite { source, .. } => StoreError::DataDir {
                path: data_dir.display().to_string(),
                reason: writer::unwritable_reason(&path, &source),
            },
            other => other,
        };
        let conn = writer::open_with(&path, STARTUP_BUSY_TIMEOUT).map_err(unusable)?;
        writer::prove_writable(&conn, &path).map_err(unusable)?;
        let counters = Arc::new(StoreCounters::default());
        let (ptx, prx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        let (ctx, crx) = crossbeam_channel::bounded(1024);
        let w = writer::Writer::new(
            conn,
            path.clone(),
            settings,
            Arc::clone(&evaluator),
            Arc::clone(&counters),
        );
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(prx, crx))
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Store {
            path,
            predictions: ptx,
            control: ctx,
            counters,
            evaluator,
            lock: Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }

    /// Writes every prediction queued so far, stops the writer (closing the
    /// database), then releases the data directory's lock, so that another
    /// contender may use it (a graceful shutdown, before exit). Predictions
    /// logged after this are dropped (counted); while the writer is still
    /// running, the lock is kept.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::Close { reply })?;
        rx.await.map_err(|_| StoreError::Stopped)?;
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    /// Rebuilds the evaluation state from what is stored.
    pub fn restore(&self) -> Result<(), StoreError> {
        let conn = writer::open(&self.path)?;
        writer::restore(&conn, &self.path, &self.evaluator, &self.counters)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn evaluator(&self) -> &Arc<Evaluator> {
        &self.evaluator
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Queues one request's predictions; never waits. Returns false (and
    /// counts the drop) when the queue is full.
    pub fn log_predictions(&self, records: Vec<PredictionRecord>) -> bool {
        if records.is_empty() {
            return true;
        }
        let n = records.len() as u64;
        match self.predictions.try_send(records) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                crate::telemetry::predictions_dropped(n);
                false
            }
        }
    }

    fn send(&self, c: Control) -> Result<(), StoreError> {
        self.control.try_send(c).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Busy(self.control.len()),
            TrySendError::Disconnected(_) => StoreError::Stopped,
        })
    }

    /// Stores labels durably and joins them to the logged predictions.
    pub async fn feedback(
        &self,
        deployment: &str,
        class_names: Vec<String>,
        items: Vec<FeedbackItem>,
    ) -> Result<Vec<FeedbackResult>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::Feedback {
            deployment: deployment.to_owned(),
            class_names,
            items,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Durably records a deployment's state (JSON) and, in the same
    /// transaction, an audit record (JSON) when given.
    pub async fn save_deployment(
        &self,
        name: &str,
        state: String,
        history: Option<String>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::SaveDeployment {
            name: name.to_owned(),
            state,
            history,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Durably records a deployment's drift state and an event, from a
    /// plain thread (blocks until written).
    pub fn save_drift_blocking(
        &self,
        deployment: &str,
        state: String,
        event: Option<String>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::SaveDrift {
            deployment: deployment.to_owned(),
            state,
            event,
            reply,
        })?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }

    /// Replaces the stored traffic counters of each deployment given with
    /// its members' (one transaction, `synchronous = NORMAL`: a process crash
    /// loses nothing committed). Waits for the writer, so call it off the
    /// request path.
    pub async fn save_member_stats(
        &self,
        deployments: Vec<(String, Vec<StoredMemberStats>)>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::SaveMemberStats { deployments, reply })?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Every stored member's traffic counters, with its deployment.
    pub fn member_stats(&self) -> Result<Vec<(String, StoredMemberStats)>, StoreError> {
        let conn = writer::open(&self.path)?;
        let err = sqlite_err(&self.path);
        let mut stmt = conn
            .prepare(
                "SELECT deployment, model, version, served, mirrored, dropped, errors, timeouts,
                        rejected, completed, latency
                 FROM member_stats ORDER BY deployment, model, version",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StoredMemberStats {
                        model: r.get(1)?,
                        version: r.get(2)?,
                        counts: MemberCounts {
                            served: r.get(3)?,
                            mirrored: r.get(4)?,
                            dropped: r.get(5)?,
                            errors: r.get(6)?,
                            timeouts: r.get(7)?,
                            rejected: r.get(8)?,
                            completed: r.get(9)?,
                        },
                        latency: r.get(10)?,
                    },
                ))
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        Ok(rows)
    }

    /// Every stored drift state (deployment, JSON).
    pub fn drift_states(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = writer::open(&self.path)?;
        let err = sqlite_err(&self.path);
        let mut stmt = conn
            .prepare("SELECT deployment, state FROM drift")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        Ok(rows)
    }

    /// A deployment's audit trail, oldest first (time in ms, record JSON).
    pub fn history(&self, deployment: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = writer::open(&self.path)?;
        let err = sqlite_err(&self.path);
        let mut stmt = conn
            .prepare("SELECT at_ms, record FROM history WHERE deployment = ?1 ORDER BY seq")
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![deployment], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        Ok(rows)
    }

    /// Waits until every prediction queued so far is written.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::Flush { reply })?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Reads every stored deployment state (name, JSON).
    pub fn load_deployments(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = writer::open(&self.path)?;
        let err = |source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        };
        let mut stmt = conn
            .prepare("SELECT name, state FROM deployments ORDER BY name")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(rows)
    }
}

/// How long start-up waits for a database another process holds before it
/// refuses to start.
const STARTUP_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The lock file in the data directory: held by the contender using it.
pub const LOCK_FILE: &str = "contender.lock";

/// Takes the data directory's exclusive advisory lock (`contender.lock`,
/// which then holds this process's id), or says who holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let refused = |reason: String| StoreError::DataDir {
        path: data_dir.display().to_string(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| refused(format!("cannot open the lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("another process (pid {pid})"),
            };
            return Err(refused(format!(
                "the data directory {} is in use: {holder} holds its lock {}; \
                 stop it, or give this contender its own store.data_dir",
                data_dir.display(),
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(refused(format!("cannot lock {}: {e}", path.display())));
        }
    }
    // Who holds it, for the message of a contender refused.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// Parses a stored outcome.
pub(crate) fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("outcome {s:?}: {e}")))
}

pub(crate) fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}
