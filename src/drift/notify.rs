//! Delivering drift alerts and retraining events: JSON POSTs to the
//! deployment's webhooks (with retries and exponential back-off) and, for
//! `retrain_recommended`, the configured command with the event on stdin.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Receiver;

use super::monitor::Notice;
use crate::config::DriftConfig;

/// Longest a retraining command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Delivers notices until the channel closes.
pub async fn run(mut rx: Receiver<Notice>, configs: BTreeMap<String, DriftConfig>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; drift notices will not be delivered");
            return;
        }
    };
    while let Some(n) = rx.recv().await {
        let Some(cfg) = configs.get(&n.deployment) else {
            continue;
        };
        for url in &cfg.webhooks {
            let client = client.clone();
            let url = url.clone();
            let event = n.event.clone();
            let attempts = cfg.webhook_attempts.max(1);
            tokio::spawn(async move { deliver(&client, &url, &event, attempts).await });
        }
        if n.retrain && !cfg.retrain_command.is_empty() {
            let command = cfg.retrain_command.clone();
            let event = n.event.clone();
            tokio::spawn(async move { run_command(&command, &event).await });
        }
    }
}

async fn deliver(client: &reqwest::Client, url: &str, event: &serde_json::Value, attempts: u32) {
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=attempts {
        match client.post(url).json(event).send().await {
            Ok(r) if r.status().is_success() => {
                crate::telemetry::webhook("delivered");
                return;
            }
            Ok(r) => {
                tracing::warn!(url, status = %r.status(), attempt, "webhook refused the event")
            }
            Err(e) => tracing::warn!(url, error = %e, attempt, "webhook unreachable"),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    crate::telemetry::webhook("failed");
    tracing::error!(
        url,
        attempts,
        "webhook delivery failed; the event is kept in the drift report"
    );
}

async fn run_command(command: &[String], event: &serde_json::Value) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(program, error = %e, "cannot start the retraining command");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let body = serde_json::to_vec(event).expect("events serialise");
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            tracing::info!(program, "retraining command finished")
        }
        Ok(Ok(status)) => tracing::error!(program, %status, "retraining command failed"),
        Ok(Err(e)) => tracing::error!(program, error = %e, "retraining command failed"),
        Err(_) => tracing::error!(program, "retraining command timed out; killed"),
    }
}
