//! Evaluation: joining labels to every model's prediction, per-model metrics,
//! and the statistical comparison of challengers with the champion.

pub mod metrics;

mod evaluator;
pub mod prediction;

pub use evaluator::{
    Comparison, ComparisonSnapshot, DeploymentEvalSnapshot, Evaluator, ModelEval,
    ModelEvalSnapshot, ModelKey, PairKey, SegmentEvidence, key_label,
};
pub mod sequential;
