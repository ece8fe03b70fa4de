//! One sequence's constraint, with the next mask computed on a helper thread.
//!
//! The cycle per token is: `apply` (wait for the mask if it is still being computed, then
//! set every disallowed logit to -inf), sample, `commit` (advance the grammar by the token,
//! then hand the matcher to the helper thread to compute the next mask). Between `commit`
//! and the next `apply` the caller runs the network for the next logits, so the mask is
//! usually ready when it is needed and the caller's thread never computed it.

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

/// Where the time of a constraint's masks went.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskStats {
    /// Masks computed.
    pub masks: u64,
    /// Time computing them (mostly on the helper thread).
    pub compute: Duration,
    /// Time the caller blocked waiting for one.
    pub waited: Duration,
}

type Reply = (Box<Matcher>, Result<SimpleVob, String>, Duration);

struct Helper {
    jobs: Sender<Box<Matcher>>,
    replies: Receiver<Reply>,
}

impl Helper {
    fn spawn() -> Option<Helper> {
        let (jobs, job_rx) = channel::<Box<Matcher>>();
        let (reply_tx, replies) = channel::<Reply>();
        std::thread::Builder::new()
            .name("verity-mask".into())
            .spawn(move || {
                // Ends when the constraint (the job sender) is dropped.
                while let Ok(mut m) = job_rx.recv() {
                    let (mask, took) = compute(&mut m);
                    if reply_tx.send((m, mask, took)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Helper { jobs, replies })
    }
}

fn compute(m: &mut Matcher) -> (Result<SimpleVob, String>, Duration) {
    let t = Instant::now();
    let mask = m.compute_mask_or_eos().map_err(|e| {
        format!(
            "the grammar cannot continue: {}",
            first_line(&e.to_string())
        )
    });
    (mask, t.elapsed())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// One sequence's grammar state. See the crate documentation for the cycle.
pub struct Constraint {
    /// `None` while the helper holds it (or after the helper died with it).
    matcher: Option<Box<Matcher>>,
    /// The mask for the next token, once computed.
    mask: Option<Result<SimpleVob, String>>,
    helper: Option<Helper>,
    in_flight: bool,
    /// Nothing more may follow what was committed.
    complete: bool,
    n_vocab: usize,
    stats: MaskStats,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("complete", &self.complete)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Constraint {
    pub(crate) fn new(matcher: Matcher, n_vocab: usize) -> Self {
        let mut c = Self::new_idle(matcher, n_vocab);
        c.start_mask();
        c
    }

    pub(crate) fn new_idle(matcher: Matcher, n_vocab: usize) -> Self {
        let complete = matcher.is_stopped();
        Constraint {
            matcher: Some(Box::new(matcher)),
            mask: None,
            helper: None,
            in_flight: false,
            complete,
            n_vocab,
            stats: MaskStats::default(),
        }
    }

    /// Start computing the next mask on the helper thread (synchronously if no thread can
    /// be had).
    fn start_mask(&mut self) {
        if self.complete || self.in_flight || self.mask.is_some() {
            return;
        }
        let Some(m) = self.matcher.take() else { return };
        if self.helper.is_none() {
            self.helper = Helper::spawn();
        }
        let m = match &self.helper {
            Some(h) => match h.jobs.send(m) {
                Ok(()) => {
                    self.in_flight = true;
                    return;
                }
                Err(back) => {
                    self.helper = None;
                    back.0
                }
            },
            None => m,
        };
        let mut m = m;
        let (mask, took) = compute(&mut m);
        self.stats.masks += 1;
        self.stats.compute += took;
        self.mask = Some(mask);
        self.matcher = Some(m);
    }

    /// Wait for a mask in flight and take the matcher back.
    fn settle(&mut self) {
        if !self.in_flight {
            return;
        }
        let t = Instant::now();
        let reply = match &self.helper {
            Some(h) => h.replies.recv().ok(),
            None => None,
        };
        self.stats.waited += t.elapsed();
        self.receive(reply);
    }

    /// Whether [`Constraint::mask`] would return without waiting.
    pub fn is_ready(&mut self) -> bool {
        if !self.in_flight {
            return true;
        }
        let reply = match &self.helper {
            Some(h) => match h.replies.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => None,
            },
            None => None,
        };
        self.receive(reply);
        true
    }

    /// The helper's answer (`None`: it is gone, and the matcher with it).
    fn receive(&mut self, reply: Option<Reply>) {
        self.in_flight = false;
        match reply {
            Some((m, mask, took)) => {
                self.stats.masks += 1;
                self.stats.compute += took;
                self.matcher = Some(m);
                self.mask = Some(mask);
            }
            None => {
                self.helper = None;
                self.mask = Some(Err("the mask computation failed".into()));
            }
        }
    }

    fn matcher(&mut self) -> Result<&mut Matcher, String> {
        self.settle();
        match self.matcher.as_deref_mut() {
            Some(m) => Ok(m),
            None => Err(match &self.mask {
                Some(Err(e)) => e.clone(),
                _ => "the constraint has failed".into(),
            }),
        }
    }

    /// The tokens allowed next (end-of-generation tokens included exactly when the
    /// output so far is complete). Waits for the mask if it is being computed.
    pub fn mask(&mut self) -> Result<&SimpleVob, String> {
        self.settle();
        if self.mask.is_none() {
            let m = self.matcher()?;
            let (mask, took) = compute(m);
            self.stats.masks += 1;
            self.stats.compute += took;
            self.mask = Some(mask);
        }
        match self.mask.as_ref().expect("set above") {
            Ok(m) => Ok(m),
            Err(e) => Err(e.clone()),
        }
    }

    /// Set the logits of every token not allowed next to -inf.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let mask = self.mask()?;
        let words = mask.as_slice();
        let mut chunks = logits.chunks_mut(32);
        for (&w, chunk) in words.iter().zip(chunks.by_ref()) {
            if w == u32::MAX && chunk.len() == 32 {
                continue;
            }
            if w == 0 {
                chunk.fill(f32::NEG_INFINITY);
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if w & (1u32 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for chunk in chunks {
            chunk.fill(f32::NEG_INFINITY);
        }
        Ok(())
    }

    /// Whether `token` may come next.
    pub fn allows(&mut self, token: u32) -> Result<bool, String> {
        let mask = self.mask()?;
        Ok((token as usize) < mask.len() && mask.is_allowed(token))
    }

    /// Advance by the sampled token and start computing the next mask. Returns whether
    /// the output is complete (nothing more may follow: the sequence should end here).
    /// A token the mask did not allow is an error.
    pub fn commit(&mut self, token: u32) -> Result<bool, String> {
        if token as usize >= self.n_vocab {
            return Err(format!("token {token} is outside the vocabulary"));
        }
        let m = self.matcher()?;
        m.consume_token(token).map_err(|e| {
            format!(
                "the grammar rejected the token: {}",
                first_line(&e.to_string())
            )
        })?;
        let stopped = m.is_stopped();
        self.mask = None;
        self.complete = stopped;
        self.start_mask();
        Ok(self.complete)
    }

    /// Advance by text that was generated outside the constraint (for a constraint
    /// started after a trigger: the bytes that followed it), then start computing the
    /// next mask. Returns whether the output is complete. Bytes the grammar does not
    /// accept are an error naming where they stop fitting.
    pub fn consume_bytes(&mut self, bytes: &[u8]) -> Result<bool, String> {
        if bytes.is_empty() {
            self.start_mask();
            return Ok(self.complete);
        }
        let m = self.matcher()?;
        let env = m.tok_env().map_err(|e| e.to_string())?;
        let trie = env.tok_trie();
        let tokens = trie.greedy_tokenize(bytes);
        if trie.decode_raw(&tokens) != bytes {
            return Err("the text cannot be spelled in this model's vocabulary".into());
        }
        let n = m.try_consume_tokens(&tokens).map_err(|e| {
            format!(
                "the grammar rejected the text: {}",
                first_line(&e.to_string())
            )
        })?;
        if n < tokens.len() {
            let at = trie.decode_raw(&tokens[..n]).len();
            return Err(format!(
                "the text does not fit the grammar from byte {at}: {:?}",
                String::from_utf8_lossy(&bytes[at..bytes.len().min(at + 40)])
            ));
        }
        let stopped = m.is_stopped();
        self.mask = None;
        self.complete = stopped;
        self.start_mask();
        Ok(self.complete)
    }

    /// Whether the output so far is complete: end of generation is allowed now.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher()
            .ok()
            .is_some_and(|m| m.is_accepting().unwrap_or(false))
    }

    /// Whether nothing more may follow (the grammar has ended).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn stats(&self) -> MaskStats {
        self.stats
    }
}

impl verity_engine::TokenFilter for Constraint {
    fn apply(&mut self, logits: &mut [f32]) -> Result<(), String> {
        Constraint::apply(self, logits)
    }

    fn commit(&mut self, token: u32) -> Result<bool, String> {
        Constraint::commit(self, token)
    }
}
