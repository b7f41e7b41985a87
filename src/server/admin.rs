//! Admin API: deployments, their challengers and what is known of each model.
//!
//! - `GET /admin/deployments` — every deployment, summarised
//! - `GET /admin/deployments/{name}` — champion, challengers (mode, share,
//!   queue, drops, errors), metrics per model per window, label coverage,
//!   agreement with the champion, prediction-log counters
//! - `POST /admin/deployments/{name}/challengers` — add a challenger
//!   (`{"model", "version", "mode": "shadow"|"canary", "fraction", "workers",
//!   "queue_capacity", "timeout_ms"}`); it is loaded, validated and warmed
//!   before it takes traffic, and a failure changes nothing
//! - `DELETE /admin/deployments/{name}/challengers/{model}/{version}`

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::config::{ChallengerConfig, ModelRef};
use crate::deployment::{ChangeError, Deployment, Gateway, Member};
use crate::protocol::{ApiError, ErrorKind};

type Shared = State<Arc<AppState>>;

fn member_json(m: &Member) -> Value {
    let mut v = json!({
        "model": m.model.name(),
        "version": m.model.version(),
        "role": m.role,
        "platform": m.model.model().platform(),
        "stats": m.stats.snapshot(),
        "queue_depth": m.mirror.as_ref().map_or(0, |r| r.queue_depth()),
    });
    if let Some(c) = &m.challenger {
        v["mode"] = json!(c.mode);
        v["fraction"] = json!(c.fraction);
        v["workers"] = json!(c.workers);
        v["queue_capacity"] = json!(c.queue_capacity);
        v["timeout_ms"] = json!(c.timeout_ms);
    }
    v
}

/// Everything known about one deployment.
pub fn deployment_json(g: &Gateway, d: &Deployment) -> Value {
    let state = d.state();
    let live = d.live();
    let challengers: Vec<Value> = state
        .challengers
        .iter()
        .map(|c| {
            let member = live.as_ref().and_then(|l| {
                l.challengers
                    .iter()
                    .find(|m| m.model_ref() == c.model_ref())
            });
            match member {
                Some(m) => {
                    let mut v = member_json(m);
                    v["live"] = json!(true);
                    v
                }
                None => json!({
                    "model": c.model, "version": c.version, "mode": c.mode, "fraction": c.fraction,
                    "live": false, "stats": d.member_stats(&c.model_ref()).snapshot(),
                }),
            }
        })
        .collect();
    let champion = match &live {
        Some(l) => member_json(&l.champion),
        None => {
            json!({ "model": state.champion.model, "version": state.champion.version, "live": false })
        }
    };
    let counters = g.store().counters();
    json!({
        "name": d.name,
        "ready": live.is_some(),
        "champion": champion,
        "challengers": challengers,
        "routing": state.routing,
        "evaluation": g.evaluator().snapshot(&d.name),
        "prediction_log": {
            "rows": counters.rows.load(Ordering::Relaxed),
            "dropped": counters.dropped.load(Ordering::Relaxed),
            "evicted": counters.evicted.load(Ordering::Relaxed),
        },
    })
}

pub async fn list(State(s): Shared) -> Json<Value> {
    let g = &s.gateway;
    let deployments: Vec<Value> = g.deployments().map(|d| deployment_json(g, d)).collect();
    Json(json!({ "deployments": deployments }))
}

fn find<'a>(g: &'a Gateway, name: &str) -> Result<&'a Deployment, ApiError> {
    g.deployment(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown deployment '{name}'")))
}

pub async fn detail(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let d = find(&s.gateway, &name)?;
    Ok(Json(deployment_json(&s.gateway, d)))
}

pub fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotFound(m) => ApiError::not_found(m),
        ChangeError::Invalid(m) => ApiError::invalid(m),
        ChangeError::Unavailable(m) => ApiError::unavailable(m),
        ChangeError::Store(e) => ApiError::new(
            ErrorKind::Unavailable,
            format!("the change was not stored: {e}"),
        ),
    }
}

pub async fn add_challenger(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    find(&s.gateway, &name)?;
    let c: ChallengerConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed challenger: {e}")))?;
    c.validate("challenger")
        .map_err(|e| ApiError::invalid(format!("{}: {}", e.key, e.reason)))?;
    s.gateway
        .add_challenger(&name, c)
        .await
        .map_err(change_error)?;
    let d = find(&s.gateway, &name)?;
    Ok((StatusCode::CREATED, Json(deployment_json(&s.gateway, d))).into_response())
}

pub async fn remove_challenger(
    State(s): Shared,
    Path((name, model, version)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    find(&s.gateway, &name)?;
    let version: u64 = version
        .parse()
        .map_err(|_| ApiError::invalid(format!("version {version:?} is not a positive integer")))?;
    s.gateway
        .remove_challenger(&name, &ModelRef { model, version })
        .await
        .map_err(change_error)?;
    let d = find(&s.gateway, &name)?;
    Ok(Json(deployment_json(&s.gateway, d)))
}
