//! Admin API: deployments, their challengers and what is known of each model.
//!
//! - `GET /admin/deployments` — every deployment, summarised, and under
//!   `gateway` the gateway-wide prediction-log counters
//! - `GET /admin/deployments/{name}` — champion, challengers (mode, share,
//!   queue, drops, errors), metrics per model per window, label coverage,
//!   agreement with the champion, and under `gateway` what every deployment
//!   shares (the prediction log's counters)
//! - `POST /admin/deployments/{name}/challengers` — add a challenger
//!   (`{"model", "version", "mode": "shadow"|"canary", "fraction", "workers",
//!   "queue_capacity", "timeout_ms", "low_priority", "by"?, "reason"?}`); it is
//!   loaded, validated and warmed before it takes traffic, and a failure
//!   changes nothing
//! - `DELETE /admin/deployments/{name}/challengers/{model}/{version}` —
//!   `?by=…&reason=…` or a JSON body `{"by"?, "reason"?}`
//! - `POST /admin/deployments/{name}/promote` — `{"model", "version"?, "by"?,
//!   "reason"?}`: a challenger becomes the champion (atomic swap)
//! - `POST /admin/deployments/{name}/rollback` — `{"by"?, "reason"?}`
//! - `GET /admin/deployments/{name}/history` — the audit trail
//! - `GET /admin/deployments/{name}/drift` — drift scores per feature and
//!   prediction, accuracy decay, states, alerts and retraining events

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::config::{ChallengerConfig, ModelRef};
use crate::deployment::promotion::{ChangeNote, Trigger};
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
        v["low_priority"] = json!(c.low_priority);
        if !c.slice.is_empty() {
            v["slice"] = json!(c.slice);
        }
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
                    "workers": c.workers, "queue_capacity": c.queue_capacity,
                    "timeout_ms": c.timeout_ms, "low_priority": c.low_priority,
                    "slice": c.slice,
                    "live": false,
                    "reason": d.down_reason(&c.model_ref())
                        .unwrap_or_else(|| "not in the live set".into()),
                    "stats": d.member_stats(&c.model_ref()).snapshot(),
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
    json!({
        "name": d.name,
        "ready": live.is_some(),
        "champion": champion,
        "challengers": challengers,
        "routing": state.routing,
        "promotion": {
            "policy": state.promotion,
            "previous_champion": d.runtime().previous,
            "blocked": d.runtime().blocked,
            "recommendation": d.runtime().recommendation,
            "refused": d.runtime().refused,
        },
        "evaluation": g.evaluator().snapshot(&d.name),
    })
}

/// What is shared by every deployment: the prediction log (one for the
/// whole gateway; its counters are not per deployment).
pub fn gateway_json(g: &Gateway) -> Value {
    let counters = g.store().counters();
    json!({
        "prediction_log": {
            "rows": counters.rows.load(Ordering::Relaxed),
            "dropped": counters.dropped.load(Ordering::Relaxed),
            "write_failed": counters.write_failed.load(Ordering::Relaxed),
            "duplicate_ids": counters.duplicate_ids.load(Ordering::Relaxed),
            "evicted": counters.evicted.load(Ordering::Relaxed),
        },
    })
}

pub async fn list(State(s): Shared) -> Json<Value> {
    let g = &s.gateway;
    let deployments: Vec<Value> = g.deployments().map(|d| deployment_json(g, d)).collect();
    Json(json!({ "deployments": deployments, "gateway": gateway_json(g) }))
}

fn find<'a>(g: &'a Gateway, name: &str) -> Result<&'a Deployment, ApiError> {
    g.deployment(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown deployment '{name}'")))
}

pub async fn detail(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let d = find(&s.gateway, &name)?;
    let mut v = deployment_json(&s.gateway, d);
    v["gateway"] = gateway_json(&s.gateway);
    Ok(Json(v))
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

/// A `by` or `reason` field: a string (empty = not given) or null.
fn note_field(v: Option<Value>, key: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
        Some(other) => Err(ApiError::invalid(format!(
            "malformed challenger: '{key}' must be a string, not {other}"
        ))),
    }
}

pub async fn add_challenger(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    find(&s.gateway, &name)?;
    let malformed = |e: serde_json::Error| ApiError::invalid(format!("malformed challenger: {e}"));
    // `by` and `reason` are about the change; the rest is the challenger.
    let mut fields = match serde_json::from_slice::<Value>(&body).map_err(malformed)? {
        Value::Object(fields) => fields,
        other => {
            return Err(ApiError::invalid(format!(
                "malformed challenger: expected an object, not {other}"
            )));
        }
    };
    let note = ChangeNote {
        by: note_field(fields.remove("by"), "by")?,
        reason: note_field(fields.remove("reason"), "reason")?,
    };
    let c: ChallengerConfig = serde_json::from_value(Value::Object(fields)).map_err(malformed)?;
    c.validate("challenger")
        .map_err(|e| ApiError::invalid(format!("{}: {}", e.key, e.reason)))?;
    s.gateway
        .add_challenger(&name, c, note)
        .await
        .map_err(change_error)?;
    let d = find(&s.gateway, &name)?;
    Ok((StatusCode::CREATED, Json(deployment_json(&s.gateway, d))).into_response())
}

/// Who removes a challenger and why: `?by=…&reason=…`, or a JSON body
/// `{"by"?, "reason"?}` (not both).
fn removal_note(uri: &http::Uri, body: &[u8]) -> Result<ChangeNote, ApiError> {
    let query = Query::<ChangeNote>::try_from_uri(uri)
        .map_err(|e| ApiError::invalid(format!("malformed query: {}", e.body_text())))?
        .0;
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        query
    } else {
        if query != ChangeNote::default() {
            return Err(ApiError::invalid(
                "give 'by' and 'reason' in the query or in the body, not both",
            ));
        }
        note_body(body, "removal")?
    };
    Ok(ChangeNote {
        by: note.by.filter(|s| !s.is_empty()),
        reason: note.reason.filter(|s| !s.is_empty()),
    })
}

pub async fn remove_challenger(
    State(s): Shared,
    Path((name, model, version)): Path<(String, String, String)>,
    uri: http::Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    find(&s.gateway, &name)?;
    let version: u64 = version
        .parse()
        .map_err(|_| ApiError::invalid(format!("version {version:?} is not a positive integer")))?;
    let note = removal_note(&uri, &body)?;
    s.gateway
        .remove_challenger(&name, &ModelRef { model, version }, note)
        .await
        .map_err(change_error)?;
    let d = find(&s.gateway, &name)?;
    Ok(Json(deployment_json(&s.gateway, d)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    model: String,
    version: Option<u64>,
    by: Option<String>,
    reason: Option<String>,
}

/// A body `{"by"?, "reason"?}` (blank: neither), for the change `what`.
fn note_body(body: &[u8], what: &str) -> Result<ChangeNote, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ChangeNote::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed {what}: {e}")))
}

pub async fn promote(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let d = find(&s.gateway, &name)?;
    let b: PromoteBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed promotion: {e}")))?;
    let state = d.state();
    let target = match b.version {
        Some(version) => ModelRef {
            model: b.model,
            version,
        },
        None => {
            let matching: Vec<ModelRef> = state
                .challengers
                .iter()
                .map(|c| c.model_ref())
                .filter(|r| r.model == b.model)
                .collect();
            match matching.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::not_found(format!(
                        "'{}' is not a challenger of '{name}'",
                        b.model
                    )));
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "several versions of '{}' challenge '{name}'; give the version",
                        b.model
                    )));
                }
            }
        }
    };
    let evidence = s
        .gateway
        .evaluator()
        .comparisons(&name)
        .into_iter()
        .find(|c| {
            c.key.0 == (state.champion.model.clone(), state.champion.version)
                && c.key.1 == (target.model.clone(), target.version)
        })
        .and_then(|c| serde_json::to_value(c).ok());
    let reason = b.reason.unwrap_or_else(|| "promoted by hand".into());
    s.gateway
        .promote(&name, &target, Trigger::Person(b.by), reason, evidence)
        .await
        .map_err(change_error)?;
    Ok(Json(deployment_json(&s.gateway, d)))
}

pub async fn rollback(
    State(s): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let d = find(&s.gateway, &name)?;
    let b = note_body(&body, "rollback")?;
    let reason = b.reason.unwrap_or_else(|| "rolled back by hand".into());
    s.gateway
        .rollback(&name, Trigger::Person(b.by), reason, None)
        .await
        .map_err(change_error)?;
    Ok(Json(deployment_json(&s.gateway, d)))
}

pub async fn history(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    find(&s.gateway, &name)?;
    let records = s.gateway.history(&name).map_err(change_error)?;
    Ok(Json(json!({ "deployment": name, "history": records })))
}

pub async fn drift(State(s): Shared, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let d = find(&s.gateway, &name)?;
    let mut report = serde_json::to_value(s.gateway.drift().report(&name)).unwrap_or(Value::Null);
    report["enabled"] = json!(d.state().drift.enabled);
    Ok(Json(report))
}
