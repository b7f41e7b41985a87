//! `POST /v2/models/{deployment}/feedback`: labels for earlier requests.
//!
//! Body: one label `{"id": "...", "label": ..., "row": 0}` (`row` defaults to
//! 0; use it for batch requests), or a batch — a JSON array of them, or
//! `{"labels": [...]}`. `label` is a class index or class name for
//! classifiers, a number for regressors.
//!
//! A body that is not of that shape is refused as a whole with 400 and
//! nothing is stored: malformed JSON, or any item that is not an object with
//! a non-empty string `id`, a non-null `label` and optionally a non-negative
//! integer `row` and nothing else (the error names the item's index in a
//! batch).
//!
//! A 2xx answer means the labels are durable. Each well-formed label is:
//! `accepted` (stored and joined to every model's prediction still in the
//! log, including predictions logged after it; when the served answer's row
//! is gone but others remain, its `message` says so), `duplicate` (the same label was already
//! stored: counted once), `conflict` (a different label is already stored:
//! refused, never overwritten), `unknown_id` (no prediction for that id and
//! row: never served here, or removed by retention or the size cap before
//! the label came), `expired` (the predictions are past the retention
//! window) or `invalid` (the label does not fit the task: not
//! a class, not a finite number, out of range). When the store cannot be
//! written (locked by another process, read-only, disk full) the request
//! answers 503 with the store's reason, and nothing is stored. A single label answers 200 for
//! accepted/duplicate and the matching error status otherwise (409, 404,
//! 410, 400); a batch answers 200 with a result per item, never dropping one
//! silently.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{AppState, body};
use crate::protocol::{ApiError, ErrorKind};
use crate::store::{FeedbackItem, FeedbackResult, FeedbackStatus, StoreError};

/// Most labels accepted in one request.
pub const MAX_BATCH: usize = 10_000;

pub async fn feedback(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let g = &s.gateway;
    let d = g.deployment(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown deployment '{name}' (feedback goes to a deployment)"
        ))
    })?;
    let bytes = body::read(&headers, body, &g.config().server).await?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
    let (single, raw) = match doc {
        Value::Array(items) => (false, items),
        Value::Object(mut o) if o.contains_key("labels") => match o.remove("labels") {
            Some(Value::Array(items)) => (false, items),
            _ => {
                return Err(ApiError::invalid(
                    "'labels' must be an array of {\"id\", \"label\"} objects",
                ));
            }
        },
        v @ Value::Object(_) => (true, vec![v]),
        _ => {
            return Err(ApiError::invalid(
                "feedback is a {\"id\", \"label\"} object or an array of them",
            ));
        }
    };
    if raw.is_empty() {
        return Err(ApiError::invalid("no labels given"));
    }
    if raw.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("{} labels in one request; at most {MAX_BATCH}", raw.len()),
        ));
    }
    // A malformed item refuses the whole request: nothing is stored.
    let items = raw
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            parse_item(v).map_err(|message| {
                ApiError::invalid(if single {
                    message
                } else {
                    format!("labels[{i}]: {message}; nothing was stored")
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let class_names = d
        .live()
        .map(|l| l.champion.model.entry.metadata.labels.clone())
        .unwrap_or_default();
    let results = g
        .store()
        .feedback(&name, class_names, items)
        .await
        .map_err(|e| match e {
            // Nothing was stored; the store says why, and a retry may succeed.
            StoreError::Busy(_) | StoreError::Stopped | StoreError::Unavailable(_) => {
                ApiError::unavailable(e.to_string())
            }
            other => ApiError::internal(&other),
        })?;
    crate::telemetry::feedback(&name, &results);
    if single {
        let r = &results[0];
        let status = match r.status {
            FeedbackStatus::Accepted | FeedbackStatus::Duplicate => StatusCode::OK,
            FeedbackStatus::Conflict => return Err(ApiError::new(ErrorKind::Conflict, message(r))),
            FeedbackStatus::UnknownId => return Err(ApiError::not_found(message(r))),
            FeedbackStatus::Expired => return Err(ApiError::new(ErrorKind::Gone, message(r))),
            FeedbackStatus::Invalid => return Err(ApiError::invalid(message(r))),
        };
        return Ok((status, Json(json!(r))).into_response());
    }
    let count = |st: FeedbackStatus| results.iter().filter(|r| r.status == st).count();
    let summary = json!({
        "accepted": count(FeedbackStatus::Accepted),
        "duplicate": count(FeedbackStatus::Duplicate),
        "conflict": count(FeedbackStatus::Conflict),
        "unknown_id": count(FeedbackStatus::UnknownId),
        "expired": count(FeedbackStatus::Expired),
        "invalid": count(FeedbackStatus::Invalid),
    });
    Ok(Json(json!({ "summary": summary, "results": results })).into_response())
}

fn message(r: &FeedbackResult) -> String {
    format!(
        "id {:?} row {}: {}",
        r.id,
        r.row,
        r.message
            .clone()
            .unwrap_or_else(|| format!("{:?}", r.status))
    )
}

/// What a JSON value is, for messages (never the value itself).
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One item's shape; the label's value is checked against the task later.
fn parse_item(v: Value) -> Result<FeedbackItem, String> {
    let Value::Object(mut o) = v else {
        return Err(format!(
            "a label is a {{\"id\", \"label\"}} object, not {}",
            json_kind(&v)
        ));
    };
    let id = match o.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err("'id' must be a non-empty string".into()),
        Some(other) => {
            return Err(format!(
                "'id' must be a non-empty string, not {}",
                json_kind(&other)
            ));
        }
        None => return Err("missing 'id' (the request id the infer response returned)".into()),
    };
    let row = match o.remove("row") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(r) => r,
            None => return Err(format!("id {id:?}: 'row' must be a non-negative integer")),
        },
    };
    let label = match o.remove("label") {
        Some(Value::Null) | None => return Err(format!("id {id:?}: missing 'label'")),
        Some(l) => l,
    };
    if let Some(extra) = o.keys().next() {
        return Err(format!(
            "id {id:?}: unknown field '{extra}' (expected id, row, label)"
        ));
    }
    Ok(FeedbackItem { id, row, label })
}
