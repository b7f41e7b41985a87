//! In-memory evaluation state per deployment and model: windowed metrics,
//! agreement with the champion, label coverage. The store's writer thread
//! updates it after each durable write and rebuilds it at start-up, so what
//! it says after a restart equals what it said before.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use super::metrics::{MetricKind, MetricsSnapshot, MetricsState, Outcome, WindowedMetrics};
use super::sequential::{Decision, Evidence, LossKind, SequentialTest, TestConfig};
use crate::config::{EvaluationConfig, PromotionConfig};

/// A model version within a deployment.
pub type ModelKey = (String, u64);

pub fn key_label(k: &ModelKey) -> String {
    format!("{}@{}", k.0, k.1)
}

#[derive(Clone, Debug, Default)]
pub struct ModelEval {
    metrics: Option<WindowedMetrics>,
    /// Rows where this model and the champion both predicted and agreed.
    pub agree: u64,
    /// Rows where this model and the champion both predicted.
    pub compared: u64,
    /// Rows this model predicted (logged).
    pub predictions: u64,
}

impl ModelEval {
    pub fn cumulative_state(&self) -> Option<&MetricsState> {
        self.metrics.as_ref().map(WindowedMetrics::cumulative_state)
    }
}

/// The paired comparison of one challenger with one champion, overall and
/// per segment.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Comparison {
    pub metric: MetricKind,
    pub overall: SequentialTest,
    pub segments: BTreeMap<String, SequentialTest>,
}

/// (champion, challenger).
pub type PairKey = (ModelKey, ModelKey);

#[derive(Clone, Debug, Serialize)]
pub struct SegmentEvidence {
    pub segment: String,
    #[serde(flatten)]
    pub evidence: Evidence,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComparisonSnapshot {
    pub champion: String,
    pub challenger: String,
    #[serde(skip)]
    pub key: PairKey,
    pub metric: MetricKind,
    #[serde(flatten)]
    pub overall: Evidence,
    pub segments: Vec<SegmentEvidence>,
}

#[derive(Clone, Debug, Default)]
pub struct DeploymentEval {
    window: usize,
    evaluation: EvaluationConfig,
    test: TestConfig,
    pub comparisons: BTreeMap<PairKey, Comparison>,
    pub models: BTreeMap<ModelKey, ModelEval>,
    /// Rows the deployment answered (its served predictions).
    pub rows_served: u64,
    /// Rows that received a label.
    pub rows_labelled: u64,
}

/// Everything a person or a policy reads about one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelEvalSnapshot {
    pub model: String,
    pub version: u64,
    pub predictions: u64,
    pub labelled: u64,
    pub window: MetricsSnapshot,
    pub cumulative: MetricsSnapshot,
    pub agreement_with_champion: Option<f64>,
    pub compared_with_champion: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeploymentEvalSnapshot {
    pub rows_served: u64,
    pub rows_labelled: u64,
    /// Share of served rows that have a label.
    pub label_coverage: Option<f64>,
    pub window_labels: usize,
    pub models: Vec<ModelEvalSnapshot>,
    pub comparisons: Vec<ComparisonSnapshot>,
}

/// Shared evaluation state. Locked briefly by the writer thread and by
/// readers; never held across an `.await`.
#[derive(Default)]
pub struct Evaluator {
    inner: Mutex<HashMap<String, DeploymentEval>>,
}

impl Evaluator {
    fn with<T>(&self, deployment: &str, f: impl FnOnce(&mut DeploymentEval) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get_mut(deployment) {
            return f(d);
        }
        let d = map
            .entry(deployment.to_owned())
            .or_insert_with(|| DeploymentEval {
                window: 1000,
                ..DeploymentEval::default()
            });
        f(d)
    }

    /// A deployment's window size.
    pub fn window(&self, deployment: &str) -> usize {
        self.with(deployment, |d| d.window)
    }

    /// Sets a deployment's window size (before any restore).
    pub fn configure(&self, deployment: &str, window: usize) {
        self.with(deployment, |d| d.window = window.max(1));
    }

    /// Sets how a deployment's challengers are compared (new comparisons use it).
    pub fn configure_comparison(
        &self,
        deployment: &str,
        evaluation: &EvaluationConfig,
        promotion: &PromotionConfig,
    ) {
        self.with(deployment, |d| {
            d.window = evaluation.window_labels.max(1);
            d.evaluation = evaluation.clone();
            d.test = TestConfig {
                alpha: promotion.alpha,
                min_effect: promotion.min_effect,
                min_pairs: promotion.min_pairs,
            };
        });
    }

    /// Adds one labelled row both models answered to their comparison.
    /// Returns false when the outcomes give no loss for the metric.
    pub fn add_pair(
        &self,
        deployment: &str,
        key: &PairKey,
        segment: Option<&str>,
        champion: &Outcome,
        challenger: &Outcome,
    ) -> bool {
        self.with(deployment, |d| {
            let classification = matches!(champion, Outcome::Class { .. });
            let metric = d.evaluation.metric_for(classification);
            let (Some(lc), Some(lx)) = (champion.loss(metric), challenger.loss(metric)) else {
                return false;
            };
            let kind = match metric {
                MetricKind::Accuracy => LossKind::ZeroOne,
                other => LossKind::Bounded {
                    max: d.evaluation.cap_for(other),
                },
            };
            let test = d.test;
            let c = d
                .comparisons
                .entry(key.clone())
                .or_insert_with(|| Comparison {
                    metric,
                    overall: SequentialTest::new(kind, test),
                    segments: BTreeMap::new(),
                });
            c.overall.observe(lc, lx);
            if let Some(seg) = segment {
                c.segments
                    .entry(seg.to_owned())
                    .or_insert_with(|| SequentialTest::new(kind, test))
                    .observe(lc, lx);
            }
            true
        })
    }

    pub fn comparison_states(
        &self,
        deployment: &str,
        keys: &[PairKey],
    ) -> Vec<(PairKey, Comparison)> {
        self.with(deployment, |d| {
            keys.iter()
                .filter_map(|k| d.comparisons.get(k).map(|c| (k.clone(), c.clone())))
                .collect()
        })
    }

    pub fn restore_comparison(&self, deployment: &str, key: PairKey, c: Comparison) {
        self.with(deployment, |d| {
            d.comparisons.insert(key, c);
        });
    }

    /// The segment-level minimum of pairs for guardrails.
    pub fn segment_min_pairs(&self, deployment: &str) -> u64 {
        self.with(deployment, |d| d.evaluation.segment_min_pairs)
    }

    /// Evidence of every comparison of a deployment.
    pub fn comparisons(&self, deployment: &str) -> Vec<ComparisonSnapshot> {
        self.with(deployment, |d| {
            d.comparisons.iter().map(|(k, c)| snapshot(k, c)).collect()
        })
    }

    pub fn add_predictions(&self, deployment: &str, key: &ModelKey, rows: u64, served: bool) {
        self.with(deployment, |d| {
            d.models.entry(key.clone()).or_default().predictions += rows;
            if served {
                d.rows_served += rows;
            }
        });
    }

    /// `compared` rows where the challenger and the champion both predicted,
    /// `agreed` of them the same.
    pub fn add_comparisons(
        &self,
        deployment: &str,
        challenger: &ModelKey,
        agreed: u64,
        compared: u64,
    ) {
        self.with(deployment, |d| {
            let m = d.models.entry(challenger.clone()).or_default();
            m.compared += compared;
            m.agree += agreed;
        });
    }

    pub fn add_outcome(&self, deployment: &str, key: &ModelKey, outcome: Outcome) {
        self.with(deployment, |d| {
            let window = d.window;
            let m = d.models.entry(key.clone()).or_default();
            m.metrics
                .get_or_insert_with(|| WindowedMetrics::new(template(&outcome), window))
                .add(outcome);
        });
    }

    pub fn add_labelled(&self, deployment: &str, rows: u64) {
        self.with(deployment, |d| d.rows_labelled += rows);
    }

    /// Copies of the persisted parts of some models (for the store to write).
    pub fn model_evals(&self, deployment: &str, keys: &[ModelKey]) -> Vec<(ModelKey, ModelEval)> {
        self.with(deployment, |d| {
            keys.iter()
                .filter_map(|k| d.models.get(k).map(|m| (k.clone(), m.clone())))
                .collect()
        })
    }

    pub fn counters(&self, deployment: &str) -> (u64, u64) {
        self.with(deployment, |d| (d.rows_served, d.rows_labelled))
    }

    /// Restores one model from its persisted state and its latest outcomes (oldest first).
    pub fn restore_model(
        &self,
        deployment: &str,
        key: ModelKey,
        cumulative: Option<MetricsState>,
        recent: Vec<Outcome>,
        counts: (u64, u64, u64),
    ) {
        self.with(deployment, |d| {
            let window = d.window;
            let (agree, compared, predictions) = counts;
            d.models.insert(
                key,
                ModelEval {
                    metrics: cumulative.map(|c| WindowedMetrics::restore(c, recent, window)),
                    agree,
                    compared,
                    predictions,
                },
            );
        });
    }

    pub fn restore_counters(&self, deployment: &str, rows_served: u64, rows_labelled: u64) {
        self.with(deployment, |d| {
            d.rows_served = rows_served;
            d.rows_labelled = rows_labelled;
        });
    }

    /// Forgets everything (before a full restore from the store).
    pub fn clear(&self) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for d in map.values_mut() {
            d.models.clear();
            d.comparisons.clear();
            d.rows_served = 0;
            d.rows_labelled = 0;
        }
    }

    pub fn snapshot(&self, deployment: &str) -> DeploymentEvalSnapshot {
        self.with(deployment, |d| DeploymentEvalSnapshot {
            rows_served: d.rows_served,
            rows_labelled: d.rows_labelled,
            label_coverage: (d.rows_served > 0)
                .then(|| d.rows_labelled as f64 / d.rows_served as f64),
            window_labels: d.window,
            models: d
                .models
                .iter()
                .map(|(k, m)| {
                    let (window, cumulative) = m
                        .metrics
                        .as_ref()
                        .map(|w| (w.window(), w.cumulative()))
                        .unwrap_or_default();
                    ModelEvalSnapshot {
                        model: k.0.clone(),
                        version: k.1,
                        predictions: m.predictions,
                        labelled: cumulative.labelled,
                        window,
                        cumulative,
                        agreement_with_champion: (m.compared > 0)
                            .then(|| m.agree as f64 / m.compared as f64),
                        compared_with_champion: m.compared,
                    }
                })
                .collect(),
            comparisons: d.comparisons.iter().map(|(k, c)| snapshot(k, c)).collect(),
        })
    }
}

fn template(o: &Outcome) -> MetricsState {
    match o {
        Outcome::Class { probabilities, .. } => {
            MetricsState::classification(probabilities.as_ref().map_or(2, Vec::len).max(2))
        }
        Outcome::Value { .. } => MetricsState::regression(),
    }
}

fn snapshot(k: &PairKey, c: &Comparison) -> ComparisonSnapshot {
    ComparisonSnapshot {
        champion: key_label(&k.0),
        challenger: key_label(&k.1),
        key: k.clone(),
        metric: c.metric,
        overall: c.overall.evidence(),
        segments: c
            .segments
            .iter()
            .map(|(s, t)| SegmentEvidence {
                segment: s.clone(),
                evidence: t.evidence(),
            })
            .collect(),
    }
}

impl ComparisonSnapshot {
    pub fn decision(&self) -> Decision {
        self.overall.decision
    }
}
