//! Drift monitoring: reference statistics shipped with each model version,
//! drift scores of live inputs and predictions against them, and alerts.
pub mod monitor;
pub mod notify;
pub mod reference;
pub mod stats;
