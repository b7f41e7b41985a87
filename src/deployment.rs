//! Deployments and the models behind them: loading at start, readiness, and
//! the live set each deployment answers from.
//!
//! Each deployment holds its live set in an `ArcSwap`: a request takes one
//! `load_full()` snapshot and finishes on the model it started with, whatever
//! replaces the set meanwhile.

mod counters;
mod live;
mod loader;
pub mod promotion;
mod reset;
mod stats;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};

pub use live::{LiveSet, Member, MemberStats, MemberStatsSnapshot, compatible};
pub use loader::{LoadError, LoadedModel, dummy_batch, load_model};
pub use stats::{ModelStats, ModelStatsSnapshot};

use crate::config::{
    ChallengerConfig, ChallengerMode, Config, ConfigError, DeploymentConfig, DriftConfig, ModelRef,
    ModelSettings, Preload,
};
use crate::drift::monitor::{DriftMonitor, DriftState, Notice};
use crate::evaluation::Evaluator;
use crate::repository::{ModelEntry, Repository, RepositoryError};
use crate::store::{Store, StoreError, StoreSettings};
use crate::telemetry;

/// Where a model version stands.
#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    /// Not loaded, with the reason (load failure, or not preloaded).
    Unavailable(String),
}

impl ModelState {
    /// Triton's repository-index spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelState::Loading => "LOADING",
            ModelState::Ready(_) => "READY",
            ModelState::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// A deployment: its state (champion, challengers, routing) and the live
/// set built from it.
pub struct Deployment {
    pub name: String,
    pub name_arc: Arc<str>,
    state: Mutex<DeploymentConfig>,
    live: ArcSwapOption<LiveSet>,
    /// Counters of each member (see `counters`).
    member_stats: Mutex<HashMap<ModelRef, Arc<MemberStats>>>,
    /// Promotion bookkeeping, stored with the state.
    runtime: Mutex<Runtime>,
    /// Serialises changes (admin API, promotion); held across loading.
    changes: tokio::sync::Mutex<()>,
    /// Why each challenger of the state is not in the live set (load
    /// failure, still loading, incompatible, its workers could not start).
    down: Mutex<HashMap<ModelRef, String>>,
}

/// The champion before the last promotion, while it still shadows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub model: ModelRef,
    /// When it stops shadowing (ms since the epoch); `None` = until removed.
    pub until_ms: Option<i64>,
}

/// Promotion bookkeeping of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Runtime {
    pub previous: Option<Previous>,
    /// Models rolled back from: the policy does not promote them again
    /// (a person still can).
    pub blocked: Vec<ModelRef>,
    /// The last refusal reason per challenger (`model@version`), so a
    /// refusal is recorded once, not after every label.
    pub refused: BTreeMap<String, String>,
    /// The policy's current recommendation (manual mode).
    pub recommendation: Option<String>,
}

impl Deployment {
    fn new(name: &str, state: DeploymentConfig, runtime: Runtime) -> Deployment {
        Deployment {
            name: name.to_owned(),
            name_arc: Arc::from(name),
            state: Mutex::new(state),
            live: ArcSwapOption::empty(),
            member_stats: Mutex::new(HashMap::new()),
            runtime: Mutex::new(runtime),
            changes: tokio::sync::Mutex::new(()),
            down: Mutex::new(HashMap::new()),
        }
    }

    /// Why challenger `r` is not running, when it is not.
    pub fn down_reason(&self, r: &ModelRef) -> Option<String> {
        self.down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(r)
            .cloned()
    }

    /// Makes `live` the live set; `down` says why the challengers left out are.
    fn publish(&self, live: LiveSet, down: HashMap<ModelRef, String>) {
        self.live.store(Some(Arc::new(live)));
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = down;
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_runtime(&self, r: Runtime) {
        *self.runtime.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// The live set, or `None` while the champion is loading (or failed).
    pub fn live(&self) -> Option<Arc<LiveSet>> {
        self.live.load_full()
    }

    /// The deployment's current state.
    pub fn state(&self) -> DeploymentConfig {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, state: DeploymentConfig) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Counters of one member, kept across live-set changes and restarts.
    pub fn member_stats(&self, m: &ModelRef) -> Arc<MemberStats> {
        let mut map = self.member_stats.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(m.clone()).or_default())
    }
}

/// Why a change to a deployment was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the store keeps per deployment: the config entry it was seeded from
/// and the state now (after admin changes).
#[derive(Serialize, Deserialize)]
struct StoredDeployment {
    seed: DeploymentConfig,
    state: DeploymentConfig,
    #[serde(default)]
    runtime: Runtime,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type ModelTable = BTreeMap<String, BTreeMap<u64, ModelState>>;

/// The gateway's shared state.
pub struct Gateway {
    config: Config,
    /// The repository as last scanned (at start, and again when an admin
    /// change or the repository index asks for a version not known yet).
    repository: ArcSwap<Repository>,
    /// Serialises rescans of the repository.
    rescan: tokio::sync::Mutex<()>,
    /// Serialises model loads with each other and with unloads, so that one
    /// version is never loaded twice at once and an unload is never undone
    /// by a load finishing after it. Taken after a deployment's `changes`
    /// lock, never before.
    loading: tokio::sync::Mutex<()>,
    models: ArcSwap<ModelTable>,
    deployments: BTreeMap<String, Deployment>,
    ready: AtomicBool,
    store: Store,
    /// Deployments whose seed the store does not hold yet, with the audit
    /// record of the reset when a stored state was replaced by the config's.
    unsaved: Mutex<Vec<(String, Option<promotion::HistoryRecord>)>>,
    /// Names of deployments whose comparisons changed (taken by the policy task).
    policy: Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    drift: DriftMonitor,
    /// Drift notices to deliver (taken by the notifier task).
    notices: Mutex<Option<tokio::sync::mpsc::Receiver<Notice>>>,
}

fn missing_model(repository: &Repository, r: &ModelRef) -> Option<String> {
    if repository.get(&r.model, r.version).is_some() {
        return None;
    }
    let versions = repository.versions(&r.model);
    Some(if versions.is_empty() {
        let why = repository
            .problems()
            .iter()
            .find(|p| p.name.as_deref() == Some(&r.model))
            .map(|p| format!(" ({}: {})", p.path.display(), p.reason))
            .unwrap_or_default();
        format!(
            "model '{}' is not in the repository at {}{why}",
            r.model,
            repository.root().display()
        )
    } else {
        format!(
            "model '{}' has no valid version {} (valid versions: {versions:?})",
            r.model, r.version
        )
    })
}

/// Why a version found on disk after start is not loaded.
const NOT_LOADED_YET: &str = "not loaded: found in the repository after start; loaded when a deployment uses it or by POST /v2/repository/models/{name}/load";
/// Why a version unloaded on request is not loaded.
const UNLOADED: &str =
    "unloaded (POST /v2/repository/models/{name}/unload); POST …/load loads it again";

impl Gateway {
    /// Scans the repository, opens the store, and settles each deployment's
    /// state: the stored one when the config entry is unchanged since it was
    /// stored (so admin changes survive restarts), else the config's.
    /// Loads no model yet: see [`Gateway::load`].
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let repository = Repository::scan(&config.repository.path)?;
        for (name, d) in &config.deployments {
            if let Some(reason) = missing_model(&repository, &d.champion) {
                return Err(
                    ConfigError::new(format!("deployments.{name}.champion"), reason).into(),
                );
            }
            for (i, c) in d.challengers.iter().enumerate() {
                if let Some(reason) = missing_model(&repository, &c.model_ref()) {
                    return Err(ConfigError::new(
                        format!("deployments.{name}.challengers[{i}]"),
                        reason,
                    )
                    .into());
                }
            }
        }
        let evaluator = Arc::new(Evaluator::default());
        let (policy_tx, policy_rx) = tokio::sync::mpsc::channel(1024);
        let store = Store::open(
            &config.store.data_dir,
            StoreSettings {
                retention_ms: (config.store.retention_hours * 3_600_000.0) as i64,
                max_predictions: config.store.max_predictions,
                queue_capacity: config.store.queue_capacity,
                notify: Some(policy_tx),
            },
            Arc::clone(&evaluator),
        )
        .map_err(|e| match e {
            // Another contender, a lock held by another process, a
            // read-only database: refused before serving anything.
            StoreError::DataDir { reason, .. } => {
                StartError::Config(ConfigError::new("store.data_dir", reason))
            }
            other => other.into(),
        })?;
        let stored: HashMap<String, String> = store.load_deployments()?.into_iter().collect();
        let mut deployments = BTreeMap::new();
        let mut unsaved = Vec::new();
        let mut runtimes: HashMap<String, Runtime> = HashMap::new();
        for (name, seed) in &config.deployments {
            let parsed = stored
                .get(name)
                .map(|s| serde_json::from_str::<StoredDeployment>(s));
            let mut state = match &parsed {
                Some(Ok(s)) if &s.seed == seed => match usable(&repository, s.state.clone()) {
                    Ok(state) => {
                        runtimes.insert(name.clone(), s.runtime.clone());
                        state
                    }
                    Err(why) => {
                        tracing::warn!(deployment = %name, reason = %why, "stored state is not usable; starting from the config");
                        unsaved.push((name.clone(), Some(reset::state_unusable(s, seed, &why))));
                        seed.clone()
                    }
                },
                Some(Ok(s)) => {
                    // Recorded in the history with the state it replaces.
                    let record = reset::config_changed(s, seed);
                    tracing::warn!(deployment = %name, reason = %record.reason, "the config entry changed since the state was stored; starting from the config");
                    unsaved.push((name.clone(), Some(record)));
                    seed.clone()
                }
                Some(Err(e)) => {
                    tracing::warn!(deployment = %name, error = %e, "stored state is unreadable; starting from the config");
                    unsaved.push((
                        name.clone(),
                        Some(reset::state_unreadable(seed, &e.to_string())),
                    ));
                    seed.clone()
                }
                None => {
                    unsaved.push((name.clone(), None));
                    seed.clone()
                }
            };
            // A state stored before slices gets them laid out as routing
            // was then (fractions end to end in list order); one reset from
            // the config keeps the slices its canaries held.
            if let Some(Ok(s)) = &parsed {
                keep_slices(&mut state, &s.state);
            }
            crate::traffic::assign_slices(&mut state.challengers);
            evaluator.configure_comparison(name, &state.evaluation, &state.promotion);
            let runtime = runtimes.remove(name).unwrap_or_default();
            deployments.insert(name.clone(), Deployment::new(name, state, runtime));
        }
        store.restore()?;
        counters::restore(&deployments, store.member_stats()?);
        let drift_configs: BTreeMap<String, DriftConfig> = deployments
            .iter()
            .map(|(n, d)| (n.clone(), d.state().drift))
            .collect();
        let mut drift_states = HashMap::new();
        for (name, state) in store.drift_states()? {
            match serde_json::from_str::<DriftState>(&state) {
                Ok(s) => {
                    drift_states.insert(name, s);
                }
                Err(e) => {
                    tracing::warn!(deployment = %name, error = %e, "stored drift state is unreadable; starting afresh")
                }
            }
        }
        let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(256);
        let persist_store = store.clone();
        let drift = DriftMonitor::start(
            drift_configs
                .into_iter()
                .filter(|(_, c)| c.enabled)
                .collect(),
            drift_states,
            Arc::clone(&evaluator),
            Box::new(move |name, state, event| {
                let state = serde_json::to_string(state).expect("drift state serialises");
                let event = event.map(|e| e.to_string());
                if let Err(e) = persist_store.save_drift_blocking(name, state, event) {
                    tracing::error!(deployment = name, error = %e, "cannot store the drift state");
                }
            }),
            notice_tx,
        );
        let mut table = ModelTable::new();
        for entry in repository.entries() {
            let used = deployments.values().any(|d| {
                let s = d.state();
                is(&s.champion, entry) || s.challengers.iter().any(|c| is(&c.model_ref(), entry))
            });
            let state = if config.repository.preload == Preload::All || used {
                ModelState::Loading
            } else {
                ModelState::Unavailable("not loaded (repository.preload = \"deployed\")".into())
            };
            table
                .entry(entry.name.clone())
                .or_default()
                .insert(entry.version, state);
        }
        telemetry::models_ready().set(0.0);
        Ok(Gateway {
            config,
            repository: ArcSwap::from_pointee(repository),
            rescan: tokio::sync::Mutex::new(()),
            loading: tokio::sync::Mutex::new(()),
            models: ArcSwap::from_pointee(table),
            deployments,
            ready: AtomicBool::new(false),
            store,
            unsaved: Mutex::new(unsaved),
            policy: Mutex::new(Some(policy_rx)),
            drift,
            notices: Mutex::new(Some(notice_rx)),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn drift(&self) -> &DriftMonitor {
        &self.drift
    }

    /// Delivers drift notices (webhooks, retraining command) until the
    /// gateway is dropped.
    pub async fn run_notifier(self: Arc<Self>) {
        let Some(rx) = self
            .notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let configs = self
            .deployments
            .iter()
            .map(|(n, d)| (n.clone(), d.state().drift))
            .collect();
        crate::drift::notify::run(rx, configs).await;
    }

    pub fn evaluator(&self) -> &Arc<Evaluator> {
        self.store.evaluator()
    }

    /// Loads and warms every model to load — champions first, then
    /// challengers, then the rest — each on a blocking thread. The gateway
    /// turns ready once every champion is live; challengers join their live
    /// sets as they finish loading.
    pub async fn load(self: &Arc<Self>) {
        let pending: Vec<(String, Option<promotion::HistoryRecord>)> =
            std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, record) in pending {
            if let Some(d) = self.deployments.get(&name)
                && let Err(e) = self
                    .save(d, &d.state(), &d.runtime(), record.as_ref())
                    .await
            {
                tracing::error!(deployment = %name, error = %e, "cannot store the deployment's state");
            }
        }
        let repository = self.repository.load_full();
        let mut order: Vec<Arc<ModelEntry>> = Vec::new();
        let push = |order: &mut Vec<Arc<ModelEntry>>, r: &ModelRef| {
            if let Some(e) = repository.get(&r.model, r.version)
                && !order.iter().any(|o| Arc::ptr_eq(o, e))
            {
                order.push(Arc::clone(e));
            }
        };
        for d in self.deployments.values() {
            push(&mut order, &d.state().champion);
        }
        let champions = order.len();
        for d in self.deployments.values() {
            for c in d.state().challengers {
                push(&mut order, &c.model_ref());
            }
        }
        let deployed = order.len();
        for e in repository.entries() {
            if !order.iter().any(|o| Arc::ptr_eq(o, e))
                && matches!(self.state(&e.name, e.version), Some(ModelState::Loading))
            {
                order.push(Arc::clone(e));
            }
        }
        if champions == 0 {
            self.publish_all();
        }
        for (i, entry) in order.into_iter().enumerate() {
            self.load_one(entry).await;
            if i + 1 == champions || (i + 1 > champions && i < deployed) {
                self.publish_all();
            }
        }
    }

    /// Durably records a deployment's state (and an audit record).
    async fn save(
        &self,
        d: &Deployment,
        state: &DeploymentConfig,
        runtime: &Runtime,
        history: Option<&promotion::HistoryRecord>,
    ) -> Result<(), StoreError> {
        let seed = self
            .config
            .deployments
            .get(&d.name)
            .cloned()
            .unwrap_or_else(|| state.clone());
        let json = serde_json::to_string(&StoredDeployment {
            seed,
            state: state.clone(),
            runtime: runtime.clone(),
        })
        .expect("deployment state serialises");
        let history = history.map(|h| serde_json::to_string(h).expect("history records serialise"));
        self.store.save_deployment(&d.name, json, history).await
    }

    /// Loads and warms one version (unless another load finished it while
    /// this one waited its turn: that model is returned) and records it.
    async fn load_one(&self, entry: Arc<ModelEntry>) -> ModelState {
        let _loading = self.loading.lock().await;
        if let Some(ready @ ModelState::Ready(_)) = self.state(&entry.name, entry.version) {
            return ready;
        }
        let settings = self
            .config
            .models
            .get(&entry.name)
            .unwrap_or(&ModelSettings::default())
            .resolve(&entry.metadata.runtime, &self.config.runtime.defaults);
        let budget = self.config.runtime.inline_budget_us;
        let (name, version) = (entry.name.clone(), entry.version);
        let result = tokio::task::spawn_blocking(move || load_model(entry, settings, budget)).await;
        let state = match result {
            Ok(Ok(model)) => ModelState::Ready(Arc::new(model)),
            Ok(Err(e)) => {
                tracing::error!(model = %name, version, error = %e, "model failed to load");
                telemetry::load_failed(&name, version);
                ModelState::Unavailable(e.to_string())
            }
            Err(e) => {
                tracing::error!(model = %name, version, error = %e, "model loading panicked");
                telemetry::load_failed(&name, version);
                ModelState::Unavailable(format!("loading panicked: {e}"))
            }
        };
        self.models.rcu(|table| {
            let mut table = ModelTable::clone(table);
            table
                .entry(name.clone())
                .or_default()
                .insert(version, state.clone());
            table
        });
        state
    }

    /// Builds every deployment's live set from its state and what is loaded;
    /// ready once every champion is live.
    fn publish_all(&self) {
        let mut all = true;
        for d in self.deployments.values() {
            match self.build_live(d, &d.state(), false) {
                Ok((live, down)) => d.publish(live, down),
                Err(why) => {
                    all = false;
                    tracing::error!(deployment = %d.name, reason = %why, "the deployment cannot serve");
                }
            }
        }
        if all && !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                deployments = self.deployments.len(),
                "every champion is loaded and warmed: ready"
            );
        }
    }

    fn ready_model(&self, r: &ModelRef) -> Result<Arc<LoadedModel>, String> {
        match self.state(&r.model, r.version) {
            Some(ModelState::Ready(m)) => Ok(m),
            Some(ModelState::Loading) => Err(format!("{r} is loading")),
            Some(ModelState::Unavailable(why)) => Err(format!("{r} is unavailable: {why}")),
            None => Err(format!("{r} is not in the repository")),
        }
    }

    /// A live set for `state`, and why each challenger left out of it is
    /// (not loaded yet, failed to load, incompatible). With `strict`, a
    /// challenger whose worker threads cannot start fails the whole set
    /// (a change is refused); otherwise it is left out.
    fn build_live(
        &self,
        d: &Deployment,
        state: &DeploymentConfig,
        strict: bool,
    ) -> Result<(LiveSet, HashMap<ModelRef, String>), String> {
        let champion = self
            .ready_model(&state.champion)
            .map_err(|e| format!("champion {e}"))?;
        let has_canary = state
            .challengers
            .iter()
            .any(|c| c.mode == ChallengerMode::Canary);
        let champion = Arc::new(
            Member::new(champion, None, has_canary, d.member_stats(&state.champion))
                .map_err(|e| format!("champion {}: {e}", state.champion))?,
        );
        let mut challengers = Vec::new();
        let mut routes = Vec::new();
        let mut down = HashMap::new();
        for c in &state.challengers {
            let r = c.model_ref();
            match self.ready_model(&r) {
                Ok(m) => {
                    if let Err(why) =
                        compatible(champion.model.model().inputs(), m.model().inputs())
                    {
                        tracing::error!(deployment = %d.name, challenger = %r, reason = %why, "challenger left out: incompatible with the champion");
                        down.insert(r, format!("incompatible with the champion: {why}"));
                        continue;
                    }
                    match Member::new(m, Some(c.clone()), true, d.member_stats(&r)) {
                        Ok(member) => {
                            routes.push(crate::traffic::Lane::of(c));
                            challengers.push(Arc::new(member));
                        }
                        Err(e) if strict => return Err(format!("challenger {r}: {e}")),
                        Err(e) => {
                            tracing::error!(deployment = %d.name, challenger = %r, error = %e, "challenger left out: its workers cannot start");
                            down.insert(r, e.to_string());
                        }
                    }
                }
                Err(why) if why.ends_with("is loading") => {
                    tracing::debug!(deployment = %d.name, challenger = %r, "challenger joins once loaded");
                    down.insert(r, why);
                }
                Err(why) => {
                    tracing::warn!(deployment = %d.name, challenger = %r, reason = %why, "challenger is not live");
                    down.insert(r, why);
                }
            }
        }
        let live = LiveSet {
            champion,
            challengers,
            routes,
            routing: state.routing.clone(),
            drift: state.drift.enabled.then(|| {
                crate::drift::monitor::Sampling::new(
                    state.drift.sample_rate,
                    state.drift.max_rows_per_sec,
                )
            }),
        };
        Ok((live, down))
    }

    /// Makes sure a model version is loaded (loading it now if it was not
    /// preloaded) and returns it.
    /// A version the gateway does not know is looked for on disk first
    /// (one dropped into the repository since the last scan).
    async fn ensure_loaded(&self, r: &ModelRef) -> Result<Arc<LoadedModel>, ChangeError> {
        if self.state(&r.model, r.version).is_none() {
            self.refresh_repository().await;
        }
        match self.state(&r.model, r.version) {
            Some(ModelState::Ready(m)) => Ok(m),
            Some(ModelState::Loading) => Err(ChangeError::Unavailable(format!(
                "{r} is still loading; retry shortly"
            ))),
            None => Err(ChangeError::NotFound(
                missing_model(&self.repository.load(), r)
                    .unwrap_or_else(|| format!("{r} is not in the repository")),
            )),
            Some(ModelState::Unavailable(_)) => {
                let Some(entry) = self.repository.load().get(&r.model, r.version).cloned() else {
                    return Err(ChangeError::NotFound(format!(
                        "{r} is no longer in the repository"
                    )));
                };
                match self.load_one(entry).await {
                    ModelState::Ready(m) => Ok(m),
                    ModelState::Unavailable(why) => {
                        Err(ChangeError::Invalid(format!("{r} failed to load: {why}")))
                    }
                    ModelState::Loading => Err(ChangeError::Unavailable(format!("{r} is loading"))),
                }
            }
        }
    }

    /// Triton's repository `load`: looks at the repository on disk again,
    /// then loads and warms every version of `name` that is not loaded yet,
    /// so that it answers on `/v2/models/{name}/versions/{v}` and can join a
    /// deployment at once. Returns the versions now ready.
    pub async fn load_repository_model(&self, name: &str) -> Result<Vec<u64>, ChangeError> {
        self.refresh_repository().await;
        let versions = self.repository().versions(name);
        if versions.is_empty() {
            return Err(ChangeError::NotFound(format!(
                "model '{name}' is not in the repository ({}), or none of its versions is valid",
                self.config.repository.path.display()
            )));
        }
        let mut failed = Vec::new();
        for version in &versions {
            let r = ModelRef {
                model: name.to_owned(),
                version: *version,
            };
            if let Err(e) = self.ensure_loaded(&r).await {
                failed.push(e.to_string());
            }
        }
        if !failed.is_empty() {
            return Err(ChangeError::Invalid(failed.join("; ")));
        }
        Ok(versions)
    }

    /// Triton's repository `unload`: frees every loaded version of `name`
    /// (its state becomes UNAVAILABLE, "unloaded"; requests already running
    /// finish). Refused while a deployment uses any version of it (as
    /// champion or challenger): change the deployment first.
    /// Returns the versions unloaded.
    pub async fn unload_repository_model(&self, name: &str) -> Result<Vec<u64>, ChangeError> {
        if self.state_versions(name).is_empty() {
            return Err(ChangeError::NotFound(format!(
                "model '{name}' is not in the repository"
            )));
        }
        // No deployment change runs meanwhile (they take these in the same
        // order, one at a time).
        let mut guards = Vec::with_capacity(self.deployments.len());
        for d in self.deployments.values() {
            guards.push(d.changes.lock().await);
        }
        // No load runs meanwhile: one that started before this unload
        // finishes first (and is then unloaded), none writes READY after it.
        let _loading = self.loading.lock().await;
        let mut users = Vec::new();
        for d in self.deployments.values() {
            let state = d.state();
            let members = state.members();
            for r in members.filter(|r| r.model == name) {
                users.push(format!("{r} serves deployment '{}'", d.name));
            }
        }
        if !users.is_empty() {
            return Err(ChangeError::Invalid(format!(
                "model '{name}' cannot be unloaded: {}; remove or replace it there first",
                users.join(", ")
            )));
        }
        let mut unloaded = Vec::new();
        self.models.rcu(|table| {
            unloaded.clear();
            let mut table = ModelTable::clone(table);
            if let Some(versions) = table.get_mut(name) {
                for (version, state) in versions.iter_mut() {
                    if matches!(state, ModelState::Ready(_)) {
                        *state = ModelState::Unavailable(UNLOADED.into());
                        unloaded.push(*version);
                    }
                }
            }
            table
        });
        drop(guards);
        tracing::info!(model = %name, versions = ?unloaded, "model unloaded");
        Ok(unloaded)
    }

    /// The versions of `name` the gateway knows, in any state.
    fn state_versions(&self, name: &str) -> Vec<u64> {
        self.models
            .load()
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Adds a challenger: loads, validates and warms it before it takes
    /// traffic, stores the change (with who asked and why, for the history),
    /// then swaps the live set. A failure changes nothing.
    pub async fn add_challenger(
        &self,
        deployment: &str,
        c: ChallengerConfig,
        note: promotion::ChangeNote,
    ) -> Result<DeploymentConfig, ChangeError> {
        let d = self
            .deployment(deployment)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown deployment '{deployment}'")))?;
        let _guard = d.changes.lock().await;
        let mut state = d.state();
        state.challengers.push(c);
        // The newcomer takes the lowest free space; the others keep theirs.
        crate::traffic::assign_slices(&mut state.challengers);
        let c = state.challengers.last().cloned().expect("just pushed");
        state
            .validate(&format!("deployments.{deployment}"))
            .map_err(|e| ChangeError::Invalid(format!("{}: {}", e.key, e.reason)))?;
        let model = self.ensure_loaded(&c.model_ref()).await?;
        let champion = self
            .ready_model(&state.champion)
            .map_err(ChangeError::Unavailable)?;
        compatible(champion.model().inputs(), model.model().inputs()).map_err(|why| {
            ChangeError::Invalid(format!(
                "{} cannot challenge {}: {why}",
                c.model_ref(),
                state.champion
            ))
        })?;
        let record = promotion::challenger_change("challenger_added", note, &c, &d.state());
        self.apply_with(d, state, d.runtime(), Some(&record)).await
    }

    /// Removes a challenger; its in-flight mirrored requests finish. Its
    /// traffic counters go with it (added again, it starts from zero).
    pub async fn remove_challenger(
        &self,
        deployment: &str,
        r: &ModelRef,
        note: promotion::ChangeNote,
    ) -> Result<DeploymentConfig, ChangeError> {
        let d = self
            .deployment(deployment)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown deployment '{deployment}'")))?;
        let _guard = d.changes.lock().await;
        let mut state = d.state();
        let Some(removed) = state
            .challengers
            .iter()
            .find(|c| &c.model_ref() == r)
            .cloned()
        else {
            return Err(ChangeError::NotFound(format!(
                "{r} is not a challenger of '{deployment}'"
            )));
        };
        state.challengers.retain(|c| &c.model_ref() != r);
        let record = promotion::challenger_change("challenger_removed", note, &removed, &d.state());
        let mut runtime = d.runtime();
        if runtime.previous.as_ref().is_some_and(|p| &p.model == r) {
            runtime.previous = None;
        }
        self.apply_with(d, state, runtime, Some(&record)).await
    }

    /// Stores `state`, `runtime` and the audit record in one transaction,
    /// then swaps the live set in one atomic step: requests in flight finish
    /// on the set they started with. Models that left the deployment lose
    /// their traffic counters.
    async fn apply_with(
        &self,
        d: &Deployment,
        state: DeploymentConfig,
        runtime: Runtime,
        history: Option<&promotion::HistoryRecord>,
    ) -> Result<DeploymentConfig, ChangeError> {
        let mut state = state;
        crate::traffic::assign_slices(&mut state.challengers);
        let (live, down) = self
            .build_live(d, &state, true)
            .map_err(ChangeError::Unavailable)?;
        self.save(d, &state, &runtime, history).await?;
        d.set_state(state.clone());
        d.set_runtime(runtime);
        d.publish(live, down);
        d.retain_member_stats(&state);
        Ok(state)
    }

    /// Ready once every deployment's champion is loaded and warmed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The repository as last scanned.
    pub fn repository(&self) -> Arc<Repository> {
        self.repository.load_full()
    }

    /// Looks at the repository on disk again. Versions dropped in since the
    /// last scan are read and validated as at start and become known (not
    /// loaded: the admin change that uses one loads and warms it); versions
    /// gone from disk are forgotten unless loaded (or loading). A repository
    /// that cannot be read changes nothing (logged).
    pub async fn refresh_repository(&self) {
        let _guard = self.rescan.lock().await;
        let keep: HashSet<(String, u64)> = self
            .model_states()
            .into_iter()
            .filter(|(_, _, s)| !matches!(s, ModelState::Unavailable(_)))
            .map(|(name, version, _)| (name, version))
            .collect();
        let current = self.repository.load_full();
        let scanned = tokio::task::spawn_blocking(move || {
            current.rescan(|e| keep.contains(&(e.name.clone(), e.version)))
        })
        .await;
        let repository = match scanned {
            Ok(Ok(r)) => Arc::new(r),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot rescan the model repository");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "rescanning the model repository panicked");
                return;
            }
        };
        self.repository.store(Arc::clone(&repository));
        self.models.rcu(|table| {
            // Loaded and loading versions stay; the others stay while on disk.
            let mut next = ModelTable::new();
            for (name, versions) in table.iter() {
                for (&version, state) in versions {
                    if !matches!(state, ModelState::Unavailable(_))
                        || repository.get(name, version).is_some()
                    {
                        next.entry(name.clone())
                            .or_default()
                            .insert(version, state.clone());
                    }
                }
            }
            for e in repository.entries() {
                next.entry(e.name.clone())
                    .or_default()
                    .entry(e.version)
                    .or_insert_with(|| ModelState::Unavailable(NOT_LOADED_YET.into()));
            }
            next
        });
    }

    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.get(name)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// State of one model version; `None` when the repository has no such version.
    pub fn state(&self, name: &str, version: u64) -> Option<ModelState> {
        self.models.load().get(name)?.get(&version).cloned()
    }

    /// The newest ready version of `name` (Triton's "latest" policy).
    pub fn latest_ready(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models
            .load()
            .get(name)?
            .values()
            .rev()
            .find_map(|s| match s {
                ModelState::Ready(m) => Some(Arc::clone(m)),
                _ => None,
            })
    }

    /// Every model version and its state, by name then version.
    pub fn model_states(&self) -> Vec<(String, u64, ModelState)> {
        let table = self.models.load();
        table
            .iter()
            .flat_map(|(name, versions)| {
                versions
                    .iter()
                    .map(move |(v, s)| (name.clone(), *v, s.clone()))
            })
            .collect()
    }
}

/// A stored state whose models all exist in the repository (challengers that
/// no longer exist, or whose settings are out of bounds, are dropped).
fn usable(
    repository: &Repository,
    mut state: DeploymentConfig,
) -> Result<DeploymentConfig, String> {
    if let Some(why) = missing_model(repository, &state.champion) {
        return Err(format!("its champion is gone: {why}"));
    }
    state.challengers.retain(|c| match missing_model(repository, &c.model_ref()).or_else(|| {
        // Stored before the settings had upper bounds.
        c.validate("challenger")
            .err()
            .map(|e| format!("{}: {}", e.key, e.reason))
    }) {
        Some(why) => {
            tracing::warn!(challenger = %c.model_ref(), reason = %why, "dropping a stored challenger");
            false
        }
        None => true,
    });
    Ok(state)
}

/// Gives each canary of `state` without a slice the one the same canary
/// holds in `before`, so that a config reset keeps its users (resized to
/// its fraction by `traffic::assign_slices`).
fn keep_slices(state: &mut DeploymentConfig, before: &DeploymentConfig) {
    for c in &mut state.challengers {
        if c.mode == ChallengerMode::Canary
            && c.slice.is_empty()
            && let Some(b) = before
                .challengers
                .iter()
                .find(|b| b.model_ref() == c.model_ref() && b.mode == ChallengerMode::Canary)
        {
            c.slice = b.slice.clone();
        }
    }
}

fn is(r: &ModelRef, e: &ModelEntry) -> bool {
    r.model == e.name && r.version == e.version
}
