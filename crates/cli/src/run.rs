use std::io::Write;

use clap::Args;
use serde_json::json;
use verity_tokenizer::ChatMessage;

use crate::common::{chat_prompt, load_model, LoraArgs, ModelArgs, SamplingArgs};

/// Answer one prompt and stream the answer to stdout.
///
/// The prompt goes through the model's chat template (as `ollama run` does) unless
/// --raw is given or the model has none.
///
/// Examples:
///   verity run "Why is the sky blue?"
///   verity run --raw --temperature 0 "The capital of France is"
///   verity run -m ./Qwen2.5-0.5B-Instruct-Q4_K_M.gguf --json "Hi"
///   verity run --lora ./my-adapter/ "Hi"              # a PEFT adapter directory
///   verity run --lora style.gguf:0.5 --lora facts/ "Hi"   # two adapters, the first at half strength
///   verity run --json-schema person.json "Invent a person"   # output valid against the schema
///     (person.json: {"type": "object", "properties": {"name": {"type": "string"},
///      "age": {"type": "integer", "minimum": 0}}, "required": ["name", "age"]})
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The prompt.
    pub prompt: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Send the prompt as plain text for completion, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object with the answer, token counts and timings instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Constrain the answer to JSON valid against this JSON Schema file (enforced token by
    /// token; keywords that cannot be enforced, such as uniqueItems, are refused).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let params = args.sampling.params()?;
    let schema = match &args.json_schema {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--json-schema {}: {e}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--json-schema {}: not JSON: {e}", path.display()))?;
            Some((path, v))
        }
    };
    let model = load_model(&args.model)?;
    let mut constraint = match &schema {
        None => None,
        Some((path, v)) => {
            let factory =
                verity_constraint::ConstraintFactory::new(&model.tokenizer, model.hparams.n_vocab)
                    .map_err(|e| anyhow::anyhow!("constrained decoding: {e}"))?;
            let grammar = factory
                .json_schema(v)
                .map_err(|e| anyhow::anyhow!("--json-schema {}: {e}", path.display()))?;
            Some(grammar.start())
        }
    };
    let use_template = !args.raw && model.tokenizer.chat_template().is_some();
    let prompt = if use_template {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        chat_prompt(&model, &messages)?
    } else {
        model.tokenizer.encode(&args.prompt, true)?
    };

    let mut session = verity_engine::Session::with_kv_type(
        model.clone(),
        args.model.ctx,
        args.model.cache_type.kv_type(),
    );
    session.set_lora(args.lora.load(&model)?);
    let stdout = std::io::stdout();
    let json = args.json;
    let filter = constraint
        .as_mut()
        .map(|c| c as &mut dyn verity_engine::TokenFilter);
    let gen =
        verity_engine::generate_filtered(&mut session, &prompt, &params, filter, &mut |text| {
            if !json {
                let mut out = stdout.lock();
                // A closed pipe (e.g. `| head`) just ends the answer early.
                return out
                    .write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .is_ok();
            }
            true
        })?;
    let t = &gen.timings;
    if json {
        let v = json!({
            "model": model.name(),
            "lora": args.lora.specs()?.iter().map(|(p, s)| json!({"path": p, "scale": s})).collect::<Vec<_>>(),
            "prompt": args.prompt,
            "chat_template": use_template,
            "text": gen.text,
            "finish_reason": gen.finish_reason.as_str(),
            "tokens": { "prompt": t.prompt_tokens, "generated": t.generated_tokens },
            "output_token_ids": gen.tokens,
            "constraint": constraint.as_ref().map(|c| {
                let s = c.stats();
                json!({
                    "masks": s.masks,
                    "mask_compute_ms": s.compute.as_secs_f64() * 1e3,
                    "mask_wait_ms": s.waited.as_secs_f64() * 1e3,
                })
            }),
            "timings": {
                "prompt_ms": t.prompt_ms,
                "prompt_tokens_per_s": t.prompt_tokens_per_s(),
                "generation_ms": t.generation_ms,
                "generation_tokens_per_s": t.generation_tokens_per_s(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
    }
    Ok(())
}
