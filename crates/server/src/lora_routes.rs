//! Serving adapters: how a request's `model` field selects the base or a LoRA adapter,
//! the adapters' `/v1/models` entries, and vLLM's run-time endpoints
//! `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter` (same body fields).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{parse_body, ApiError};
use crate::lora::{AddError, ServedAdapter};
use crate::routes::{body_bytes, loaded};
use crate::{AppState, Loaded};

type St = State<Arc<AppState>>;

/// OpenAI's answer for a model that is not served.
fn model_not_found(name: &str) -> ApiError {
    let shown: String = name.chars().take(128).collect();
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("The model `{shown}` does not exist."),
        kind: "invalid_request_error",
        param: Some("model".into()),
        code: Some("model_not_found"),
    }
}

/// The id to report and the adapter to run with for a request's `model` field: absent or
/// empty, the base model's id or one of its names select the base; an adapter's name
/// selects it; anything else is a 404.
pub fn select_model(
    l: &Loaded,
    model: Option<&str>,
) -> Result<(String, Option<Arc<ServedAdapter>>), ApiError> {
    let Some(name) = model.filter(|m| !m.is_empty()) else {
        return Ok((l.info.id.clone(), None));
    };
    if l.adapters.is_base(name) {
        return Ok((l.info.id.clone(), None));
    }
    match l.adapters.get(name) {
        Some(a) => Ok((a.name.clone(), Some(a))),
        None => Err(model_not_found(name)),
    }
}

/// Count an accepted generation request against its adapter.
pub fn count_request(adapter: Option<&ServedAdapter>) {
    if let Some(a) = adapter {
        a.counters.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// `/v1/models` entries of the served adapters (vLLM's `parent` and `root`, plus the
/// root digest of the adapter's path, as the base has). vLLM's `root` is the adapter's
/// path; here it is its name: nothing a client sees reveals the server's file system.
pub fn model_entries(l: &Loaded, created: u64) -> Vec<Value> {
    l.adapters
        .list()
        .iter()
        .map(|a| {
            json!({
                "id": a.name,
                "object": "model",
                "created": created,
                "owned_by": "verity",
                "parent": l.info.id,
                "root": a.name,
                "root_digest": a.digest,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    lora_name: String,
    lora_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadRequest {
    lora_name: String,
    /// vLLM's clients may send it; names identify adapters here.
    #[serde(default)]
    #[allow(dead_code)]
    lora_int_id: Option<i64>,
}

/// vLLM answers these endpoints with a line of text.
fn success(text: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], text).into_response()
}

/// The run-time adapter API is off (it reads paths a client names).
fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "loading and unloading adapters at run time is off; start verity serve with --allow-lora-loading",
    )
}

/// `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: read, check and bind the
/// adapter off the async runtime, then serve it under the name. Any problem with the
/// file is a 400 naming it; the server keeps serving.
pub async fn load(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let l = loaded(&state)?;
    let loader = l.adapters.loader().ok_or_else(disabled)?;
    let req: LoadRequest = parse_body(&bytes)?;
    if req.lora_path.is_empty() {
        return Err(ApiError::bad_request(
            "'lora_path' must name a PEFT directory or a GGUF LoRA file",
            Some("lora_path"),
        ));
    }
    let reservation = l.adapters.reserve(&req.lora_name).map_err(|e| {
        let err = ApiError::bad_request(e.to_string(), Some("lora_name"));
        match e {
            AddError::Duplicate(_) => err.with_code("adapter_exists"),
            AddError::BadName(_) => err,
        }
    })?;
    let path = PathBuf::from(&req.lora_path);
    let to_read = path.clone();
    let read = tokio::task::spawn_blocking(move || loader(&to_read))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("loading the adapter failed: {e}"),
            )
        })?;
    let (adapter, digest) = read.map_err(|msg| ApiError::bad_request(msg, Some("lora_path")))?;
    reservation.commit(path, digest, adapter);
    Ok(success(format!(
        "Success: LoRA adapter '{}' added successfully.",
        req.lora_name
    )))
}

/// `POST /v1/unload_lora_adapter {"lora_name"}`: new requests for the adapter get 404 at
/// once; the answer comes when the requests already using it have finished.
pub async fn unload(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let l = loaded(&state)?;
    if l.adapters.loader().is_none() {
        return Err(disabled());
    }
    let req: UnloadRequest = parse_body(&bytes)?;
    if l.adapters.unload(&req.lora_name).await.is_none() {
        return Err(model_not_found(&req.lora_name));
    }
    Ok(success(format!(
        "Success: LoRA adapter '{}' removed successfully.",
        req.lora_name
    )))
}
