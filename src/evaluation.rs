//! Evaluation: joining labels to every model's prediction, per-model metrics,
//! and the statistical comparison of challengers with the champion.

pub mod metrics;
