//! Chat templates (Jinja, from the model file) compiled and rendered in the sandbox.
#![no_main]
use libfuzzer_sys::fuzz_target;
use verity_tokenizer::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi {{ x }} <|im_end|>"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ];
        let _ = t.render(&messages, true);
    }
});
