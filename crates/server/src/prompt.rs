//! A conversation (and its tools) into prompt tokens, through the model's chat template,
//! off the async runtime: a slow template never holds up other requests, and a runaway
//! one ends in an error (the template's fuel and output bounds).

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;

use crate::api::{ApiError, Message};
use crate::tools::{self, ToolChoice, ToolFormat, Tools};

/// The prompt of one chat request.
pub struct ChatPrompt {
    pub tokens: Vec<u32>,
    /// The call format of the model's template (meaningful when the request has tools).
    pub format: ToolFormat,
}

/// Longest a rendering may take before the request gets an error (the fuel bound stops
/// real loops long before; this covers a template that is merely very slow).
const RENDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Render `messages` (with `tools`) through the model's chat template and tokenize.
pub async fn chat_prompt(
    model: &Arc<verity_model::Model>,
    messages: Vec<Message>,
    tools: Option<Tools>,
) -> Result<ChatPrompt, ApiError> {
    let model = model.clone();
    let job = tokio::task::spawn_blocking(move || render(&model, &messages, tools.as_ref()));
    match tokio::time::timeout(RENDER_TIMEOUT, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "rendering the chat template failed",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "the model's chat template took too long to render this conversation",
        )),
    }
}

fn render(
    model: &verity_model::Model,
    messages: &[Message],
    tools: Option<&Tools>,
) -> Result<ChatPrompt, ApiError> {
    let tok = &model.tokenizer;
    let template = tok
        .chat()
        .ok_or_else(|| {
            ApiError::bad_request(
                "this model has no chat template; use /v1/completions",
                Some("messages"),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("the model's chat template is invalid: {e}"),
            )
        })?;
    let (text, format) = render_template(&template, messages, tools)?;
    let has_bos = tok
        .bos_token_str()
        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    let tokens = tok
        .encode(&text, !has_bos)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    Ok(ChatPrompt { tokens, format })
}

/// The prompt text for `messages` and `tools` through `template`, and the template's call
/// format: the one path every chat endpoint (and [`crate::render_chat_request`]) takes.
pub fn render_template(
    template: &verity_tokenizer::ChatTemplate,
    messages: &[Message],
    tools: Option<&Tools>,
) -> Result<(String, ToolFormat), ApiError> {
    let format = ToolFormat::detect(template.source());
    let offered = tools.filter(|t| t.choice != ToolChoice::None);
    let template_tools: Option<Value> = offered
        .filter(|_| format.template_takes_tools())
        .map(Tools::for_template);
    let render_with = |tool_role_as_user: bool| -> Result<String, ApiError> {
        let conv = tools::conversation(format, messages, offered, tool_role_as_user)?;
        template
            .render_json(&Value::Array(conv), template_tools.as_ref(), true)
            .map_err(|e| {
                let msg = e.to_string();
                // A template that ran out of fuel or output is the model file's fault, but
                // the request cannot be served: a 4xx that says so.
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    format!("chat template: {msg}"),
                )
                .with_param("messages")
            })
    };
    let text = match render_with(false) {
        Ok(t) => t,
        // Templates that know no "tool" role get tool results as user messages.
        Err(e) if messages.iter().any(|m| m.role == "tool") => render_with(true).map_err(|_| e)?,
        Err(e) => return Err(e),
    };
    Ok((text, format))
}
