//! Per-model prediction-quality metrics, updated one labelled row at a time,
//! cumulatively (since the model joined) and over a sliding window of the last
//! `capacity` labelled rows.
//!
//! A row enters when a label joins a prediction ([`Outcome`]). The state kept is
//! a set of sufficient statistics ([`MetricsState`]: a confusion matrix and loss
//! sums) that can be added to, subtracted from and merged; a
//! [`MetricsSnapshot`] turns it into the numbers people read.
//!
//! # Definitions
//!
//! They follow scikit-learn's (`sklearn.metrics`, 1.9; user guide "Metrics and
//! scoring", <https://scikit-learn.org/stable/modules/model_evaluation.html>).
//! The unit tests check them against values scikit-learn computed.
//!
//! * **accuracy**: correct rows / rows (`accuracy_score`).
//! * **precision, recall, F1 (macro)**: per class `k`, with `tp`, `fp`, `fn`
//!   read off the confusion matrix, precision = tp / (tp + fp), recall =
//!   tp / (tp + fn), F1 = 2·tp / (2·tp + fp + fn); then the unweighted mean over
//!   the classes that appear in the truth *or* the predictions (sklearn's
//!   default `labels`, the union). A zero denominator gives 0, as sklearn's
//!   `zero_division=0` (`precision_recall_fscore_support(average="macro")`).
//! * **log loss**: mean over rows of −ln(clip(p\[truth\], 1e-15, 1 − 1e-15))
//!   (`log_loss`). Probabilities are used as given: rows are not renormalised
//!   and need not sum to one. sklearn ≥ 1.5 clips at machine epsilon (≈2.2e-16)
//!   rather than 1e-15; the two differ only when p\[truth\] < 1e-15.
//! * **Brier**: with a probability vector of exactly two entries, sklearn's
//!   binary `brier_score_loss`, mean of (p\[1\] − 1\[truth = 1\])²; with three
//!   or more, the multi-class Brier score, mean of Σ_k (p_k − 1\[k = truth\])²
//!   (sklearn's multi-class `brier_score_loss`, not scaled by half). The two
//!   differ by a factor of two on a two-class vector that sums to one.
//! * **MAE**: mean of |predicted − truth| (`mean_absolute_error`).
//! * **RMSE**: sqrt(mean of (predicted − truth)²) (`root_mean_squared_error`).
//!
//! # Bad input (never a panic)
//!
//! * A class index at or beyond [`MAX_CLASSES`] drops the row. Below it, an
//!   index beyond the classes known so far grows the confusion matrix: labels
//!   can name classes the model never predicted.
//! * An outcome of the other kind (a value on a classification state, a class
//!   on a regression state) is ignored: it is not counted anywhere.
//! * A probability vector is usable when it has at least two entries, covers
//!   the true class, and every entry is within \[0, 1\]. A vector of the
//!   wrong length or with finite entries out of range still counts towards
//!   the confusion matrix but not towards log loss or Brier, which therefore
//!   keep their own row counts (`log_loss_n`, `brier_n`).
//!
//! # Non-finite predictions
//!
//! A model that answers NaN or ±inf has not predicted anything usable, and
//! leaving such rows out would flatter it. So:
//!
//! * **classification**: a probability vector with a NaN or infinite entry
//!   counts as no confidence in the true class: the row takes the largest
//!   clipped log loss, −ln(1e-15) ≈ 34.54, and the largest Brier score (1 for
//!   a two-entry vector, 2 for three or more). The row still counts towards
//!   the confusion matrix with the class the model returned, and towards
//!   `non_finite`.
//! * **regression**: a NaN or infinite value has no error to average. The
//!   row is labelled and counted in `non_finite`, but not in MAE or RMSE
//!   (whose mean is over the other rows, `labelled − non_finite`). So is a
//!   finite prediction so far from its label (|error| > [`MAX_ABS_ERROR`])
//!   that its squared error could not be summed; labels themselves are
//!   bounded by [`MAX_ABS_LABEL`] when posted, so that only the model can
//!   cause this. In a paired comparison ([`Outcome::loss`]) such a row's
//!   loss is +inf, which the sequential test clips to its loss cap: the
//!   worst loss, never a skipped pair.
//!
//! Every sum therefore stays finite, so a state always serialises to JSON.
//!
//! # Windows and restarts
//!
//! [`WindowedMetrics`] keeps the window's rows and subtracts the oldest as a
//! new one arrives. Its floating-point sums are kept exactly (as non-overlapping
//! partial sums, Shewchuk's algorithm, the one behind Python's `math.fsum`) and
//! rounded once when read, so they do not drift with subtraction and do not
//! depend on the order of additions: [`WindowedMetrics::restore`] from the
//! persisted cumulative state and the recent rows gives snapshots equal to the
//! ones before the restart.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The most classes a classification state tracks; rows naming a class index
/// at or beyond it are dropped, so that a bad label cannot allocate a huge
/// confusion matrix.
pub const MAX_CLASSES: usize = 1024;

/// The largest |predicted − truth| a regression row may have to be counted;
/// beyond it the row is dropped, keeping every sum finite.
pub const MAX_ABS_ERROR: f64 = 1e100;

/// The largest |label| a regression label may have (checked when it is
/// posted): with predictions within the same range, every error stays below
/// [`MAX_ABS_ERROR`].
pub const MAX_ABS_LABEL: f64 = 1e99;

/// Log loss clips p\[truth\] to \[CLIP, 1 − CLIP\].
const PROBABILITY_CLIP: f64 = 1e-15;

/// What a model predicted for one row, and the truth that arrived later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Class {
        predicted: usize,
        #[serde(default, with = "super::prediction::float_json::opt_vec")]
        probabilities: Option<Vec<f64>>,
        truth: usize,
    },
    Value {
        #[serde(with = "super::prediction::float_json")]
        predicted: f64,
        truth: f64,
    },
}

/// A per-row loss, and the metric that summarises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Accuracy,
    LogLoss,
    Brier,
    AbsoluteError,
    SquaredError,
}

impl MetricKind {
    /// Whether a smaller value of the summary metric is better (all but
    /// accuracy). Per-row losses from [`Outcome::loss`] are always
    /// smaller-is-better.
    pub fn lower_is_better(self) -> bool {
        !matches!(self, Self::Accuracy)
    }
}

impl Outcome {
    /// Per-row loss for `kind` (0/1 loss for Accuracy: 1.0 when wrong), or None
    /// when the outcome cannot give it (log loss without usable probabilities,
    /// a regression loss on a class). A regression row whose error is not
    /// usable (a non-finite prediction) has the loss +inf: the worst.
    pub fn loss(&self, kind: MetricKind) -> Option<f64> {
        match (self, kind) {
            (
                Self::Class {
                    predicted, truth, ..
                },
                MetricKind::Accuracy,
            ) => Some(if predicted == truth { 0.0 } else { 1.0 }),
            (
                Self::Class {
                    probabilities,
                    truth,
                    ..
                },
                MetricKind::LogLoss,
            ) => probability_losses(probabilities.as_deref()?, *truth).map(|(log, _)| log),
            (
                Self::Class {
                    probabilities,
                    truth,
                    ..
                },
                MetricKind::Brier,
            ) => probability_losses(probabilities.as_deref()?, *truth).map(|(_, brier)| brier),
            (Self::Value { predicted, truth }, MetricKind::AbsoluteError) => {
                Some(value_errors(*predicted, *truth).map_or(f64::INFINITY, |(abs, _)| abs))
            }
            (Self::Value { predicted, truth }, MetricKind::SquaredError) => {
                Some(value_errors(*predicted, *truth).map_or(f64::INFINITY, |(_, sq)| sq))
            }
            _ => None,
        }
    }
}

/// (log loss, Brier) of one row, or None when the vector is not usable. A
/// vector with a non-finite entry gets the largest of both (see the module
/// documentation).
fn probability_losses(p: &[f64], truth: usize) -> Option<(f64, f64)> {
    if p.len() < 2 || truth >= p.len() {
        return None;
    }
    if has_non_finite(p) {
        let worst_brier = if p.len() == 2 { 1.0 } else { 2.0 };
        return Some((-PROBABILITY_CLIP.ln(), worst_brier));
    }
    if !p.iter().all(|v| (0.0..=1.0).contains(v)) {
        return None;
    }
    let log = -p[truth]
        .clamp(PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
        .ln();
    let indicator = |k: usize| if k == truth { 1.0 } else { 0.0 };
    let brier = if p.len() == 2 {
        (p[1] - indicator(1)).powi(2)
    } else {
        p.iter()
            .enumerate()
            .map(|(k, v)| (v - indicator(k)).powi(2))
            .sum()
    };
    Some((log, brier))
}

fn has_non_finite(p: &[f64]) -> bool {
    p.iter().any(|v| !v.is_finite())
}

/// (absolute error, squared error) of one row, or None when it has none that
/// can be summed (counted in `non_finite` instead).
fn value_errors(predicted: f64, truth: f64) -> Option<(f64, f64)> {
    let e = predicted - truth;
    (e.is_finite() && e.abs() <= MAX_ABS_ERROR).then(|| (e.abs(), e * e))
}

/// What one accepted outcome adds to a state of its kind.
#[derive(Clone, Copy, Debug)]
enum Contribution {
    Class {
        truth: usize,
        predicted: usize,
        log_loss: Option<f64>,
        brier: Option<f64>,
        /// The probabilities had a NaN or infinite entry.
        non_finite: bool,
    },
    Value {
        abs: f64,
        sq: f64,
    },
    /// A regression row with no usable error (see the module documentation).
    NonFiniteValue,
}

/// Mergeable, removable sufficient statistics (so a sliding window can
/// subtract what leaves it).
///
/// Invariants (checked by [`MetricsState::validate`], and repaired where
/// possible by the next `add` on a state deserialised from elsewhere):
/// `confusion` is `n_classes` × `n_classes`, indexed `[truth][predicted]`, and
/// sums to `n`; `log_loss_n`, `brier_n` and `non_finite` are at most `n`;
/// sums are finite and non-negative. A regression state's `n` counts the rows
/// in its error sums; `non_finite` the labelled rows that are not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetricsState {
    Classification {
        n_classes: usize,
        confusion: Vec<Vec<u64>>,
        n: u64,
        log_loss_sum: f64,
        log_loss_n: u64,
        brier_sum: f64,
        brier_n: u64,
        /// Rows whose probabilities had a NaN or infinite entry.
        #[serde(default)]
        non_finite: u64,
    },
    Regression {
        n: u64,
        abs_sum: f64,
        sq_sum: f64,
        /// Labelled rows not in the sums: a NaN or infinite prediction (or
        /// an error beyond [`MAX_ABS_ERROR`]).
        #[serde(default)]
        non_finite: u64,
    },
}

/// Why a (deserialised) [`MetricsState`] breaks its invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid metrics state: {reason}")]
pub struct InvalidMetricsState {
    pub reason: &'static str,
}

/// After subtracting: no rows left means exactly zero, and a loss sum is never
/// negative (rounding can leave a tiny negative residue).
fn guard_drift(sum: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { sum.max(0.0) }
}

/// Makes `confusion` square with at least `wanted` classes (and never more than
/// the larger of [`MAX_CLASSES`] and what it already holds).
fn grow_confusion(n_classes: &mut usize, confusion: &mut Vec<Vec<u64>>, wanted: usize) {
    let widest = confusion.iter().map(Vec::len).max().unwrap_or(0);
    let target = wanted
        .max(confusion.len())
        .max(widest)
        .max((*n_classes).min(MAX_CLASSES));
    *n_classes = target;
    confusion.resize_with(target, Vec::new);
    for row in confusion.iter_mut() {
        row.resize(target, 0);
    }
}

impl MetricsState {
    /// An empty classification state for `n_classes` classes (capped at
    /// [`MAX_CLASSES`]); it grows when a label names a class beyond them.
    pub fn classification(n_classes: usize) -> Self {
        let n_classes = n_classes.min(MAX_CLASSES);
        Self::Classification {
            n_classes,
            confusion: vec![vec![0; n_classes]; n_classes],
            n: 0,
            log_loss_sum: 0.0,
            log_loss_n: 0,
            brier_sum: 0.0,
            brier_n: 0,
            non_finite: 0,
        }
    }

    /// An empty regression state.
    pub fn regression() -> Self {
        Self::Regression {
            n: 0,
            abs_sum: 0.0,
            sq_sum: 0.0,
            non_finite: 0,
        }
    }

    /// An empty state of the same kind and class count.
    pub fn empty_like(&self) -> Self {
        match self {
            Self::Classification { n_classes, .. } => Self::classification(*n_classes),
            Self::Regression { .. } => Self::regression(),
        }
    }

    /// Labelled rows counted (for classification, the rows in the confusion
    /// matrix; for regression, those in the error sums and the non-finite
    /// ones).
    pub fn labelled(&self) -> u64 {
        match self {
            Self::Classification { n, .. } => *n,
            Self::Regression { n, non_finite, .. } => n.saturating_add(*non_finite),
        }
    }

    /// Classes tracked (0 for regression).
    pub fn n_classes(&self) -> usize {
        match self {
            Self::Classification { n_classes, .. } => *n_classes,
            Self::Regression { .. } => 0,
        }
    }

    /// Whether `add` would count `o` at all (right kind, class indices below
    /// [`MAX_CLASSES`]).
    pub fn accepts(&self, o: &Outcome) -> bool {
        self.contribution(o).is_some()
    }

    fn contribution(&self, o: &Outcome) -> Option<Contribution> {
        match (self, o) {
            (
                Self::Classification { .. },
                Outcome::Class {
                    predicted,
                    probabilities,
                    truth,
                },
            ) => {
                if *truth >= MAX_CLASSES || *predicted >= MAX_CLASSES {
                    return None;
                }
                let losses = probabilities
                    .as_deref()
                    .and_then(|p| probability_losses(p, *truth));
                Some(Contribution::Class {
                    truth: *truth,
                    predicted: *predicted,
                    log_loss: losses.map(|(log, _)| log),
                    brier: losses.map(|(_, brier)| brier),
                    non_finite: losses.is_some()
                        && probabilities.as_deref().is_some_and(has_non_finite),
                })
            }
            (Self::Regression { .. }, Outcome::Value { predicted, truth }) => Some(
                value_errors(*predicted, *truth)
                    .map_or(Contribution::NonFiniteValue, |(abs, sq)| {
                        Contribution::Value { abs, sq }
                    }),
            ),
            _ => None,
        }
    }

    /// Counts one labelled row. Rows that are not accepted (see
    /// [`MetricsState::accepts`] and the module documentation) are ignored.
    pub fn add(&mut self, o: &Outcome) {
        let Some(c) = self.contribution(o) else {
            return;
        };
        match (self, c) {
            (
                Self::Classification {
                    n_classes,
                    confusion,
                    n,
                    log_loss_sum,
                    log_loss_n,
                    brier_sum,
                    brier_n,
                    non_finite: non_finite_n,
                },
                Contribution::Class {
                    truth,
                    predicted,
                    log_loss,
                    brier,
                    non_finite,
                },
            ) => {
                let wanted = truth.max(predicted) + 1;
                let square = confusion.len() == *n_classes
                    && confusion.get(truth).is_some_and(|r| r.len() == *n_classes);
                if wanted > *n_classes || !square {
                    grow_confusion(n_classes, confusion, wanted);
                }
                if let Some(cell) = confusion.get_mut(truth).and_then(|r| r.get_mut(predicted)) {
                    *cell = cell.saturating_add(1);
                    *n = n.saturating_add(1);
                }
                if non_finite {
                    *non_finite_n = non_finite_n.saturating_add(1);
                }
                if let Some(l) = log_loss {
                    *log_loss_sum += l;
                    *log_loss_n = log_loss_n.saturating_add(1);
                }
                if let Some(b) = brier {
                    *brier_sum += b;
                    *brier_n = brier_n.saturating_add(1);
                }
            }
            (
                Self::Regression {
                    n, abs_sum, sq_sum, ..
                },
                Contribution::Value { abs, sq },
            ) => {
                *n = n.saturating_add(1);
                *abs_sum += abs;
                *sq_sum += sq;
            }
            (Self::Regression { non_finite, .. }, Contribution::NonFiniteValue) => {
                *non_finite = non_finite.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Exact inverse of [`MetricsState::add`] for a row that was added (the
    /// matrix keeps its size). Float sums are subtracted, reset to zero when
    /// their count reaches zero and never left negative. Removing a row that
    /// is not there (its confusion cell, or the regression count, is zero)
    /// does nothing.
    pub fn remove(&mut self, o: &Outcome) {
        let Some(c) = self.contribution(o) else {
            return;
        };
        match (self, c) {
            (
                Self::Classification {
                    confusion,
                    n,
                    log_loss_sum,
                    log_loss_n,
                    brier_sum,
                    brier_n,
                    non_finite: non_finite_n,
                    ..
                },
                Contribution::Class {
                    truth,
                    predicted,
                    log_loss,
                    brier,
                    non_finite,
                },
            ) => {
                let Some(cell) = confusion.get_mut(truth).and_then(|r| r.get_mut(predicted)) else {
                    return;
                };
                if *cell == 0 {
                    return;
                }
                *cell -= 1;
                *n = n.saturating_sub(1);
                if non_finite {
                    *non_finite_n = non_finite_n.saturating_sub(1);
                }
                if let Some(l) = log_loss.filter(|_| *log_loss_n > 0) {
                    *log_loss_n -= 1;
                    *log_loss_sum = guard_drift(*log_loss_sum - l, *log_loss_n);
                }
                if let Some(b) = brier.filter(|_| *brier_n > 0) {
                    *brier_n -= 1;
                    *brier_sum = guard_drift(*brier_sum - b, *brier_n);
                }
            }
            (
                Self::Regression {
                    n, abs_sum, sq_sum, ..
                },
                Contribution::Value { abs, sq },
            ) => {
                if *n == 0 {
                    return;
                }
                *n -= 1;
                *abs_sum = guard_drift(*abs_sum - abs, *n);
                *sq_sum = guard_drift(*sq_sum - sq, *n);
            }
            (Self::Regression { non_finite, .. }, Contribution::NonFiniteValue) => {
                *non_finite = non_finite.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Adds `other`'s rows to `self` (e.g. shards of one model). A state of
    /// the other kind is ignored.
    pub fn merge(&mut self, other: &MetricsState) {
        match (self, other) {
            (
                Self::Classification {
                    n_classes,
                    confusion,
                    n,
                    log_loss_sum,
                    log_loss_n,
                    brier_sum,
                    brier_n,
                    non_finite,
                },
                Self::Classification {
                    confusion: other_confusion,
                    n: other_n,
                    log_loss_sum: other_log_loss_sum,
                    log_loss_n: other_log_loss_n,
                    brier_sum: other_brier_sum,
                    brier_n: other_brier_n,
                    non_finite: other_non_finite,
                    ..
                },
            ) => {
                let wanted = other_confusion
                    .iter()
                    .map(Vec::len)
                    .chain([other_confusion.len()])
                    .max()
                    .unwrap_or(0);
                grow_confusion(n_classes, confusion, wanted);
                for (row, other_row) in confusion.iter_mut().zip(other_confusion) {
                    for (cell, other_cell) in row.iter_mut().zip(other_row) {
                        *cell = cell.saturating_add(*other_cell);
                    }
                }
                *n = n.saturating_add(*other_n);
                *log_loss_sum += other_log_loss_sum;
                *log_loss_n = log_loss_n.saturating_add(*other_log_loss_n);
                *brier_sum += other_brier_sum;
                *brier_n = brier_n.saturating_add(*other_brier_n);
                *non_finite = non_finite.saturating_add(*other_non_finite);
            }
            (
                Self::Regression {
                    n,
                    abs_sum,
                    sq_sum,
                    non_finite,
                },
                Self::Regression {
                    n: other_n,
                    abs_sum: other_abs_sum,
                    sq_sum: other_sq_sum,
                    non_finite: other_non_finite,
                },
            ) => {
                *n = n.saturating_add(*other_n);
                *non_finite = non_finite.saturating_add(*other_non_finite);
                *abs_sum += other_abs_sum;
                *sq_sum += other_sq_sum;
            }
            _ => {}
        }
    }

    /// Checks the invariants, e.g. on a state read back from storage.
    pub fn validate(&self) -> Result<(), InvalidMetricsState> {
        let fail = |reason| Err(InvalidMetricsState { reason });
        let sum_ok = |s: f64| s.is_finite() && s >= 0.0;
        match self {
            Self::Classification {
                n_classes,
                confusion,
                n,
                log_loss_sum,
                log_loss_n,
                brier_sum,
                brier_n,
                non_finite,
            } => {
                if *n_classes > MAX_CLASSES {
                    return fail("more classes than MAX_CLASSES");
                }
                if confusion.len() != *n_classes || confusion.iter().any(|r| r.len() != *n_classes)
                {
                    return fail("confusion matrix is not n_classes x n_classes");
                }
                let total: u128 = confusion.iter().flatten().map(|&c| u128::from(c)).sum();
                if total != u128::from(*n) {
                    return fail("confusion matrix does not sum to n");
                }
                if log_loss_n > n || brier_n > n || non_finite > n {
                    return fail("log_loss_n, brier_n or non_finite exceeds n");
                }
                if !sum_ok(*log_loss_sum) || !sum_ok(*brier_sum) {
                    return fail("a loss sum is negative or not finite");
                }
            }
            Self::Regression {
                abs_sum, sq_sum, ..
            } => {
                if !sum_ok(*abs_sum) || !sum_ok(*sq_sum) {
                    return fail("an error sum is negative or not finite");
                }
            }
        }
        Ok(())
    }

    /// The metrics these statistics give (see the module documentation).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mean = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
        match self {
            Self::Classification {
                confusion,
                n,
                log_loss_sum,
                log_loss_n,
                brier_sum,
                brier_n,
                non_finite,
                ..
            } => {
                let mut snapshot = MetricsSnapshot {
                    labelled: *n,
                    non_finite: *non_finite,
                    log_loss: mean(*log_loss_sum, *log_loss_n),
                    brier: mean(*brier_sum, *brier_n),
                    ..MetricsSnapshot::default()
                };
                let size = confusion
                    .iter()
                    .map(Vec::len)
                    .chain([confusion.len()])
                    .max()
                    .unwrap_or(0);
                let cell = |t: usize, p: usize| {
                    u128::from(
                        confusion
                            .get(t)
                            .and_then(|r| r.get(p))
                            .copied()
                            .unwrap_or(0),
                    )
                };
                let total: u128 = confusion.iter().flatten().map(|&c| u128::from(c)).sum();
                if total == 0 {
                    return snapshot;
                }
                let ratio = |num: u128, den: u128| {
                    if den == 0 {
                        0.0
                    } else {
                        num as f64 / den as f64
                    }
                };
                let (mut correct, mut classes) = (0u128, 0usize);
                let (mut precision, mut recall, mut f1) = (0.0, 0.0, 0.0);
                for k in 0..size {
                    let tp = cell(k, k);
                    let truth_k: u128 = (0..size).map(|p| cell(k, p)).sum();
                    let predicted_k: u128 = (0..size).map(|t| cell(t, k)).sum();
                    correct += tp;
                    if truth_k == 0 && predicted_k == 0 {
                        continue;
                    }
                    classes += 1;
                    precision += ratio(tp, predicted_k);
                    recall += ratio(tp, truth_k);
                    f1 += ratio(2 * tp, truth_k + predicted_k);
                }
                let classes = classes as f64;
                snapshot.accuracy = Some(ratio(correct, total));
                snapshot.precision_macro = Some(precision / classes);
                snapshot.recall_macro = Some(recall / classes);
                snapshot.f1_macro = Some(f1 / classes);
                snapshot.confusion_matrix = Some(confusion.clone());
                snapshot
            }
            Self::Regression {
                n,
                abs_sum,
                sq_sum,
                non_finite,
            } => MetricsSnapshot {
                labelled: self.labelled(),
                non_finite: *non_finite,
                mae: mean(*abs_sum, *n),
                rmse: mean(*sq_sum, *n).map(f64::sqrt),
                ..MetricsSnapshot::default()
            },
        }
    }
}

/// The metrics of one state. Fields that do not apply to the state's kind, or
/// have no rows yet, are None.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub labelled: u64,
    /// Labelled rows whose prediction was NaN or infinite (see the module
    /// documentation for how each kind counts them).
    pub non_finite: u64,
    // classification
    pub accuracy: Option<f64>,
    pub precision_macro: Option<f64>,
    pub recall_macro: Option<f64>,
    pub f1_macro: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    /// `[truth][predicted]`
    pub confusion_matrix: Option<Vec<Vec<u64>>>,
    // regression
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
}

impl MetricsSnapshot {
    /// The summary metric of `kind`: accuracy, log loss, Brier, MAE, or RMSE
    /// for `SquaredError`.
    pub fn get(&self, kind: MetricKind) -> Option<f64> {
        match kind {
            MetricKind::Accuracy => self.accuracy,
            MetricKind::LogLoss => self.log_loss,
            MetricKind::Brier => self.brier,
            MetricKind::AbsoluteError => self.mae,
            MetricKind::SquaredError => self.rmse,
        }
    }
}

/// An exact sum of f64 values under addition and subtraction: non-overlapping
/// partials in increasing magnitude (Shewchuk 1997, "Adaptive Precision
/// Floating-Point Arithmetic"; Python's `math.fsum`). The value read is the
/// exact sum correctly rounded, whatever the order of the operations. Inputs
/// must be finite and small enough that no partial sum overflows (guaranteed
/// here by the bounds on per-row losses).
#[derive(Clone, Debug, Default)]
struct ExactSum {
    partials: Vec<f64>,
}

impl ExactSum {
    fn add(&mut self, mut x: f64) {
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    fn value(&self) -> f64 {
        let p = &self.partials;
        let Some(mut i) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = p[i];
        let mut lo = 0.0;
        while i > 0 {
            i -= 1;
            let x = hi;
            let y = p[i];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Round half-even correctly when the rest has the same sign as `lo`.
        if i > 0 && ((lo < 0.0 && p[i - 1] < 0.0) || (lo > 0.0 && p[i - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

/// The window's float sums, kept exactly (see [`ExactSum`]).
#[derive(Clone, Debug, Default)]
struct WindowSums {
    log_loss: ExactSum,
    brier: ExactSum,
    abs: ExactSum,
    sq: ExactSum,
}

impl WindowSums {
    fn apply(&mut self, c: Contribution, sign: f64) {
        match c {
            Contribution::Class {
                log_loss, brier, ..
            } => {
                if let Some(l) = log_loss {
                    self.log_loss.add(sign * l);
                }
                if let Some(b) = brier {
                    self.brier.add(sign * b);
                }
            }
            Contribution::Value { abs, sq } => {
                self.abs.add(sign * abs);
                self.sq.add(sign * sq);
            }
            Contribution::NonFiniteValue => {}
        }
    }

    /// Overwrites `state`'s float sums with the exact ones.
    fn write_into(&self, state: &mut MetricsState) {
        match state {
            MetricsState::Classification {
                log_loss_sum,
                log_loss_n,
                brier_sum,
                brier_n,
                ..
            } => {
                *log_loss_sum = guard_drift(self.log_loss.value(), *log_loss_n);
                *brier_sum = guard_drift(self.brier.value(), *brier_n);
            }
            MetricsState::Regression {
                n, abs_sum, sq_sum, ..
            } => {
                *abs_sum = guard_drift(self.abs.value(), *n);
                *sq_sum = guard_drift(self.sq.value(), *n);
            }
        }
    }
}

/// Cumulative (since the model joined) + the last `capacity` labelled rows.
///
/// Only rows the state accepts ([`MetricsState::accepts`]) are counted or take
/// a place in the window. A capacity of 0 keeps no window.
#[derive(Clone, Debug)]
pub struct WindowedMetrics {
    cumulative: MetricsState,
    window: VecDeque<Outcome>,
    window_state: MetricsState,
    window_sums: WindowSums,
    capacity: usize,
}

impl WindowedMetrics {
    /// Starts from `template`: its kind and class count, and any rows it
    /// already holds as the cumulative starting point (the window starts
    /// empty).
    pub fn new(template: MetricsState, capacity: usize) -> Self {
        let window_state = template.empty_like();
        Self {
            cumulative: template,
            window: VecDeque::with_capacity(capacity.min(1024)),
            window_state,
            window_sums: WindowSums::default(),
            capacity,
        }
    }

    /// Counts one labelled row, cumulatively and in the window (evicting the
    /// oldest row when full).
    pub fn add(&mut self, o: Outcome) {
        if !self.cumulative.accepts(&o) {
            return;
        }
        self.cumulative.add(&o);
        self.push_window(o);
    }

    fn push_window(&mut self, o: Outcome) {
        // The window's matrix has the cumulative one's size, before and after
        // a restore alike.
        if let MetricsState::Classification {
            n_classes,
            confusion,
            ..
        } = &mut self.window_state
        {
            let wanted = self.cumulative.n_classes();
            if wanted > *n_classes {
                grow_confusion(n_classes, confusion, wanted);
            }
        }
        if self.capacity == 0 {
            return;
        }
        while self.window.len() >= self.capacity {
            let Some(old) = self.window.pop_front() else {
                break;
            };
            if let Some(c) = self.window_state.contribution(&old) {
                self.window_state.remove(&old);
                self.window_sums.apply(c, -1.0);
            }
        }
        if let Some(c) = self.window_state.contribution(&o) {
            self.window_state.add(&o);
            self.window_sums.apply(c, 1.0);
        }
        self.window_sums.write_into(&mut self.window_state);
        self.window.push_back(o);
    }

    /// Metrics since the model joined.
    pub fn cumulative(&self) -> MetricsSnapshot {
        self.cumulative.snapshot()
    }

    /// Metrics of the last `capacity` labelled rows.
    pub fn window(&self) -> MetricsSnapshot {
        self.window_state.snapshot()
    }

    /// The cumulative statistics, persisted by the store.
    pub fn cumulative_state(&self) -> &MetricsState {
        &self.cumulative
    }

    /// The window's statistics.
    pub fn window_state(&self) -> &MetricsState {
        &self.window_state
    }

    /// The rows in the window, oldest first.
    pub fn recent(&self) -> impl ExactSizeIterator<Item = &Outcome> {
        self.window.iter()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rebuilds from a persisted cumulative state and the most recent outcomes
    /// (oldest first; they are already counted in `cumulative`), as after a
    /// restart; gives snapshots equal to the ones before. Outcomes the state
    /// does not accept are skipped, then the last `capacity` form the window.
    pub fn restore(cumulative: MetricsState, recent: Vec<Outcome>, capacity: usize) -> Self {
        let mut restored = Self::new(cumulative, capacity);
        let accepted: Vec<Outcome> = recent
            .into_iter()
            .filter(|o| restored.cumulative.accepts(o))
            .collect();
        let skip = accepted.len().saturating_sub(capacity);
        for o in accepted.into_iter().skip(skip) {
            restored.push_window(o);
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(predicted: usize, truth: usize, p: &[f64]) -> Outcome {
        Outcome::Class {
            predicted,
            probabilities: Some(p.to_vec()),
            truth,
        }
    }

    fn value(predicted: f64, truth: f64) -> Outcome {
        Outcome::Value { predicted, truth }
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("metric present");
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn from_scratch(template: &MetricsState, rows: &[Outcome]) -> MetricsState {
        let mut state = template.empty_like();
        rows.iter().for_each(|o| state.add(o));
        state
    }

    /// Three classes, six rows; expected values from scikit-learn 1.9.1.
    fn multiclass_rows() -> Vec<Outcome> {
        vec![
            class(0, 0, &[0.7, 0.2, 0.1]),
            class(2, 1, &[0.1, 0.3, 0.6]),
            class(2, 2, &[0.2, 0.2, 0.6]),
            class(1, 2, &[0.1, 0.5, 0.4]),
            class(0, 1, &[0.5, 0.4, 0.1]),
            class(0, 0, &[0.6, 0.3, 0.1]),
        ]
    }

    #[test]
    fn multiclass_matches_sklearn() {
        let s = from_scratch(&MetricsState::classification(3), &multiclass_rows()).snapshot();
        assert_eq!(s.labelled, 6);
        close(s.accuracy, 0.5);
        close(s.precision_macro, 0.38888888888888884);
        close(s.recall_macro, 0.5);
        close(s.f1_macro, 0.43333333333333335);
        close(s.log_loss, 0.7358134099241601);
        close(s.brier, 0.4566666666666667);
        assert_eq!(
            s.confusion_matrix,
            Some(vec![vec![2, 0, 0], vec![1, 0, 1], vec![0, 1, 1]])
        );
        assert_eq!(s.mae, None);
        assert_eq!(s.get(MetricKind::Brier), s.brier);
        assert_eq!(s.get(MetricKind::AbsoluteError), None);
    }

    #[test]
    fn macro_averages_over_union_of_labels_and_unseen_classes_grow() {
        // Class 3 is only ever predicted; class 4 is declared but never seen.
        // sklearn: precision 0.75, recall 0.5, F1 0.5833333333333333.
        let rows: Vec<Outcome> = [(0, 0), (1, 1), (3, 1), (3, 0), (2, 2)]
            .iter()
            .map(|&(predicted, truth)| Outcome::Class {
                predicted,
                probabilities: None,
                truth,
            })
            .collect();
        for declared in [2, 5] {
            let state = from_scratch(&MetricsState::classification(declared), &rows);
            assert_eq!(state.n_classes(), declared.max(4));
            assert_eq!(state.validate(), Ok(()));
            let s = state.snapshot();
            close(s.accuracy, 0.6);
            close(s.precision_macro, 0.75);
            close(s.recall_macro, 0.5);
            close(s.f1_macro, 0.5833333333333333);
            assert_eq!((s.log_loss, s.brier), (None, None));
        }
    }

    #[test]
    fn binary_brier_and_log_loss_match_sklearn() {
        let rows: Vec<Outcome> = [(0, 0.1), (1, 0.8), (1, 0.4), (0, 0.3), (1, 0.9)]
            .iter()
            .map(|&(truth, p1)| class(usize::from(p1 > 0.5), truth, &[1.0 - p1, p1]))
            .collect();
        let s = from_scratch(&MetricsState::classification(2), &rows).snapshot();
        close(s.brier, 0.10200000000000001);
        close(s.log_loss, 0.34136605168854994);
    }

    #[test]
    fn regression_matches_sklearn() {
        let rows = [
            value(2.5, 3.0),
            value(0.0, -0.5),
            value(2.0, 2.0),
            value(8.0, 7.0),
        ];
        let s = from_scratch(&MetricsState::regression(), &rows).snapshot();
        assert_eq!(s.labelled, 4);
        close(s.mae, 0.5);
        close(s.rmse, 0.6123724356957945);
        assert_eq!(s.get(MetricKind::SquaredError), s.rmse);
        assert_eq!(s.accuracy, None);
    }

    #[test]
    fn per_row_losses() {
        let o = class(2, 1, &[0.1, 0.3, 0.6]);
        assert_eq!(o.loss(MetricKind::Accuracy), Some(1.0));
        close(o.loss(MetricKind::LogLoss), -(0.3f64.ln()));
        close(o.loss(MetricKind::Brier), 0.01 + 0.49 + 0.36);
        assert_eq!(o.loss(MetricKind::AbsoluteError), None);
        let v = value(1.0, 4.0);
        assert_eq!(v.loss(MetricKind::AbsoluteError), Some(3.0));
        assert_eq!(v.loss(MetricKind::SquaredError), Some(9.0));
        assert_eq!(v.loss(MetricKind::Accuracy), None);
        // A non-finite regression prediction: the worst loss (the
        // sequential test clips it to its cap).
        for bad in [value(f64::NAN, 1.0), value(f64::NEG_INFINITY, 1.0)] {
            assert_eq!(bad.loss(MetricKind::AbsoluteError), Some(f64::INFINITY));
            assert_eq!(bad.loss(MetricKind::SquaredError), Some(f64::INFINITY));
        }
        // Clipped, never infinite.
        close(
            class(0, 0, &[0.0, 1.0]).loss(MetricKind::LogLoss),
            -(1e-15f64.ln()),
        );
    }

    #[test]
    fn bad_input_is_skipped_not_fatal() {
        let mut c = MetricsState::classification(3);
        c.add(&class(0, 0, &[0.5, 0.5])); // two entries, fine: binary Brier
        c.add(&class(0, 2, &[0.5, 0.5])); // does not cover the truth
        c.add(&class(0, 0, &[1.5, -0.5, 0.0]));
        c.add(&class(0, 0, &[1.0]));
        c.add(&class(MAX_CLASSES, 0, &[1.0, 0.0])); // dropped
        c.add(&class(0, usize::MAX, &[1.0, 0.0])); // dropped
        c.add(&value(1.0, 1.0)); // other kind: ignored
        let MetricsState::Classification {
            n,
            log_loss_n,
            brier_n,
            ..
        } = &c
        else {
            unreachable!()
        };
        assert_eq!((*n, *log_loss_n, *brier_n), (4, 1, 1));
        assert_eq!(c.validate(), Ok(()));

        let mut r = MetricsState::regression();
        r.add(&class(0, 0, &[1.0, 0.0]));
        r.remove(&value(1.0, 2.0)); // never added: nothing happens
        assert_eq!(r, MetricsState::regression());
        assert_eq!(r.snapshot().mae, None);
    }

    /// NaN or infinite predictions: a classifier's take the worst clipped log
    /// loss and Brier score; a regressor's are labelled and counted apart,
    /// outside MAE and RMSE. Either way the sums stay finite, the window
    /// removes them again, and a restore gives the same numbers.
    #[test]
    fn non_finite_predictions_never_poison_the_sums() {
        let worst_log_loss = -(1e-15f64.ln());
        let mut c = MetricsState::classification(2);
        c.add(&class(1, 1, &[0.2, 0.8]));
        for bad in [
            [f64::NAN, f64::NAN],
            [f64::INFINITY, 0.0],
            [0.5, f64::NEG_INFINITY],
        ] {
            c.add(&class(0, 1, &bad));
        }
        let s = c.snapshot();
        assert_eq!((s.labelled, s.non_finite), (4, 3));
        close(s.log_loss, (-(0.8f64.ln()) + 3.0 * worst_log_loss) / 4.0);
        close(s.brier, (0.04 + 3.0) / 4.0);
        close(s.accuracy, 0.25);
        assert_eq!(c.validate(), Ok(()));
        // Three or more classes: the multi-class Brier's worst, 2.
        let mut m = MetricsState::classification(3);
        m.add(&class(0, 2, &[f64::NAN, 0.5, 0.5]));
        let s = m.snapshot();
        close(s.log_loss, worst_log_loss);
        close(s.brier, 2.0);
        assert_eq!(s.non_finite, 1);

        let mut r = MetricsState::regression();
        r.add(&value(3.0, 1.0));
        for bad in [
            value(f64::NAN, 1.0),
            value(f64::INFINITY, 1.0),
            value(f64::NEG_INFINITY, 1.0),
            value(1e300, -1.0),
        ] {
            assert!(r.accepts(&bad));
            r.add(&bad);
        }
        let s = r.snapshot();
        assert_eq!((s.labelled, s.non_finite), (5, 4));
        close(s.mae, 2.0);
        close(s.rmse, 2.0);
        assert_eq!(r.validate(), Ok(()));
        let json = serde_json::to_string(&r).expect("serialises");
        assert_eq!(serde_json::from_str::<MetricsState>(&json).ok(), Some(r));

        // Through a window of 2: the non-finite rows leave it again.
        let mut w = WindowedMetrics::new(MetricsState::regression(), 2);
        let rows = [
            value(f64::NAN, 1.0),
            value(2.0, 1.0),
            value(f64::INFINITY, 0.0),
            value(5.0, 1.0),
            value(7.0, 1.0),
        ];
        for o in rows.iter().cloned() {
            w.add(o);
        }
        let (win, cum) = (w.window(), w.cumulative());
        assert_eq!((win.labelled, win.non_finite), (2, 0));
        close(win.mae, 5.0);
        assert_eq!((cum.labelled, cum.non_finite), (5, 2));
        close(cum.mae, 11.0 / 3.0);
        // Outcomes stored as JSON come back non-finite, and a restore from
        // them equals the live state.
        let stored: Vec<Outcome> = rows
            .iter()
            .map(|o| {
                let json = serde_json::to_string(o).expect("serialises");
                serde_json::from_str(&json).expect("deserialises")
            })
            .collect();
        let restored = WindowedMetrics::restore(w.cumulative_state().clone(), stored, 2);
        assert_eq!(restored.window(), w.window());
        assert_eq!(restored.cumulative(), w.cumulative());
        let mut w3 = WindowedMetrics::new(MetricsState::regression(), 3);
        rows.iter().cloned().for_each(|o| w3.add(o));
        let s = w3.window();
        assert_eq!((s.labelled, s.non_finite), (3, 1));
    }

    #[test]
    fn remove_is_the_inverse_of_add() {
        let rows = multiclass_rows();
        let mut state = from_scratch(&MetricsState::classification(3), &rows);
        for o in &rows[..2] {
            state.remove(o);
        }
        let rest = from_scratch(&MetricsState::classification(3), &rows[2..]);
        let (a, b) = (state.snapshot(), rest.snapshot());
        assert_eq!(a.confusion_matrix, b.confusion_matrix);
        close(a.log_loss, b.log_loss.unwrap_or(f64::NAN));
        close(a.brier, b.brier.unwrap_or(f64::NAN));
        rows[2..].iter().for_each(|o| state.remove(o));
        assert_eq!(state, MetricsState::classification(3));

        let values = [value(0.1, 0.7), value(3.0, 1.0), value(-2.0, 0.3)];
        let mut r = from_scratch(&MetricsState::regression(), &values);
        values.iter().for_each(|o| r.remove(o));
        assert_eq!(r, MetricsState::regression());
    }

    #[test]
    fn merge_equals_adding_everything() {
        let rows = multiclass_rows();
        let mut left = from_scratch(&MetricsState::classification(2), &rows[..3]);
        left.merge(&from_scratch(&MetricsState::classification(3), &rows[3..]));
        let (a, b) = (
            left.snapshot(),
            from_scratch(&MetricsState::classification(3), &rows).snapshot(),
        );
        assert_eq!(a.confusion_matrix, b.confusion_matrix);
        close(a.log_loss, b.log_loss.unwrap_or(f64::NAN));
        left.merge(&MetricsState::regression()); // other kind: ignored
        assert_eq!(left.labelled(), 6);
    }

    #[test]
    fn window_keeps_the_last_rows() {
        // sklearn, last three rows: MAE 1.0833333333333333, RMSE 1.299038105676658.
        let rows = [
            value(1.5, 1.0),
            value(1.0, 2.0),
            value(3.25, 3.0),
            value(6.0, 4.0),
            value(4.0, 5.0),
        ];
        let mut w = WindowedMetrics::new(MetricsState::regression(), 3);
        rows.iter().cloned().for_each(|o| w.add(o));
        let window = w.window();
        assert_eq!(
            window,
            from_scratch(&MetricsState::regression(), &rows[2..]).snapshot()
        );
        close(window.mae, 1.0833333333333333);
        close(window.rmse, 1.299038105676658);
        assert_eq!(w.cumulative().labelled, 5);
        assert_eq!(w.recent().len(), 3);

        let rows = multiclass_rows();
        let mut w = WindowedMetrics::new(MetricsState::classification(3), 3);
        rows.iter().cloned().for_each(|o| w.add(o));
        let s = w.window();
        assert_eq!(
            s,
            from_scratch(&MetricsState::classification(3), &rows[3..]).snapshot()
        );
        // sklearn on the last three rows (labels=[0, 1, 2]).
        close(s.accuracy, 0.3333333333333333);
        close(s.precision_macro, 0.16666666666666666);
        close(s.recall_macro, 0.3333333333333333);
        close(s.f1_macro, 0.2222222222222222);
        close(s.log_loss, 0.7811356958381003);
        close(s.brier, 0.5);
        assert_eq!(
            w.cumulative(),
            from_scratch(&MetricsState::classification(3), &rows).snapshot()
        );

        let mut none = WindowedMetrics::new(MetricsState::regression(), 0);
        none.add(value(1.0, 2.0));
        assert_eq!(none.window().labelled, 0);
        assert_eq!(none.cumulative().labelled, 1);
    }

    #[test]
    fn window_sums_do_not_drift() {
        // Values that lose bits when added and subtracted naively.
        let mut w = WindowedMetrics::new(MetricsState::regression(), 2);
        let big = [1e16, 1.0, 3.0, 1e-3, 7.5e15, 0.1, 0.2, 0.3];
        big.iter().for_each(|&e| w.add(value(e, 0.0)));
        assert_eq!(
            w.window(),
            from_scratch(
                &MetricsState::regression(),
                &[value(0.2, 0.0), value(0.3, 0.0)]
            )
            .snapshot()
        );
        let mut s = ExactSum::default();
        [0.1, 0.2, 1e100, 0.3, -1e100, -0.1]
            .iter()
            .for_each(|&x| s.add(x));
        assert_eq!(s.value(), 0.5);
    }

    #[test]
    fn restore_gives_equal_snapshots() {
        let mut rows = multiclass_rows();
        rows.push(class(4, 3, &[0.1, 0.2, 0.3, 0.4])); // grows the matrix
        rows.push(value(1.0, 2.0)); // ignored
        rows.extend(multiclass_rows().into_iter().rev());
        for capacity in [0, 1, 4, 100] {
            let mut before = WindowedMetrics::new(MetricsState::classification(3), capacity);
            rows.iter().cloned().for_each(|o| before.add(o));
            let json = serde_json::to_string(before.cumulative_state()).expect("serialises");
            let persisted: MetricsState = serde_json::from_str(&json).expect("deserialises");
            let after = WindowedMetrics::restore(persisted, rows.clone(), capacity);
            assert_eq!(after.cumulative(), before.cumulative());
            assert_eq!(after.window(), before.window());
            assert_eq!(after.window_state(), before.window_state());
        }

        let values: Vec<Outcome> = (0..50).map(|i| value(f64::from(i) * 0.37, 1.1)).collect();
        let mut before = WindowedMetrics::new(MetricsState::regression(), 7);
        values.iter().cloned().for_each(|o| before.add(o));
        let after =
            WindowedMetrics::restore(before.cumulative_state().clone(), values[40..].to_vec(), 7);
        assert_eq!(after.window(), before.window());
        assert_eq!(after.cumulative(), before.cumulative());
    }

    #[test]
    fn serde_round_trip() {
        let mut c = from_scratch(&MetricsState::classification(3), &multiclass_rows());
        c.add(&class(1, 5, &[0.1, 0.2, 0.3, 0.4])); // probabilities skipped
        let mut r = MetricsState::regression();
        r.add(&value(0.1, 0.7));
        for state in [c, r, MetricsState::classification(0)] {
            let json = serde_json::to_string(&state).expect("serialises");
            let back: MetricsState = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(back, state);
            assert_eq!(back.validate(), Ok(()));
        }
        let kind: MetricKind = serde_json::from_str("\"log_loss\"").expect("kind");
        assert_eq!(kind, MetricKind::LogLoss);
        let o = class(1, 0, &[0.6, 0.4]);
        let back: Outcome =
            serde_json::from_str(&serde_json::to_string(&o).expect("ser")).expect("de");
        assert_eq!(back, o);
        // Non-finite values survive (JSON numbers cannot hold them).
        let o = class(1, 0, &[f64::INFINITY, f64::NEG_INFINITY]);
        let json = serde_json::to_string(&o).expect("ser");
        assert_eq!(
            serde_json::from_str::<Outcome>(&json).ok(),
            Some(o),
            "{json}"
        );
        let json = serde_json::to_string(&value(f64::NAN, 1.0)).expect("ser");
        match serde_json::from_str(&json) {
            Ok(Outcome::Value { predicted, truth }) => {
                assert!(predicted.is_nan() && truth == 1.0, "{json}");
            }
            other => panic!("{json}: {other:?}"),
        }
        // A state written before `non_finite` existed reads as none.
        let old = r#"{"Regression":{"n":1,"abs_sum":0.5,"sq_sum":0.25}}"#;
        let back: MetricsState = serde_json::from_str(old).expect("deserialises");
        assert_eq!(back.snapshot().non_finite, 0);
        assert_eq!(back.labelled(), 1);
    }

    #[test]
    fn malformed_states_never_panic() {
        let mut state: MetricsState = serde_json::from_str(
            r#"{"Classification":{"n_classes":1000000000,"confusion":[[1],[0,2,5]],
                "n":9,"log_loss_sum":-1.0,"log_loss_n":99,"brier_sum":0.0,"brier_n":0}}"#,
        )
        .expect("deserialises");
        assert!(state.validate().is_err());
        let _ = state.snapshot();
        state.add(&class(1, 1, &[0.5, 0.5]));
        state.remove(&class(2, 0, &[0.5, 0.5]));
        let _ = state.snapshot();
        assert_eq!(state.n_classes(), MAX_CLASSES);
        let w = WindowedMetrics::restore(state, vec![class(0, 0, &[1.0, 0.0])], usize::MAX);
        assert_eq!(w.window().labelled, 1);
    }
}
