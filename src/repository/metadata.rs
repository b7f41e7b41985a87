//! `model.toml`: what a model file cannot say about itself — task, class
//! labels, lineage, training metrics, engine settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ModelSettings;
use crate::protocol::TensorSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classification,
    Regression,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }
}

/// Where the model came from.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lineage {
    /// Where the training data lives (URI or description).
    pub training_data_uri: Option<String>,
    /// SHA-256 of the training data, hex.
    pub training_data_sha256: Option<String>,
    /// The program that trained the model.
    pub training_code: Option<String>,
    /// Its revision (VCS revision or content hash).
    pub training_code_revision: Option<String>,
    /// Training framework and versions.
    pub framework: Option<String>,
}

/// Contents of `model.toml`. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelMetadata {
    pub description: Option<String>,
    pub task: Option<Task>,
    /// Class labels, index = class id (classification only).
    pub labels: Vec<String>,
    pub tags: Vec<String>,
    /// Creation time, RFC 3339.
    pub created: Option<String>,
    /// Names of the input's columns, in order.
    pub feature_names: Vec<String>,
    pub lineage: Lineage,
    /// Metrics measured at training time (held-out), by name.
    pub metrics: BTreeMap<String, f64>,
    /// Engine settings for this model (overridable in the gateway config).
    pub runtime: ModelSettings,
    /// Declared inputs, for formats that carry no typed signature (TorchScript).
    pub inputs: Vec<TensorSpec>,
    /// Declared outputs, in the order the model returns them.
    pub outputs: Vec<TensorSpec>,
}

impl ModelMetadata {
    /// Parses and checks a `model.toml` text.
    pub fn parse(text: &str) -> Result<ModelMetadata, String> {
        let meta: ModelMetadata =
            toml::from_str(text).map_err(|e| e.message().to_owned() + &location(&e, text))?;
        meta.check()?;
        Ok(meta)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(created) = &self.created {
            humantime::parse_rfc3339_weak(created.trim_end_matches('Z'))
                .map_err(|e| format!("`created`: {created:?} is not an RFC 3339 time ({e})"))?;
        }
        if let Some(hash) = &self.lineage.training_data_sha256
            && !(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "`lineage.training_data_sha256`: {hash:?} is not a hex SHA-256"
            ));
        }
        if !self.labels.is_empty() && self.task != Some(Task::Classification) {
            return Err("`labels` is only meaningful with task = \"classification\"".into());
        }
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, spec) in specs.iter().enumerate() {
                if spec.name.is_empty() {
                    return Err(format!("`{kind}[{i}]`: empty name"));
                }
                if specs[..i].iter().any(|s| s.name == spec.name) {
                    return Err(format!("`{kind}`: '{}' is declared twice", spec.name));
                }
                if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                    return Err(format!(
                        "`{kind}` '{}': dimensions are positive, or -1 for a variable one",
                        spec.name
                    ));
                }
            }
        }
        for (name, value) in &self.metrics {
            if !value.is_finite() {
                return Err(format!("`metrics.{name}` is not a finite number"));
            }
        }
        Ok(())
    }
}

fn location(e: &toml::de::Error, text: &str) -> String {
    e.span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_metadata_parses() {
        let meta = ModelMetadata::parse(
            r#"
description = "d"
task = "classification"
labels = ["a", "b"]
tags = ["t"]
created = "2026-11-28T00:00:00Z"
feature_names = ["x", "y"]
[lineage]
training_data_uri = "sklearn.datasets.load_breast_cancer"
training_data_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[metrics]
accuracy = 0.97
[runtime]
instances = 2
execution = "pool"
"#,
        )
        .unwrap();
        assert_eq!(meta.task, Some(Task::Classification));
        assert_eq!(meta.runtime.instances, Some(2));
        assert_eq!(meta.metrics["accuracy"], 0.97);
    }

    #[test]
    fn bad_metadata_says_why() {
        assert!(
            ModelMetadata::parse("task = \"ranking\"")
                .unwrap_err()
                .contains("ranking")
        );
        assert!(
            ModelMetadata::parse("colour = 1")
                .unwrap_err()
                .contains("colour")
        );
        assert!(
            ModelMetadata::parse("created = \"yesterday\"")
                .unwrap_err()
                .contains("created")
        );
        assert!(
            ModelMetadata::parse("[lineage]\ntraining_data_sha256 = \"abc\"")
                .unwrap_err()
                .contains("sha256")
        );
        assert!(
            ModelMetadata::parse("labels = [\"a\"]")
                .unwrap_err()
                .contains("labels")
        );
    }
}
