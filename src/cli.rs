//! The `contender` command line: `serve`, `models list`, `validate`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, ModelSettings};
use crate::deployment::{StartError, load_model};
use crate::repository::{self, ModelEntry, Repository};
use crate::server::{BindError, Server, shutdown_signal};
use crate::telemetry;

/// Exit status for a bad configuration or command line (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "contender",
    version,
    about = "Champion–challenger model-serving gateway (Open Inference Protocol)"
)]
pub struct Cli {
    /// Configuration file [default: ./contender.toml when present].
    #[arg(long, short, global = true, env = "CONTENDER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the configured deployments over HTTP (Open Inference Protocol).
    Serve {
        /// Listen address, overriding server.http_addr.
        #[arg(long)]
        http_addr: Option<SocketAddr>,
    },
    /// Inspect the model repository.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Check a model version directory (…/<name>/<version>/): load it, warm it
    /// up and print its signature.
    Validate {
        /// The version directory.
        path: PathBuf,
    },
    /// Make a challenger the champion (atomic swap; the old champion keeps
    /// shadowing for instant rollback).
    Promote {
        deployment: String,
        /// MODEL or MODEL@VERSION (a current challenger).
        model: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the previous champion the champion again.
    Rollback {
        deployment: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The audit trail: promotions, rollbacks, refusals, challenger changes.
    History {
        deployment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drift of a deployment's inputs, predictions and accuracy; alerts.
    Drift {
        deployment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show deployments: champion, challengers, traffic, metrics per model.
    Status {
        /// One deployment (default: all).
        deployment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Where a running gateway is.
#[derive(clap::Args, Debug, Clone)]
pub struct Remote {
    /// The gateway's base URL [default: from server.http_addr in the config].
    #[arg(long, env = "CONTENDER_URL")]
    pub url: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List every model version, and every entry skipped with its reason.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match cli.command {
        Command::Serve { http_addr } => serve(config, http_addr),
        Command::Models {
            command: ModelsCommand::List { json },
        } => list_models(&config, json),
        Command::Validate { path } => validate(&config, &path),
        Command::Promote {
            deployment,
            model,
            reason,
            remote,
        } => crate::cli_remote::promote(&config, &deployment, &model, reason, &remote),
        Command::Rollback {
            deployment,
            reason,
            remote,
        } => crate::cli_remote::rollback(&config, &deployment, reason, &remote),
        Command::Drift { deployment, remote } => {
            crate::cli_remote::drift(&config, &deployment, &remote)
        }
        Command::History { deployment, remote } => {
            crate::cli_remote::history(&config, &deployment, &remote)
        }
        Command::Status { deployment, remote } => {
            crate::cli_remote::status(&config, deployment.as_deref(), &remote)
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("contender: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn serve(mut config: Config, http_addr: Option<SocketAddr>) -> ExitCode {
    if let Some(addr) = http_addr {
        config.server.http_addr = addr;
    }
    telemetry::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("contender: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(BindError::Start(StartError::Config(e))) => return config_error(&e),
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("contender: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %server.local_addr(), "HTTP (Open Inference Protocol REST) listening");
        match server.run(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

fn list_models(config: &Config, json: bool) -> ExitCode {
    let repo = match Repository::scan(&config.repository.path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("contender: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let models: Vec<_> = repo.entries().map(|e| entry_json(e)).collect();
        let doc = serde_json::json!({ "root": repo.root(), "models": models, "skipped": repo.problems() });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialise")
        );
        return ExitCode::SUCCESS;
    }
    // Roles from the config file (admin changes made at run time are in
    // `contender status`): (model, version, "champion of d" / "shadow in d").
    let mut roles: Vec<(&str, u64, String)> = Vec::new();
    for (d, c) in &config.deployments {
        roles.push((
            c.champion.model.as_str(),
            c.champion.version,
            format!("champion of {d}"),
        ));
        for ch in &c.challengers {
            roles.push((
                ch.model.as_str(),
                ch.version,
                format!("{} in {d}", ch.mode.as_str()),
            ));
        }
    }
    let rows: Vec<[String; 7]> = repo
        .entries()
        .map(|e| {
            let deployed: Vec<&str> = roles
                .iter()
                .filter(|(m, v, _)| *m == e.name && *v == e.version)
                .map(|(_, _, role)| role.as_str())
                .collect();
            let meta = &e.metadata;
            [
                e.name.clone(),
                e.version.to_string(),
                format!("{:?}", e.format).to_lowercase(),
                meta.task
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_else(|| "-".into()),
                meta.metrics
                    .iter()
                    .take(2)
                    .map(|(k, v)| format!("{k}={v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                if deployed.is_empty() {
                    "-".into()
                } else {
                    deployed.join(", ")
                },
                meta.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "VERSION",
        "FORMAT",
        "TASK",
        "METRICS",
        "DEPLOYED",
        "DESCRIPTION",
    ];
    let _ = write_table(&mut out, &header, &rows);
    if !repo.problems().is_empty() {
        let _ = writeln!(out, "\nskipped:");
        for p in repo.problems() {
            let _ = writeln!(out, "  {}: {}", p.path.display(), p.reason);
        }
    }
    ExitCode::SUCCESS
}

fn entry_json(e: &ModelEntry) -> serde_json::Value {
    serde_json::json!({
        "name": e.name,
        "version": e.version,
        "format": e.format,
        "path": e.dir,
        "size_bytes": e.artifact_size(),
        "metadata": e.metadata,
    })
}

fn write_table(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: &[[String; 7]],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn validate(config: &Config, path: &Path) -> ExitCode {
    let entry = match repository::read_entry(path) {
        Ok(e) => Arc::new(e),
        Err(reason) => {
            eprintln!("invalid: {}: {reason}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::runtime::onnx::init(&config.runtime.onnxruntime_library()) {
        eprintln!("contender: {e}");
        return ExitCode::FAILURE;
    }
    let settings = config
        .models
        .get(&entry.name)
        .unwrap_or(&ModelSettings::default())
        .resolve(&entry.metadata.runtime, &config.runtime.defaults);
    let loaded = match load_model(
        Arc::clone(&entry),
        settings,
        config.runtime.inline_budget_us,
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let engine = loaded.model();
    let meta = &entry.metadata;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "valid: {} version {} ({})",
        entry.name,
        entry.version,
        entry.artifact().display()
    );
    let _ = writeln!(out, "platform: {}", engine.platform());
    for (kind, specs) in [("input", engine.inputs()), ("output", engine.outputs())] {
        for s in specs {
            let _ = writeln!(
                out,
                "{kind:<7} {:<16} {:<6} {}",
                s.name,
                s.datatype,
                crate::protocol::shape_string(&s.shape)
            );
        }
    }
    if let Some(task) = meta.task {
        let _ = writeln!(out, "task: {}", task.as_str());
    }
    if !meta.labels.is_empty() {
        let _ = writeln!(out, "labels: {}", meta.labels.join(", "));
    }
    if !meta.feature_names.is_empty() {
        let _ = writeln!(out, "features: {}", meta.feature_names.len());
    }
    if let Some(uri) = &meta.lineage.training_data_uri {
        let _ = writeln!(out, "training data: {uri}");
    }
    if let Some(hash) = &meta.lineage.training_data_sha256 {
        let _ = writeln!(out, "training data sha256: {hash}");
    }
    for (k, v) in &meta.metrics {
        let _ = writeln!(out, "metric {k}: {v}");
    }
    match &loaded.reference {
        Some(r) => {
            let predictions = match &r.predictions {
                Some(crate::drift::reference::PredictionReference::Classes { labels, .. }) => {
                    format!("predicted-class frequencies over {} classes", labels.len())
                }
                Some(crate::drift::reference::PredictionReference::Numeric { .. }) => {
                    "prediction distribution".to_owned()
                }
                None => "no prediction reference".to_owned(),
            };
            let _ = writeln!(
                out,
                "reference statistics: valid; {} features from {} training rows; {predictions}",
                r.features.len(),
                r.rows
            );
        }
        None => {
            let _ = writeln!(
                out,
                "reference statistics: none (reference.json absent: no drift monitoring for it)"
            );
        }
    }
    let plan = loaded.runner.plan();
    let _ = writeln!(
        out,
        "warm-up: {:.1} µs for one row, {:.2} µs per extra row; inline up to {} rows",
        plan.single_row_us, plan.per_row_us, plan.inline_max_rows
    );
    ExitCode::SUCCESS
}
