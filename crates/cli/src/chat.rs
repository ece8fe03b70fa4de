use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use rustyline::error::ReadlineError;
use verity_tokenizer::ChatMessage;

use crate::common::{chat_prompt, load_model, LoraArgs, ModelArgs, SamplingArgs};

/// Chat with a model in the terminal.
///
/// Line editing and history as in a shell; Ctrl-C stops the current answer, Ctrl-D
/// (or /bye) leaves, /clear starts a new conversation.
///
/// Examples:
///   verity chat
///   verity chat -m ./Llama-3.2-1B-Instruct-Q4_K_M.gguf --system "Answer briefly."
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message that starts the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let params = args.sampling.params()?;
    let model = load_model(&args.model)?;
    if model.tokenizer.chat_template().is_none() {
        anyhow::bail!(
            "{} has no chat template; use `verity run --raw` for plain completion",
            model.name()
        );
    }
    let harmony = model
        .tokenizer
        .chat_template()
        .is_some_and(verity_tokenizer::harmony::is_harmony);
    let mut session = verity_engine::Session::with_kv_type(
        model.clone(),
        args.model.ctx,
        args.model.cache_type.kv_type(),
    );
    session.set_lora(args.lora.load(&model)?);
    let start: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let mut messages = start.clone();
    let mut editor = rustyline::DefaultEditor::new()?;
    // After the editor: it installs a SIGINT handler of its own, which would swallow
    // Ctrl-C during an answer. At the prompt the terminal is raw and Ctrl-C is a key.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
    }
    eprintln!(
        "verity: chatting with {} (Ctrl-C stops an answer, Ctrl-D or /bye leaves, /clear forgets)",
        model.name()
    );
    loop {
        let line = match editor.readline(">>> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/bye" | "/exit" => break,
            "/clear" => {
                messages = start.clone();
                continue;
            }
            _ => {}
        }
        let _ = editor.add_history_entry(line);
        messages.push(ChatMessage {
            role: "user".into(),
            content: line.to_string(),
        });
        let prompt = chat_prompt(&model, &messages)?;
        interrupted.store(false, Ordering::SeqCst);
        let stdout = std::io::stdout();
        // A harmony model (gpt-oss) writes channels: only the final one is shown, and
        // kept as the turn's content (its template refuses channel tags in history).
        let (mut written, mut shown) = (String::new(), 0);
        let result = verity_engine::generate(&mut session, &prompt, &params, &mut |text| {
            let text = if harmony {
                written.push_str(text);
                let content = verity_tokenizer::harmony::split(&written, false).content;
                let new = content.get(shown..).unwrap_or("").to_string();
                shown = content.len();
                new
            } else {
                text.to_string()
            };
            let mut out = stdout.lock();
            let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
            !interrupted.load(Ordering::SeqCst)
        });
        match result {
            Ok(gen) => {
                let content = if harmony {
                    let content = verity_tokenizer::harmony::split(&gen.text, true).content;
                    print!("{}", content.get(shown..).unwrap_or(""));
                    content
                } else {
                    gen.text
                };
                println!();
                messages.push(ChatMessage {
                    role: "assistant".into(),
                    content,
                })
            }
            Err(e) => {
                println!();
                eprintln!("verity: {e}");
                messages.pop();
            }
        }
    }
    Ok(())
}
