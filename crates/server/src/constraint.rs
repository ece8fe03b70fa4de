//! Request fields that constrain the output, turned into a compiled [`Grammar`] for the
//! job: chat's `response_format` (`text`, `json_object`, `json_schema`), the Responses
//! API's `text.format`, and the non-standard `grammar` (`{"type": "lark" | "regex",
//! "value": "..."}`) on chat and completions.
//!
//! Compiling runs on a blocking thread (a big schema takes milliseconds to compile, never
//! the runtime's); the model's [`ConstraintFactory`] is built on first use and kept in
//! [`Loaded`].

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value};
use verity_constraint::{ConstraintFactory, Grammar};

use crate::api::ApiError;
use crate::Loaded;

/// The factory for the loaded model, built on first use.
pub(crate) async fn factory(l: &Loaded) -> Result<Arc<ConstraintFactory>, ApiError> {
    let built = match l.constraints.get() {
        Some(f) => f.clone(),
        None => {
            let model = l.model.clone();
            let f = tokio::task::spawn_blocking(move || {
                ConstraintFactory::new(&model.tokenizer, model.hparams.n_vocab).map(Arc::new)
            })
            .await
            .map_err(|e| internal(format!("building the constraint factory: {e}")))?;
            l.constraints.get_or_init(|| f).clone()
        }
    };
    built.map_err(|e| {
        ApiError::bad_request(
            format!("constrained decoding is not available for this model: {e}"),
            None,
        )
    })
}

/// Compile a grammar with the model's factory on a blocking thread; errors are 400s with
/// `param`.
pub(crate) async fn compile<F>(l: &Loaded, param: &str, build: F) -> Result<Arc<Grammar>, ApiError>
where
    F: FnOnce(&ConstraintFactory) -> Result<Grammar, String> + Send + 'static,
{
    let factory = factory(l).await?;
    tokio::task::spawn_blocking(move || build(&factory))
        .await
        .map_err(|e| internal(format!("compiling the grammar: {e}")))?
        .map(Arc::new)
        .map_err(|e| ApiError::bad_request(e, Some(param)))
}

/// What a chat or completions request's `response_format` and `grammar` ask for: `None`
/// for free text.
pub(crate) async fn constraint_for(
    l: &Loaded,
    response_format: Option<&Value>,
    grammar: Option<&Value>,
) -> Result<Option<Arc<Grammar>>, ApiError> {
    let from_format = match response_format {
        None | Some(Value::Null) => None,
        Some(f) => chat_format(f)?,
    };
    let from_grammar = match grammar {
        None | Some(Value::Null) => None,
        Some(g) => Some(grammar_field(g)?),
    };
    let source = match (from_format, from_grammar) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either response_format (json_object or json_schema) or grammar, not both",
                Some("grammar"),
            ))
        }
        (Some(s), None) => (s, "response_format"),
        (None, Some(s)) => (s, "grammar"),
        (None, None) => return Ok(None),
    };
    build(l, source.0, source.1).await.map(Some)
}

/// The Responses API's `text.format`: `{"type": "text" | "json_object"}` or
/// `{"type": "json_schema", "name": ..., "schema": {...}, "strict": ...}`.
pub(crate) async fn constraint_for_text_format(
    l: &Loaded,
    format: Option<&Value>,
) -> Result<Option<Arc<Grammar>>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let obj = object(format, "text")?;
    let kind = type_field(obj, "text.format")?;
    let source = match kind {
        "text" => {
            only(obj, &["type"], "text.format")?;
            return Ok(None);
        }
        "json_object" => {
            only(obj, &["type"], "text.format")?;
            Source::JsonObject
        }
        "json_schema" => {
            only(
                obj,
                &["type", "name", "schema", "strict", "description"],
                "text.format",
            )?;
            schema_source(obj, "text.format")?
        }
        other => return Err(unknown_type(other, "text.format", "text")),
    };
    build(l, source, "text").await.map(Some)
}

/// A grammar, before compiling.
enum Source {
    JsonObject,
    JsonSchema(Value),
    Lark(String),
    Regex(String),
}

async fn build(l: &Loaded, source: Source, param: &str) -> Result<Arc<Grammar>, ApiError> {
    compile(l, param, move |f| match &source {
        Source::JsonObject => f.json_object(),
        Source::JsonSchema(s) => f.json_schema(s),
        Source::Lark(g) => f.lark(g),
        Source::Regex(r) => f.regex(r),
    })
    .await
}

fn chat_format(f: &Value) -> Result<Option<Source>, ApiError> {
    const P: &str = "response_format";
    let obj = object(f, P)?;
    match type_field(obj, P)? {
        "text" => {
            only(obj, &["type"], P)?;
            Ok(None)
        }
        "json_object" => {
            only(obj, &["type"], P)?;
            Ok(Some(Source::JsonObject))
        }
        "json_schema" => {
            only(obj, &["type", "json_schema"], P)?;
            let js = obj.get("json_schema").ok_or_else(|| {
                ApiError::bad_request(
                    "response_format of type 'json_schema' needs a 'json_schema' object ({\"name\": ..., \"schema\": {...}})",
                    Some(P),
                )
            })?;
            let js = object(js, P)?;
            only(js, &["name", "schema", "strict", "description"], P)?;
            schema_source(js, P).map(Some)
        }
        other => Err(unknown_type(other, P, P)),
    }
}

/// `name`, `strict` and `schema` of a json_schema format. Every schema is enforced
/// exactly, whatever `strict` says; a missing schema allows any JSON value.
fn schema_source(obj: &Map<String, Value>, param: &str) -> Result<Source, ApiError> {
    let param_name = param.split('.').next().unwrap_or(param);
    if let Some(name) = obj.get("name") {
        let ok = name.as_str().is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            return Err(ApiError::bad_request(
                format!("{param}.name must be 1 to 64 letters, digits, '_' or '-'"),
                Some(param_name),
            ));
        }
    }
    if obj
        .get("strict")
        .is_some_and(|s| !s.is_boolean() && !s.is_null())
    {
        return Err(ApiError::bad_request(
            format!("{param}.strict must be a boolean"),
            Some(param_name),
        ));
    }
    Ok(match obj.get("schema") {
        None | Some(Value::Null) => Source::JsonSchema(Value::Bool(true)),
        Some(s) => Source::JsonSchema(s.clone()),
    })
}

fn grammar_field(g: &Value) -> Result<Source, ApiError> {
    const P: &str = "grammar";
    let obj = object(g, P)?;
    let kind = type_field(obj, P)?;
    only(obj, &["type", "value"], P)?;
    let value = obj
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("grammar.value must be a string", Some(P)))?;
    match kind {
        "lark" => Ok(Source::Lark(value.to_string())),
        "regex" => Ok(Source::Regex(value.to_string())),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(ApiError::bad_request(
                format!("grammar type '{shown}' is not supported (use 'lark' or 'regex')"),
                Some(P),
            ))
        }
    }
}

fn object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::bad_request(format!("{param} must be an object"), Some(param_of(param)))
    })
}

fn type_field<'a>(obj: &'a Map<String, Value>, param: &str) -> Result<&'a str, ApiError> {
    obj.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(
            format!("{param}.type must be a string"),
            Some(param_of(param)),
        )
    })
}

/// Refuse fields outside `allowed`, naming the first.
fn only(obj: &Map<String, Value>, allowed: &[&str], param: &str) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            let shown: String = k.chars().take(64).collect();
            Err(ApiError::bad_request(
                format!("unrecognized field '{shown}' in {param}"),
                Some(param_of(param)),
            ))
        }
    }
}

fn unknown_type(kind: &str, what: &str, param: &str) -> ApiError {
    let shown: String = kind.chars().take(32).collect();
    ApiError::bad_request(
        format!(
            "{what} type '{shown}' is not supported (use 'text', 'json_object' or 'json_schema')"
        ),
        Some(param_of(param)),
    )
}

fn param_of(param: &str) -> &str {
    param.split('.').next().unwrap_or(param)
}

fn internal(msg: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg)
}
