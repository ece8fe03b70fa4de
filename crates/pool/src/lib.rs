//! The worker pool that runs the parallel parts of the forward pass.
//!
//! A token of a small model is hundreds of parallel regions (one per matrix product)
//! a few tens of microseconds apart. A general-purpose pool puts its workers to sleep
//! between them and pays a futex wake-up each time; here workers spin for a short while
//! after a region ends, so the next region starts at once, and only then sleep — so an
//! idle server costs no CPU and an oversubscribed machine is not made worse by spinning.
//!
//! [`for_each`] runs `f(0..n)` on the calling thread and the workers; it returns when all
//! calls have finished. Tasks are claimed one at a time from a shared counter, so uneven
//! tasks balance themselves.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker keeps spinning before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

struct Shared {
    /// Bumped for every job; workers watch it.
    generation: AtomicU64,
    /// The current job (a `Job` on the submitting thread's stack), or null.
    job: AtomicPtr<Job<'static>>,
    /// Workers that may be touching `job`.
    busy: AtomicUsize,
    /// Workers asleep on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    threads: usize,
}

static POOL: OnceLock<&'static Shared> = OnceLock::new();
/// Serialises submissions: one parallel region at a time.
static SUBMIT: Mutex<()> = Mutex::new(());

/// Start the pool with `threads` threads in all (the caller counts as one). The first
/// call wins; later calls do nothing. `0` means all available cores.
pub fn init(threads: usize) {
    POOL.get_or_init(|| start(threads));
}

/// Threads that run a region (workers plus the caller).
pub fn num_threads() -> usize {
    pool().threads
}

fn pool() -> &'static Shared {
    POOL.get_or_init(|| start(0))
}

fn start(threads: usize) -> &'static Shared {
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        generation: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        busy: AtomicUsize::new(0),
        sleeping: AtomicUsize::new(0),
        lock: Mutex::new(()),
        wake: Condvar::new(),
        threads,
    }));
    for i in 1..threads {
        std::thread::Builder::new()
            .name(format!("verity-worker-{i}"))
            .spawn(move || worker(shared))
            .expect("spawn worker thread");
    }
    shared
}

/// Run `f(i)` for every `i` in `0..n`, in parallel; returns when all have returned.
/// A panic in `f` propagates to the caller after the other tasks finish.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    let p = pool();
    if p.threads == 1 || n == 1 {
        (0..n).for_each(f);
        return;
    }
    // A nested call (from inside a task) runs inline: the pool is busy with its parent.
    if IN_TASK.with(|t| t.get()) {
        (0..n).for_each(f);
        return;
    }
    let _guard = SUBMIT.lock().unwrap_or_else(|e| e.into_inner());
    let job = Job {
        f,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    // SAFETY: the pointer is withdrawn and every worker has let go of it (busy == 0)
    // before this function returns, so it never outlives `job`.
    p.job.store(&job as *const Job as *mut Job<'static>, SeqCst);
    p.generation.fetch_add(1, SeqCst);
    if p.sleeping.load(SeqCst) > 0 {
        let _l = p.lock.lock().unwrap_or_else(|e| e.into_inner());
        p.wake.notify_all();
    }
    run_tasks(&job);
    let mut spins = 0u32;
    while job.done.load(SeqCst) < n {
        backoff(&mut spins);
    }
    p.job.store(std::ptr::null_mut(), SeqCst);
    while p.busy.load(SeqCst) > 0 {
        backoff(&mut spins);
    }
    if job.panicked.load(SeqCst) {
        panic!("a parallel task panicked");
    }
}

/// Split `data` into chunks of `chunk` elements (the last may be shorter) and run
/// `f(index, chunk)` on each in parallel.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        let base = &base;
        // SAFETY: chunk `i` is [start, end) of `data`, disjoint from every other chunk, and
        // `for_each` runs each index exactly once while `data` is mutably borrowed here.
        let part = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(i, part);
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand out disjoint sub-slices of a `&mut [T]` with `T: Send`.
unsafe impl<T: Send> Sync for SendPtr<T> {}

thread_local! {
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Claim and run tasks until none are left; a panic is recorded in the job.
fn run_tasks(job: &Job) {
    IN_TASK.with(|t| t.set(true));
    loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= job.n {
            break;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.f)(i))).is_err() {
            job.panicked.store(true, SeqCst);
        }
        job.done.fetch_add(1, SeqCst);
    }
    IN_TASK.with(|t| t.set(false));
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 12 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(p: &'static Shared) {
    let mut seen = p.generation.load(SeqCst);
    loop {
        // Spin for a while waiting for the next job, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while p.generation.load(SeqCst) == seen {
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
                p.sleeping.fetch_add(1, SeqCst);
                while p.generation.load(SeqCst) == seen {
                    guard = p.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                p.sleeping.fetch_sub(1, SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        seen = p.generation.load(SeqCst);
        p.busy.fetch_add(1, SeqCst);
        let ptr = p.job.load(SeqCst);
        if !ptr.is_null() {
            // SAFETY: non-null while the submitter waits for `busy` to drop to zero.
            let job = unsafe { &*ptr };
            run_tasks(job);
        }
        p.busy.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_index_runs_once() {
        init(3);
        for n in [0, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            for_each(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
    }

    #[test]
    fn many_regions_in_a_row_and_after_sleeping() {
        let total = AtomicU64::new(0);
        for round in 0..2000 {
            for_each(4, &|i| {
                total.fetch_add(i as u64, SeqCst);
            });
            if round == 1000 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(total.load(SeqCst), 2000 * 6);
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        let mut v = vec![0u32; 1003];
        for_each_chunk_mut(&mut v, 100, &|i, c| {
            for x in c.iter_mut() {
                *x += i as u32 + 1;
            }
        });
        for (j, x) in v.iter().enumerate() {
            assert_eq!(*x, (j / 100) as u32 + 1);
        }
    }

    #[test]
    fn nested_calls_run_inline() {
        let total = AtomicU64::new(0);
        for_each(4, &|_| {
            for_each(3, &|_| {
                total.fetch_add(1, SeqCst);
            });
        });
        assert_eq!(total.load(SeqCst), 12);
    }

    #[test]
    fn concurrent_submitters_take_turns() {
        let total = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each(5, &|_| {
                            total.fetch_add(1, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 3 * 200 * 5);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| for_each(8, &|i| assert!(i != 5, "task five")));
        assert!(r.is_err());
        // The pool still works.
        let total = AtomicU64::new(0);
        for_each(8, &|_| {
            total.fetch_add(1, SeqCst);
        });
        assert_eq!(total.load(SeqCst), 8);
    }
}
