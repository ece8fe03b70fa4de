//! `verity bench`: prompt-processing and generation speed, like llama-bench.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use verity_engine::{BatchItem, KvCache, Logits, LoraSet, Runner, Session};

use crate::common::LoraArgs;
use verity_model::Model;

/// Measure speed: ppN (one N-token prompt in one batch, fresh context) and tgN (N tokens
/// generated one at a time from an empty context), mean ± std of tokens/s over repetitions,
/// as llama-bench reports them; plus peak resident memory, model load time and the
/// machine's memory read bandwidth.
///
/// With `--parallel B` (B > 1), tgN also runs as B sequences decoded together, one token
/// each per forward pass, as a server's continuous batching does; reported as `tgN xB`
/// with the aggregate tokens/s of all B sequences.
///
/// Examples:
///   verity bench
///   verity bench -m model.gguf -p 512 -n 128 -t 2 -r 3 --json
///   verity bench -p 0 -n 64 --parallel 1,8
///   verity bench --lora ./my-adapter/             # the cost of an adapter's low-rank products
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct BenchArgs {
    /// A GGUF file, a Hugging Face model directory, or a model name (default: the default model).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Prompt lengths to test, comma-separated (0 or empty: none).
    #[arg(short = 'p', long, default_value = "128", value_delimiter = ',')]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test, comma-separated (0 or empty: none).
    #[arg(short = 'n', long, default_value = "64", value_delimiter = ',')]
    pub n_gen: Vec<usize>,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 5)]
    pub reps: usize,
    /// Sequences decoded together for the tgN tests, comma-separated (1: one at a time).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub parallel: Vec<usize>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the memory bandwidth measurement.
    #[arg(long)]
    pub no_bandwidth: bool,
}

struct TestResult {
    name: String,
    n_prompt: usize,
    n_gen: usize,
    /// Sequences decoded together (1 for pp and plain tg).
    parallel: usize,
    samples: Vec<f64>,
}

impl TestResult {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    fn std(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|s| (s - m) * (s - m)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

/// Deterministic token ids spread over the vocabulary (llama-bench uses random ones).
fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

type Lora = Option<Arc<LoraSet>>;

fn run_pp(model: &Arc<Model>, lora: &Lora, n: usize, seed: u64) -> anyhow::Result<f64> {
    let toks = tokens(n, model.hparams.n_vocab, seed);
    let mut s = Session::new(model.clone(), n);
    s.set_lora(lora.clone());
    let t0 = Instant::now();
    s.eval(&toks)?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn run_tg(model: &Arc<Model>, lora: &Lora, n: usize, seed: u64) -> anyhow::Result<f64> {
    let toks = tokens(n, model.hparams.n_vocab, seed);
    let mut s = Session::new(model.clone(), n);
    s.set_lora(lora.clone());
    let t0 = Instant::now();
    for &t in &toks {
        s.eval(&[t])?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `n` tokens for each of `b` sequences, one token per sequence per forward pass;
/// aggregate tokens/s.
fn run_tg_parallel(
    model: &Arc<Model>,
    lora: &Lora,
    n: usize,
    b: usize,
    seed: u64,
) -> anyhow::Result<f64> {
    let toks: Vec<Vec<u32>> = (0..b)
        .map(|i| tokens(n, model.hparams.n_vocab, seed * 1000 + i as u64))
        .collect();
    let mut caches: Vec<KvCache> = (0..b)
        .map(|_| {
            let mut c = KvCache::new(model, n);
            c.set_lora(lora.clone());
            c
        })
        .collect();
    let mut runner = Runner::for_context(model.clone(), n);
    let t0 = Instant::now();
    for step in 0..n {
        let mut items: Vec<BatchItem> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(cache, t)| BatchItem {
                cache,
                tokens: &t[step..step + 1],
                logits: Logits::Last,
            })
            .collect();
        runner.forward(&mut items)?;
    }
    Ok((n * b) as f64 / t0.elapsed().as_secs_f64())
}

/// Peak resident set size of this process in bytes (VmHWM), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Streaming read bandwidth in bytes/s: every worker thread sums its share of a buffer much
/// larger than the caches; best of a few passes. The buffer is advised for huge pages, as
/// model weights are when loaded to compute (`verity_formats::Residency`): with 4 KiB
/// pages the TLB, not the memory, sets the pace (about 20 % lower on the development VM).
fn memory_read_bandwidth() -> Option<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const BYTES: usize = 512 << 20;
    let mut map = memmap2::MmapMut::map_anon(BYTES).ok()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    for (i, v) in map.chunks_exact_mut(8).enumerate() {
        v.copy_from_slice(&(i as u64).to_ne_bytes());
    }
    // SAFETY: the map is page-aligned (so aligned for u64) and BYTES long.
    let buf: &[u64] = unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u64, BYTES / 8) };
    let threads = verity_pool::num_threads().max(1);
    let chunk = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let total = AtomicU64::new(0);
        let t0 = Instant::now();
        verity_pool::for_each(buf.len().div_ceil(chunk), &|t| {
            let c = &buf[t * chunk..((t + 1) * chunk).min(buf.len())];
            let mut acc = [0u64; 8];
            for v in c.chunks_exact(8) {
                // Prefetch as the kernels do: without it this loop read slower than
                // generation streams the weights.
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch never faults, whatever the address.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    let ahead = verity_kernels::PREFETCH_BYTES / std::mem::size_of::<u64>();
                    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add(ahead) as *const i8);
                }
                for k in 0..8 {
                    acc[k] = acc[k].wrapping_add(v[k]);
                }
            }
            let s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            total.fetch_add(s, Ordering::Relaxed);
        });
        std::hint::black_box(total.load(Ordering::Relaxed));
        best = best.max(BYTES as f64 / t0.elapsed().as_secs_f64());
    }
    Some(best)
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    verity_engine::init_threads(args.threads);
    let threads = verity_pool::num_threads();
    let path: PathBuf = verity_store::resolve(args.model.as_deref())?;
    let t0 = Instant::now();
    let model = Arc::new(verity_model::load(&path).context("loading the model")?);
    let lora = args.lora.load(&model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let model_bytes = model.weight_bytes() as f64;
    let simd = format!("{:?}", verity_kernels::simd_level()).to_lowercase();

    let mut results = Vec::new();
    for &n in args.n_prompt.iter().filter(|&&n| n > 0) {
        run_pp(&model, &lora, n, 0)?; // warm-up, as llama-bench does
        let samples = (0..args.reps)
            .map(|r| run_pp(&model, &lora, n, r as u64 + 1))
            .collect::<anyhow::Result<Vec<_>>>()?;
        results.push(TestResult {
            name: format!("pp{n}"),
            n_prompt: n,
            n_gen: 0,
            parallel: 1,
            samples,
        });
    }
    for &n in args.n_gen.iter().filter(|&&n| n > 0) {
        for &b in args.parallel.iter().filter(|&&b| b > 0) {
            let samples = if b == 1 {
                run_tg(&model, &lora, 1, 0)?; // warm-up
                (0..args.reps)
                    .map(|r| run_tg(&model, &lora, n, r as u64 + 1))
                    .collect::<anyhow::Result<Vec<_>>>()?
            } else {
                run_tg_parallel(&model, &lora, 1, b, 0)?; // warm-up
                (0..args.reps)
                    .map(|r| run_tg_parallel(&model, &lora, n, b, r as u64 + 1))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            results.push(TestResult {
                name: if b == 1 {
                    format!("tg{n}")
                } else {
                    format!("tg{n} x{b}")
                },
                n_prompt: 0,
                n_gen: n,
                parallel: b,
                samples,
            });
        }
    }
    let peak_rss = peak_rss_bytes();
    let bw = if args.no_bandwidth {
        None
    } else {
        memory_read_bandwidth()
    };
    // Generation reads every weight once per token: bytes/token x tokens/s vs bandwidth.
    let bw_use = |r: &TestResult| {
        bw.filter(|_| r.n_gen > 0 && r.parallel == 1)
            .map(|b| model_bytes * r.mean() / b)
    };

    if args.json {
        let tests: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "test": r.name,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "parallel": r.parallel,
                    "avg_ts": r.mean(),
                    "stddev_ts": r.std(),
                    "samples_ts": r.samples,
                    "bandwidth_fraction": bw_use(r),
                })
            })
            .collect();
        let out = json!({
            "model": model.name(),
            "model_path": path.display().to_string(),
            "lora": args.lora.lora,
            "model_bytes": model_bytes as u64,
            "threads": threads,
            "simd": simd,
            "reps": args.reps,
            "load_s": load_s,
            "peak_rss_bytes": peak_rss,
            "mem_read_bytes_per_s": bw,
            "results": tests,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("| model | size | threads | simd | test | t/s | weight bytes/s vs read bandwidth |");
    println!("|---|---:|---:|---|---:|---:|---:|");
    for r in &results {
        let frac = bw_use(r).map_or(String::new(), |f| format!("{:.0}%", 100.0 * f));
        println!(
            "| {} | {:.2} GiB | {} | {} | {} | {:.2} ± {:.2} | {} |",
            model.name(),
            gib(model_bytes),
            threads,
            simd,
            r.name,
            r.mean(),
            r.std(),
            frac
        );
    }
    println!();
    println!("load: {:.3} s", load_s);
    if let Some(p) = peak_rss {
        println!("peak RSS: {:.1} MiB", p as f64 / (1 << 20) as f64);
    }
    if let Some(b) = bw {
        println!(
            "memory read bandwidth: {:.1} GB/s ({threads} threads)",
            b / 1e9
        );
    }
    Ok(())
}
