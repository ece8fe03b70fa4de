//! Lazy constraints: a grammar that applies only from the moment the model writes its
//! trigger. In `auto` tool mode the model may answer in free text or open a call; once it
//! writes its family's call marker (`<tool_call>`, `[TOOL_CALLS]`, or a leading `{` for
//! Llama 3), the rest of the call is held to the tools' schemas, and text after a finished
//! call is free again.
//!
//! The scheduler feeds every generated token's bytes to the job's [`LazyWatch`]; when the
//! trigger is complete, the watch starts the grammar after the bytes already written
//! from the trigger on (a trigger may end in the middle of a token).

use std::sync::Arc;

use verity_constraint::{Constraint, Grammar};

/// A grammar waiting for its trigger.
#[derive(Clone, Debug)]
pub struct LazyConstraint {
    /// Bytes that open a call.
    pub trigger: Vec<u8>,
    /// The trigger counts only at the start of the output (after whitespace): formats
    /// whose whole answer is the call.
    pub at_start: bool,
    /// One call from its trigger on, trigger included.
    pub grammar: Arc<Grammar>,
    /// The job ends once this many calls are complete.
    pub max_calls: usize,
}

/// One job's watch for the trigger.
pub(crate) struct LazyWatch {
    spec: LazyConstraint,
    /// Everything generated, as bytes (special tokens as their text).
    output: Vec<u8>,
    /// Where the search for the next trigger starts: after the last call.
    scan_from: usize,
    calls: usize,
    /// No trigger can come any more (an at-start trigger that did not come first).
    off: bool,
}

impl LazyWatch {
    pub fn new(spec: LazyConstraint) -> Self {
        LazyWatch {
            spec,
            output: Vec::new(),
            scan_from: 0,
            calls: 0,
            off: false,
        }
    }

    /// Record a generated token; while no call is open (`free`), look for the trigger and
    /// return the constraint that now holds the output.
    pub fn push(&mut self, token: u32, free: bool) -> Option<Constraint> {
        let bytes = self.spec.grammar.token_bytes(token);
        // Special tokens are spelled 0xFF then their text: a marker may be one.
        let bytes = bytes.strip_prefix(&[0xFF]).unwrap_or(bytes);
        let before = self.output.len();
        self.output.extend_from_slice(bytes);
        if !free || self.off {
            return None;
        }
        let at = if self.spec.at_start {
            self.at_start_trigger()?
        } else {
            let from = before
                .saturating_sub(self.spec.trigger.len() - 1)
                .max(self.scan_from);
            let found = find(&self.output[from..], &self.spec.trigger)?;
            from + found
        };
        match self.spec.grammar.start_after(&self.output[at..]) {
            Ok(c) => Some(c),
            Err(e) => {
                // What followed the trigger in the same token already breaks the call
                // format: leave the text free (it stays content).
                tracing::debug!("lazy constraint not started: {e}");
                self.scan_from = at + self.spec.trigger.len();
                None
            }
        }
    }

    /// A call's grammar is complete: returns whether the job has made all its calls.
    pub fn call_done(&mut self) -> bool {
        self.calls += 1;
        self.scan_from = self.output.len();
        self.calls >= self.spec.max_calls
    }

    fn at_start_trigger(&mut self) -> Option<usize> {
        let lead = self
            .output
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let rest = &self.output[lead..];
        let trigger = &self.spec.trigger;
        if rest.len() >= trigger.len() {
            if rest.starts_with(trigger) && self.calls == 0 {
                return Some(lead);
            }
            self.off = true;
        } else if !trigger.starts_with(rest) {
            self.off = true;
        }
        None
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
