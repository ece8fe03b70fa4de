//! Decoding allocates nothing per token once the buffers have grown: a counting global
//! allocator watches 16 one-token steps of the default model after a warm-up that reached
//! a longer context than the measured steps use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_do_not_allocate() {
    verity_engine::init_threads(2);
    let path = verity_store::resolve(None).expect("default model (run scripts/test once)");
    let model = Arc::new(verity_model::load(&path).expect("load"));
    let n_vocab = model.hparams.n_vocab as u32;
    let tokens: Vec<u32> = (0..96u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let mut s = verity_engine::Session::new(model, 256);
    // Warm-up: a prompt, then one-token steps out to position 96, then back to 64, so every
    // buffer (including attention's per-thread scores) has seen more than the steps below.
    s.eval(&tokens[..64]).unwrap();
    for &t in &tokens[64..96] {
        s.eval(&[t]).unwrap();
    }
    s.truncate(64);
    COUNTING.store(true, Ordering::SeqCst);
    for &t in &tokens[64..80] {
        s.eval(&[t]).unwrap();
    }
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(n, 0, "{n} allocations in 16 decode steps");
}
