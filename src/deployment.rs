//! Deployments and the models behind them: loading at start, readiness, and
//! the live set each deployment answers from.
//!
//! Each deployment holds its live set in an `ArcSwap`: a request takes one
//! `load_full()` snapshot and finishes on the model it started with, whatever
//! replaces the set meanwhile.

mod loader;
mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};

pub use loader::{LoadError, LoadedModel, dummy_batch, load_model};
pub use stats::{ModelStats, ModelStatsSnapshot};

use crate::config::{Config, ConfigError, ModelRef, ModelSettings, Preload};
use crate::repository::{ModelEntry, Repository, RepositoryError};
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

/// What a deployment answers with right now.
pub struct LiveSet {
    pub champion: Arc<LoadedModel>,
}

pub struct Deployment {
    pub name: String,
    pub champion: ModelRef,
    live: ArcSwapOption<LiveSet>,
}

impl Deployment {
    /// The live set, or `None` while the champion is loading (or failed).
    pub fn live(&self) -> Option<Arc<LiveSet>> {
        self.live.load_full()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

type ModelTable = BTreeMap<String, BTreeMap<u64, ModelState>>;

/// The gateway's shared state.
pub struct Gateway {
    config: Config,
    repository: Repository,
    models: ArcSwap<ModelTable>,
    deployments: BTreeMap<String, Deployment>,
    ready: AtomicBool,
}

impl Gateway {
    /// Scans the repository and checks every deployment's champion exists.
    /// Loads nothing yet: see [`Gateway::load`].
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let repository = Repository::scan(&config.repository.path)?;
        let mut deployments = BTreeMap::new();
        for (name, d) in &config.deployments {
            let champion = &d.champion;
            if repository.get(&champion.model, champion.version).is_none() {
                let versions = repository.versions(&champion.model);
                let reason = if versions.is_empty() {
                    let why = repository
                        .problems()
                        .iter()
                        .find(|p| p.name.as_deref() == Some(&champion.model))
                        .map(|p| format!(" ({}: {})", p.path.display(), p.reason))
                        .unwrap_or_default();
                    format!(
                        "model '{}' is not in the repository at {}{why}",
                        champion.model,
                        repository.root().display()
                    )
                } else {
                    format!(
                        "model '{}' has no valid version {} (valid versions: {versions:?})",
                        champion.model, champion.version
                    )
                };
                return Err(
                    ConfigError::new(format!("deployments.{name}.champion"), reason).into(),
                );
            }
            deployments.insert(
                name.clone(),
                Deployment {
                    name: name.clone(),
                    champion: champion.clone(),
                    live: ArcSwapOption::empty(),
                },
            );
        }
        let mut table = ModelTable::new();
        for entry in repository.entries() {
            let state = if config.repository.preload == Preload::All
                || deployments.values().any(|d| is(&d.champion, entry))
            {
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
            repository,
            models: ArcSwap::from_pointee(table),
            deployments,
            ready: AtomicBool::new(false),
        })
    }

    /// Loads and warms every model to load, champions first, each on a
    /// blocking thread. The gateway turns ready once every champion is live.
    pub async fn load(self: &Arc<Self>) {
        let mut order: Vec<Arc<ModelEntry>> = Vec::new();
        for d in self.deployments.values() {
            if let Some(e) = self.repository.get(&d.champion.model, d.champion.version)
                && !order.iter().any(|o| Arc::ptr_eq(o, e))
            {
                order.push(Arc::clone(e));
            }
        }
        let champions = order.len();
        for e in self.repository.entries() {
            if !order.iter().any(|o| Arc::ptr_eq(o, e))
                && matches!(self.state(&e.name, e.version), Some(ModelState::Loading))
            {
                order.push(Arc::clone(e));
            }
        }
        for (i, entry) in order.into_iter().enumerate() {
            self.load_one(entry).await;
            if i + 1 == champions {
                self.publish_champions();
            }
        }
        if champions == 0 {
            self.publish_champions();
        }
    }

    async fn load_one(&self, entry: Arc<ModelEntry>) {
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
    }

    fn publish_champions(&self) {
        let mut all = true;
        for d in self.deployments.values() {
            match self.state(&d.champion.model, d.champion.version) {
                Some(ModelState::Ready(m)) => d.live.store(Some(Arc::new(LiveSet { champion: m }))),
                _ => {
                    all = false;
                    tracing::error!(deployment = %d.name, champion = %d.champion, "champion is not available; the deployment cannot serve");
                }
            }
        }
        if all {
            self.ready.store(true, Ordering::Release);
            tracing::info!(
                deployments = self.deployments.len(),
                "every champion is loaded and warmed: ready"
            );
        }
    }

    /// Ready once every deployment's champion is loaded and warmed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
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

fn is(r: &ModelRef, e: &ModelEntry) -> bool {
    r.model == e.name && r.version == e.version
}
