//! contender: a champion–challenger model-serving gateway speaking the Open
//! Inference Protocol (KServe V2).

pub mod cli;
mod cli_remote;
pub mod clock;
pub mod config;
pub mod deployment;
pub mod drift;
pub mod evaluation;
pub mod protocol;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod traffic;

pub use config::Config;
