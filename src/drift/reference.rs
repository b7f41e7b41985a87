//! Reference statistics of a model version: what its inputs and predictions
//! looked like on the training split, stored beside the model as
//! `models/<name>/<version>/reference.json` (written by `models/generate.py`;
//! the format is described in `models/README.md`).
//!
//! Numeric series (features and regression outputs) carry interior quantile
//! `edges` and the training `fractions` of the right-closed bins they define
//! (`(-∞, e1], (e1, e2], …, (ek, +∞)`, exactly [`super::stats::histogram`]),
//! for PSI, chi-square and Jensen–Shannon; a sorted subsample of the training
//! values for KS and Wasserstein; and mean, population standard deviation,
//! minimum and maximum. Classifier outputs carry the predicted-class
//! frequencies and the mean top-class probability.
//!
//! ```no_run
//! use std::path::Path;
//! use contender::drift::reference::{FeatureReference, ReferenceStats};
//! use contender::drift::stats;
//!
//! let reference = ReferenceStats::load(Path::new("models/breast_cancer/1/reference.json"))?;
//! reference.validate(Some(30))?;
//! # let live_rows: Vec<Vec<f64>> = Vec::new();
//! for feature in &reference.features {
//!     if let FeatureReference::Numeric { column, edges, fractions, sample, std, .. } = feature {
//!         let live: Vec<f64> = live_rows.iter().map(|row| row[*column]).collect();
//!         let psi = stats::psi(fractions, &stats::histogram(edges, live.iter().copied()));
//!         let ks = stats::ks_2samp(sample, &live);
//!         let w = stats::wasserstein_normalised(sample, &live, *std);
//!     }
//! }
//! # Ok::<(), contender::drift::reference::ReferenceError>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stats::FRACTION_SUM_TOLERANCE;

/// The file name of reference statistics inside a version directory.
pub const FILE_NAME: &str = "reference.json";

/// The format version this code reads and `models/generate.py` writes.
pub const FORMAT_VERSION: u32 = 1;

/// Reference statistics of one model version (`reference.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceStats {
    /// Format version, [`FORMAT_VERSION`] (1).
    pub version: u32,
    /// Number of training rows the statistics were computed from.
    pub rows: u64,
    /// One entry per monitored input column.
    pub features: Vec<FeatureReference>,
    /// The model's own predictions on the training rows, if recorded.
    pub predictions: Option<PredictionReference>,
}

/// Reference statistics of one input column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureReference {
    /// A numeric column.
    Numeric {
        /// Feature name (as `feature_names` in `model.toml`).
        name: String,
        /// Column index in the model's input.
        column: usize,
        /// Interior bin edges, strictly increasing: the distinct values of
        /// the 10 %, 20 %, …, 90 % training quantiles. Repeated quantiles
        /// (columns with few distinct values) are merged, so there may be
        /// fewer than 9 edges, and none at all for a constant column.
        edges: Vec<f64>,
        /// Training fraction of each bin `(-∞, e1], (e1, e2], …, (ek, +∞)`;
        /// `edges.len() + 1` values summing to 1.
        fractions: Vec<f64>,
        /// Training mean.
        mean: f64,
        /// Training standard deviation (population, `ddof = 0`); 0 only for a
        /// constant column.
        std: f64,
        /// Training minimum.
        min: f64,
        /// Training maximum.
        max: f64,
        /// Sorted subsample of the training values, for KS and Wasserstein
        /// (at most 1000; `models/generate.py` keeps the example files small
        /// with a budget of 2000 values per file, e.g. 66 per feature for
        /// the 30 breast-cancer features, which limits how small a shift
        /// KS can detect).
        sample: Vec<f64>,
    },
    /// A categorical column.
    Categorical {
        /// Feature name.
        name: String,
        /// Column index in the model's input.
        column: usize,
        /// Training frequency of each category (summing to 1). Live values
        /// outside these keys belong in an extra "unseen" bin with reference
        /// fraction 0 (see [`super::stats::chi_square`]).
        frequencies: BTreeMap<String, f64>,
    },
}

/// Reference statistics of the model's outputs on the training rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PredictionReference {
    /// A classifier: predicted-class frequencies.
    Classes {
        /// Class names, index = class id.
        labels: Vec<String>,
        /// Fraction of training rows predicted as each class (summing to 1).
        fractions: Vec<f64>,
        /// Mean over the training rows of the highest class probability.
        mean_confidence: f64,
    },
    /// A regressor (single numeric output): as a numeric feature.
    Numeric {
        /// Interior bin edges, as [`FeatureReference::Numeric::edges`].
        edges: Vec<f64>,
        /// Bin fractions, `edges.len() + 1` values summing to 1.
        fractions: Vec<f64>,
        /// Mean prediction.
        mean: f64,
        /// Standard deviation of the predictions (population).
        std: f64,
        /// Sorted subsample of the predictions.
        sample: Vec<f64>,
    },
}

/// Why reference statistics could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON for [`ReferenceStats`] (the message is
    /// serde's, with line and column).
    #[error("cannot parse {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// The statistics are inconsistent (see [`ReferenceStats::validate`]).
    #[error("invalid reference statistics: {0}")]
    Invalid(String),
}

impl ReferenceStats {
    /// The path of the reference statistics of the model version stored in
    /// `version_dir`.
    pub fn path_in(version_dir: &Path) -> PathBuf {
        version_dir.join(FILE_NAME)
    }

    /// Reads, parses and validates (without a column count, see
    /// [`ReferenceStats::validate`]) a `reference.json`.
    pub fn load(path: &Path) -> Result<ReferenceStats, ReferenceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReferenceError::Io {
            path: path.to_owned(),
            source,
        })?;
        let stats: ReferenceStats =
            serde_json::from_str(&text).map_err(|e| ReferenceError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        stats.validate(None).map_err(|e| match e {
            ReferenceError::Invalid(m) => {
                ReferenceError::Invalid(format!("{}: {m}", path.display()))
            }
            other => other,
        })?;
        Ok(stats)
    }

    /// Checks the statistics for consistency:
    ///
    /// - `version` is [`FORMAT_VERSION`] and `rows > 0`;
    /// - feature names are non-empty and unique, columns unique, and below
    ///   `n_columns` when given (the width of the model's input);
    /// - every `edges` is finite and strictly increasing, `fractions` has
    ///   `edges.len() + 1` entries, each in [0, 1], summing to 1 (within
    ///   [`FRACTION_SUM_TOLERANCE`]);
    /// - `mean`, `std`, `min`, `max` are finite, `min ≤ mean ≤ max` (up to
    ///   rounding), and the edges and sample lie in `[min, max]`;
    /// - `std > 0`, or `std == 0` for a constant column (`min == max`; the
    ///   normalised Wasserstein distance is then undefined);
    /// - every `sample` is non-empty, finite and sorted;
    /// - categorical frequencies and class fractions are in [0, 1] and sum to
    ///   1; class labels are unique and as many as fractions;
    ///   `mean_confidence` is in [0, 1].
    pub fn validate(&self, n_columns: Option<usize>) -> Result<(), ReferenceError> {
        let invalid = |m: String| Err(ReferenceError::Invalid(m));
        if self.version != FORMAT_VERSION {
            return invalid(format!(
                "format version {} is not supported (expected {FORMAT_VERSION})",
                self.version
            ));
        }
        if self.rows == 0 {
            return invalid("`rows` is 0".into());
        }
        let mut names = HashSet::new();
        let mut columns = HashSet::new();
        for feature in &self.features {
            let (name, column) = (feature.name(), feature.column());
            let context = |m: String| ReferenceError::Invalid(format!("feature {name:?}: {m}"));
            if name.is_empty() {
                return invalid(format!("feature at column {column} has an empty name"));
            }
            if !names.insert(name) {
                return invalid(format!("feature name {name:?} appears twice"));
            }
            if !columns.insert(column) {
                return invalid(format!("column {column} is described twice"));
            }
            if let Some(n) = n_columns
                && column >= n
            {
                return Err(context(format!(
                    "column {column} is out of range (the input has {n})"
                )));
            }
            match feature {
                FeatureReference::Numeric {
                    edges,
                    fractions,
                    mean,
                    std,
                    min,
                    max,
                    sample,
                    ..
                } => {
                    check_numeric(edges, fractions, *mean, *std, sample).map_err(context)?;
                    check_range(edges, *mean, *std, *min, *max, sample).map_err(context)?;
                }
                FeatureReference::Categorical { frequencies, .. } => {
                    if frequencies.is_empty() {
                        return Err(context("no categories".into()));
                    }
                    let values: Vec<f64> = frequencies.values().copied().collect();
                    check_fractions(&values).map_err(|m| context(format!("frequencies: {m}")))?;
                }
            }
        }
        match &self.predictions {
            None => {}
            Some(PredictionReference::Classes {
                labels,
                fractions,
                mean_confidence,
            }) => {
                let context = |m: String| ReferenceError::Invalid(format!("predictions: {m}"));
                if labels.is_empty() || labels.len() != fractions.len() {
                    return Err(context(format!(
                        "{} labels but {} fractions",
                        labels.len(),
                        fractions.len()
                    )));
                }
                let mut seen = HashSet::new();
                if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
                    return Err(context(format!("label {dup:?} appears twice")));
                }
                check_fractions(fractions).map_err(|m| context(format!("fractions: {m}")))?;
                if !(0.0..=1.0).contains(mean_confidence) {
                    return Err(context(format!(
                        "mean_confidence {mean_confidence} is not in [0, 1]"
                    )));
                }
            }
            Some(PredictionReference::Numeric {
                edges,
                fractions,
                mean,
                std,
                sample,
            }) => {
                check_numeric(edges, fractions, *mean, *std, sample)
                    .map_err(|m| ReferenceError::Invalid(format!("predictions: {m}")))?;
                if *std == 0.0 && sample.first() != sample.last() {
                    return invalid("predictions: std is 0 but the sample is not constant".into());
                }
            }
        }
        Ok(())
    }

    /// The reference of the feature named `name`.
    pub fn feature(&self, name: &str) -> Option<&FeatureReference> {
        self.features.iter().find(|f| f.name() == name)
    }
}

impl FeatureReference {
    /// The feature's name.
    pub fn name(&self) -> &str {
        match self {
            FeatureReference::Numeric { name, .. } | FeatureReference::Categorical { name, .. } => {
                name
            }
        }
    }

    /// The feature's column in the model input.
    pub fn column(&self) -> usize {
        match self {
            FeatureReference::Numeric { column, .. }
            | FeatureReference::Categorical { column, .. } => *column,
        }
    }
}

fn check_fractions(fractions: &[f64]) -> Result<(), String> {
    if let Some(f) = fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        return Err(format!("{f} is not in [0, 1]"));
    }
    let sum: f64 = fractions.iter().sum();
    if (sum - 1.0).abs() > FRACTION_SUM_TOLERANCE {
        return Err(format!("sum to {sum}, not 1"));
    }
    Ok(())
}

/// Checks shared by numeric features and numeric predictions.
fn check_numeric(
    edges: &[f64],
    fractions: &[f64],
    mean: f64,
    std: f64,
    sample: &[f64],
) -> Result<(), String> {
    if let Some(e) = edges.iter().find(|e| !e.is_finite()) {
        return Err(format!("edge {e} is not finite"));
    }
    if edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err("edges are not strictly increasing".into());
    }
    if fractions.len() != edges.len() + 1 {
        return Err(format!(
            "{} edges need {} fractions, not {}",
            edges.len(),
            edges.len() + 1,
            fractions.len()
        ));
    }
    check_fractions(fractions).map_err(|m| format!("fractions: {m}"))?;
    if !mean.is_finite() {
        return Err(format!("mean {mean} is not finite"));
    }
    if !(std.is_finite() && std >= 0.0) {
        return Err(format!("std {std} is not a finite non-negative number"));
    }
    if sample.is_empty() {
        return Err("sample is empty".into());
    }
    if let Some(v) = sample.iter().find(|v| !v.is_finite()) {
        return Err(format!("sample value {v} is not finite"));
    }
    if sample.windows(2).any(|w| w[0] > w[1]) {
        return Err("sample is not sorted".into());
    }
    Ok(())
}

/// Range checks of a numeric feature (after [`check_numeric`]).
fn check_range(
    edges: &[f64],
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    sample: &[f64],
) -> Result<(), String> {
    if !(min.is_finite() && max.is_finite() && min <= max) {
        return Err(format!("min {min} and max {max} are not a finite range"));
    }
    // The mean of equal values can differ from them in the last bits.
    let slack = 1e-9 * min.abs().max(max.abs()).max(1.0);
    if mean < min - slack || mean > max + slack {
        return Err(format!("mean {mean} is outside [{min}, {max}]"));
    }
    if std == 0.0 && min != max {
        return Err("std is 0 but min < max".into());
    }
    if std > 0.0 && min == max {
        return Err(format!("std is {std} but the column is constant"));
    }
    let outside = |v: &f64| *v < min || *v > max;
    if let Some(e) = edges.iter().find(|e| outside(e)) {
        return Err(format!("edge {e} is outside [{min}, {max}]"));
    }
    if let Some(v) = sample.iter().find(|v| outside(v)) {
        return Err(format!("sample value {v} is outside [{min}, {max}]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::stats;

    fn numeric(name: &str, column: usize) -> FeatureReference {
        FeatureReference::Numeric {
            name: name.into(),
            column,
            edges: vec![1.0, 2.0],
            fractions: vec![0.25, 0.5, 0.25],
            mean: 1.5,
            std: 0.75,
            min: 0.0,
            max: 3.0,
            sample: vec![0.0, 1.0, 1.5, 2.0, 3.0],
        }
    }

    fn valid() -> ReferenceStats {
        ReferenceStats {
            version: 1,
            rows: 4,
            features: vec![
                numeric("a", 0),
                FeatureReference::Categorical {
                    name: "colour".into(),
                    column: 2,
                    frequencies: [("red".to_string(), 0.75), ("blue".to_string(), 0.25)].into(),
                },
            ],
            predictions: Some(PredictionReference::Classes {
                labels: vec!["no".into(), "yes".into()],
                fractions: vec![0.5, 0.5],
                mean_confidence: 0.8,
            }),
        }
    }

    #[track_caller]
    fn assert_invalid(stats: &ReferenceStats, n_columns: Option<usize>, needle: &str) {
        match stats.validate(n_columns) {
            Err(ReferenceError::Invalid(m)) => {
                assert!(m.contains(needle), "{m:?} lacks {needle:?}")
            }
            other => panic!("expected Invalid containing {needle:?}, got {other:?}"),
        }
    }

    fn with_feature(f: impl FnOnce(&mut FeatureReference)) -> ReferenceStats {
        let mut s = valid();
        f(&mut s.features[0]);
        s
    }

    fn numeric_fields(
        f: &mut FeatureReference,
    ) -> (
        &mut Vec<f64>,
        &mut Vec<f64>,
        &mut f64,
        &mut f64,
        &mut f64,
        &mut f64,
        &mut Vec<f64>,
    ) {
        match f {
            FeatureReference::Numeric {
                edges,
                fractions,
                mean,
                std,
                min,
                max,
                sample,
                ..
            } => (edges, fractions, mean, std, min, max, sample),
            FeatureReference::Categorical { .. } => unreachable!(),
        }
    }

    #[test]
    fn valid_statistics_round_trip_through_json() {
        let s = valid();
        s.validate(Some(3)).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""kind":"numeric""#) && json.contains(r#""kind":"classes""#));
        let back: ReferenceStats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.feature("colour").map(FeatureReference::column), Some(2));
        assert_eq!(s.feature("a").map(FeatureReference::name), Some("a"));
        assert!(s.feature("b").is_none());
    }

    #[test]
    fn validate_rejects_inconsistent_statistics() {
        let mut s = valid();
        s.version = 2;
        assert_invalid(&s, None, "format version 2");
        let mut s = valid();
        s.rows = 0;
        assert_invalid(&s, None, "rows");
        assert_invalid(&valid(), Some(2), "column 2 is out of range");
        let mut s = valid();
        s.features.push(numeric("a", 5));
        assert_invalid(&s, None, "appears twice");
        let mut s = valid();
        s.features.push(numeric("b", 0));
        assert_invalid(&s, None, "column 0 is described twice");
        let mut s = valid();
        s.features.push(numeric("", 7));
        assert_invalid(&s, None, "empty name");

        assert_invalid(
            &with_feature(|f| numeric_fields(f).0[1] = 1.0),
            None,
            "strictly increasing",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).0[0] = f64::NAN),
            None,
            "not finite",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).1.push(0.0)),
            None,
            "need 3 fractions",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).1[0] = 0.3),
            None,
            "sum to",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).1[0] = -0.25),
            None,
            "not in [0, 1]",
        );
        assert_invalid(
            &with_feature(|f| *numeric_fields(f).2 = 7.0),
            None,
            "mean 7",
        );
        assert_invalid(
            &with_feature(|f| *numeric_fields(f).3 = -1.0),
            None,
            "std -1",
        );
        assert_invalid(
            &with_feature(|f| *numeric_fields(f).3 = 0.0),
            None,
            "std is 0",
        );
        assert_invalid(
            &with_feature(|f| *numeric_fields(f).4 = 5.0),
            None,
            "finite range",
        );
        assert_invalid(
            &with_feature(|f| *numeric_fields(f).5 = 2.5),
            None,
            "outside",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).6.clear()),
            None,
            "sample is empty",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).6.swap(0, 1)),
            None,
            "not sorted",
        );
        assert_invalid(
            &with_feature(|f| numeric_fields(f).6[0] = f64::INFINITY),
            None,
            "not finite",
        );

        let mut s = valid();
        s.features[1] = FeatureReference::Categorical {
            name: "colour".into(),
            column: 2,
            frequencies: [("red".to_string(), 0.7)].into(),
        };
        assert_invalid(&s, None, "frequencies: sum to");
        let mut s = valid();
        s.features[1] = FeatureReference::Categorical {
            name: "colour".into(),
            column: 2,
            frequencies: BTreeMap::new(),
        };
        assert_invalid(&s, None, "no categories");

        let mut s = valid();
        s.predictions = Some(PredictionReference::Classes {
            labels: vec!["no".into(), "no".into()],
            fractions: vec![0.5, 0.5],
            mean_confidence: 0.8,
        });
        assert_invalid(&s, None, "appears twice");
        let mut s = valid();
        s.predictions = Some(PredictionReference::Classes {
            labels: vec!["no".into()],
            fractions: vec![0.5, 0.5],
            mean_confidence: 0.8,
        });
        assert_invalid(&s, None, "1 labels but 2 fractions");
        let mut s = valid();
        s.predictions = Some(PredictionReference::Classes {
            labels: vec!["no".into(), "yes".into()],
            fractions: vec![0.5, 0.5],
            mean_confidence: 1.5,
        });
        assert_invalid(&s, None, "mean_confidence");
        let mut s = valid();
        s.predictions = Some(PredictionReference::Numeric {
            edges: vec![2.0, 1.0],
            fractions: vec![0.2, 0.3, 0.5],
            mean: 1.0,
            std: 1.0,
            sample: vec![1.0],
        });
        assert_invalid(&s, None, "predictions: edges");
    }

    #[test]
    fn a_constant_feature_has_no_edges_and_zero_std() {
        let s = ReferenceStats {
            version: 1,
            rows: 3,
            features: vec![FeatureReference::Numeric {
                name: "c".into(),
                column: 0,
                edges: vec![],
                fractions: vec![1.0],
                mean: 0.1,
                std: 0.0,
                min: 0.1,
                max: 0.1,
                sample: vec![0.1, 0.1, 0.1],
            }],
            predictions: None,
        };
        s.validate(Some(1)).unwrap();
    }

    #[test]
    fn load_reports_io_parse_and_invalid_errors() {
        let dir = std::env::temp_dir().join(format!("contender-reference-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = ReferenceStats::path_in(&dir);
        assert!(path.ends_with("reference.json"));

        let _ = std::fs::remove_file(&path);
        let err = ReferenceStats::load(&path).unwrap_err();
        assert!(matches!(err, ReferenceError::Io { .. }), "{err:?}");

        std::fs::write(
            &path,
            r#"{"version": 1, "rows": 3, "features": [], "extra": 1}"#,
        )
        .unwrap();
        let err = ReferenceStats::load(&path).unwrap_err();
        match &err {
            ReferenceError::Parse { message, .. } => {
                assert!(message.contains("extra"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("reference.json"));

        std::fs::write(
            &path,
            r#"{"version": 1, "rows": 3, "features": [{"kind": "numeric", "name": "x", "column": 0,
                "edges": [1.0], "fractions": [0.5, 0.4], "mean": 1.0, "std": 1.0, "min": 0.0,
                "max": 2.0, "sample": [0.0, 2.0]}], "predictions": null}"#,
        )
        .unwrap();
        let err = ReferenceStats::load(&path).unwrap_err();
        assert!(
            matches!(err, ReferenceError::Invalid(ref m) if m.contains("reference.json")),
            "{err:?}"
        );

        std::fs::write(&path, serde_json::to_vec(&valid()).unwrap()).unwrap();
        assert_eq!(ReferenceStats::load(&path).unwrap(), valid());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every `models/*/*/reference.json` loads, validates against its
    /// `model.toml`, and bins its own sample (the whole training column for
    /// these small data sets) into exactly its fractions — the cross-check of
    /// [`stats::histogram`] against NumPy's `searchsorted(side="left")`.
    #[test]
    fn repository_reference_files_are_valid() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut found = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('_'))
            .collect();
        names.sort();
        for model_dir in names {
            let mut versions: Vec<_> = std::fs::read_dir(&model_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect();
            versions.sort();
            for dir in versions {
                let path = ReferenceStats::path_in(&dir);
                if !path.exists() {
                    continue;
                }
                let label = dir
                    .strip_prefix(&models)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let meta: toml::Table =
                    toml::from_str(&std::fs::read_to_string(dir.join("model.toml")).unwrap())
                        .unwrap();
                let strings = |key: &str| -> Vec<String> {
                    meta.get(key)
                        .and_then(|v| v.as_array())
                        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                        .unwrap_or_default()
                };
                let feature_names = strings("feature_names");
                let reference = ReferenceStats::load(&path).unwrap_or_else(|e| panic!("{e}"));
                reference.validate(Some(feature_names.len())).unwrap();
                assert_eq!(reference.features.len(), feature_names.len(), "{label}");
                for (i, feature) in reference.features.iter().enumerate() {
                    assert_eq!(feature.column(), i, "{label}");
                    assert_eq!(feature.name(), feature_names[i], "{label}");
                    let FeatureReference::Numeric {
                        fractions, sample, ..
                    } = feature
                    else {
                        panic!("{label}: {} is not numeric", feature.name());
                    };
                    assert_series(&label, fractions, sample, reference.rows);
                }
                match (
                    &reference.predictions,
                    meta.get("task").and_then(|t| t.as_str()),
                ) {
                    (Some(PredictionReference::Classes { labels, .. }), Some("classification")) => {
                        assert_eq!(labels, &strings("labels"), "{label}");
                    }
                    (
                        Some(PredictionReference::Numeric {
                            fractions, sample, ..
                        }),
                        Some("regression"),
                    ) => assert_series(&label, fractions, sample, reference.rows),
                    (p, task) => panic!("{label}: predictions {p:?} for task {task:?}"),
                }
                found.push(label);
            }
        }
        let want = [
            "breast_cancer/1",
            "breast_cancer/2",
            "breast_cancer/3",
            "breast_cancer/4",
            "diabetes/1",
        ];
        assert_eq!(found, want);
        let bc = ReferenceStats::load(&models.join("breast_cancer/1/reference.json")).unwrap();
        assert_eq!(bc.features.len(), 30);
        assert_eq!(
            bc.feature("mean radius").map(FeatureReference::column),
            Some(0)
        );
    }

    /// What `generate.py` promises beyond [`ReferenceStats::validate`]: no
    /// empty training bin, a subsample of at most 1000 rows.
    fn assert_series(label: &str, fractions: &[f64], sample: &[f64], rows: u64) {
        assert!(
            fractions.iter().all(|&f| f > 0.0),
            "{label}: empty bin in {fractions:?}"
        );
        assert!(
            sample.len() <= 1000 && sample.len() as u64 <= rows,
            "{label}"
        );
    }

    /// The held-out rows binned with the reference edges, and every drift
    /// statistic against the reference, as NumPy/SciPy compute them. The
    /// columns chosen have many held-out values exactly on an edge (diabetes
    /// `sex` and `s4` are discrete; `s4` has merged edges, `sex` a single
    /// one), where right-closed bins matter. Python:
    ///
    /// ```python
    /// ref = json.load(open(f"models/{model}/reference.json"))["features"][col]
    /// x = np.asarray(json.load(open(holdout))["features"])[:, col].astype(np.float32).astype(float)
    /// c = np.bincount(np.searchsorted(ref["edges"], x, side="left"), minlength=len(ref["edges"]) + 1)
    /// fr = np.array(ref["fractions"]); a = c / c.sum()   # no zero bins here
    /// psi = np.sum((a - fr) * np.log(a / fr))
    /// ks = scipy.stats.ks_2samp(ref["sample"], x, method="asymp")
    /// chi = scipy.stats.chisquare(c, fr / fr.sum() * c.sum())
    /// js = scipy.spatial.distance.jensenshannon(fr, c, base=2)
    /// w = scipy.stats.wasserstein_distance(ref["sample"], x) / ref["std"]
    /// ```
    #[test]
    fn holdout_drift_matches_numpy_and_scipy() {
        struct Case {
            model: &'static str,
            holdout: &'static str,
            column: usize,
            counts: &'static [u64],
            psi: f64,
            ks: (f64, f64),
            chi2: (f64, f64),
            js: f64,
            wasserstein: f64,
        }
        let cases = [
            Case {
                model: "diabetes/1",
                holdout: "_data/diabetes_holdout.json",
                column: 1, // sex
                counts: &[60, 51],
                psi: 0.000563435911606982,
                ks: (0.02299537106166938, 0.9999999999965382),
                chi2: (0.0624443124443123, 0.8026734994368862),
                js: 0.010079972371844232,
                wasserstein: 0.04606669889541511,
            },
            Case {
                model: "diabetes/1",
                holdout: "_data/diabetes_holdout.json",
                column: 7, // s4
                counts: &[39, 4, 30, 25, 9, 4],
                psi: 0.03203282884482186,
                ks: (0.06301328953262653, 0.9308156856499974),
                chi2: (3.2890498547998543, 0.6555185570168003),
                js: 0.07571531524995502,
                wasserstein: 0.10131619651983943,
            },
            Case {
                model: "breast_cancer/1",
                holdout: "_data/breast_cancer_holdout.json",
                column: 8, // mean symmetry
                counts: &[11, 12, 15, 11, 12, 9, 18, 24, 17, 14],
                psi: 0.08101283523847945,
                ks: (0.18298368298368295, 0.08620584458825864),
                chi2: (12.648072857375183, 0.17918776313354595),
                js: 0.12040326567292323,
                wasserstein: 0.17268337246138865,
            },
        ];
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let close = |got: f64, want: f64, rtol: f64| {
            assert!(
                (got - want).abs() <= rtol * want.abs(),
                "got {got:e}, want {want:e}"
            );
        };
        for case in cases {
            let reference = ReferenceStats::load(&models.join(case.model).join(FILE_NAME)).unwrap();
            let holdout: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(models.join(case.holdout)).unwrap())
                    .unwrap();
            // float32 values, as the gateway receives them
            let live: Vec<f64> = holdout["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row[case.column].as_f64().unwrap() as f32 as f64)
                .collect();
            let Some(FeatureReference::Numeric {
                edges,
                fractions,
                std,
                sample,
                ..
            }) = reference.features.get(case.column)
            else {
                panic!("no numeric feature {}", case.column);
            };
            let counts = stats::histogram(edges, live.iter().copied());
            assert_eq!(counts, case.counts, "{} column {}", case.model, case.column);
            let on_edges = live.iter().filter(|v| edges.contains(v)).count();
            assert!(
                case.column == 8 || on_edges > 50,
                "{on_edges} values on edges"
            );
            close(stats::psi(fractions, &counts).unwrap(), case.psi, 1e-12);
            let (d, p) = stats::ks_2samp(sample, &live).unwrap();
            close(d, case.ks.0, 1e-12);
            close(p, case.ks.1, 1e-9);
            let (chi2, p) = stats::chi_square(fractions, &counts).unwrap();
            close(chi2, case.chi2.0, 1e-12);
            close(p, case.chi2.1, 1e-9);
            let live_counts: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            close(
                stats::jensen_shannon(fractions, &live_counts).unwrap(),
                case.js,
                1e-12,
            );
            close(
                stats::wasserstein_normalised(sample, &live, *std).unwrap(),
                case.wasserstein,
                1e-10,
            );
        }
    }
}
