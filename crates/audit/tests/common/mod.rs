//! Test models made by rewriting tensors of real GGUF files in place (same types, same
//! layout), and the reference model-signing client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use verity_formats::gguf::{Gguf, TensorInfo};

pub fn smollm2() -> PathBuf {
    verity_store::resolve(None).expect("default model")
}

pub fn test_model(name: &str) -> PathBuf {
    let dir = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        });
    let p = dir.join("test-models").join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/make-test-models",
        p.display()
    );
    p
}

/// The default model split into 3 parts by the reference's gguf-py, made by
/// scripts/make-split-gguf.py when missing.
pub fn smollm2_split() -> Vec<PathBuf> {
    let src = smollm2();
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        })
        .join("test-models/split");
    let parts: Vec<PathBuf> = (1..=3)
        .map(|i| dir.join(format!("{stem}-{i:05}-of-00003.gguf")))
        .collect();
    if !parts.iter().all(|p| p.is_file()) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-split-gguf.py");
        let out = std::process::Command::new(&script)
            .arg(&src)
            .args(["--parts", "3", "--outdir"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parts
}

/// The `model_signing` executable (installed by scripts/setup-model-signing).
pub fn model_signing() -> PathBuf {
    if let Some(p) = std::env::var_os("VERITY_MODEL_SIGNING") {
        return p.into();
    }
    let dir = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        });
    let p = dir.join("model-signing-venv/bin/model_signing");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup-model-signing",
        p.display()
    );
    p
}

/// Deterministic standard normal numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Copy `src` to `dst`, replacing the values of the tensors `f` returns true for (it gets
/// the tensor and its dequantized values, row-major rows × cols, to modify in place); they
/// are quantized back to their own type.
pub fn rewrite(src: &Path, dst: &Path, mut f: impl FnMut(&TensorInfo, &mut Vec<f32>) -> bool) {
    let g = Gguf::open(src).unwrap();
    let mut bytes = g.file_bytes().to_vec();
    for t in &g.tensors {
        let ty = t.ty.unwrap();
        let data = g.tensor_data(t).unwrap();
        let cols = t.shape[0];
        let rows = t.n_elements() / cols;
        let rb = ty.row_bytes(cols).unwrap();
        let mut v = vec![0f32; rows * cols];
        for r in 0..rows {
            verity_kernels::dequantize_row(
                ty,
                &data[r * rb..(r + 1) * rb],
                &mut v[r * cols..(r + 1) * cols],
            );
        }
        if !f(t, &mut v) {
            continue;
        }
        let mut out = Vec::with_capacity(data.len());
        for row in v.chunks(cols) {
            verity_kernels::quantize_row(ty, row, &mut out).unwrap();
        }
        assert_eq!(out.len(), data.len());
        let start = (g.data_offset + t.offset) as usize;
        bytes[start..start + out.len()].copy_from_slice(&out);
    }
    std::fs::write(dst, bytes).unwrap();
}

/// Add a rank-`rank` product B·A to the matrix `w` (rows × cols), scaled so that the change
/// has `scale` times the matrix's RMS per element.
pub fn add_low_rank(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    rank: usize,
    scale: f32,
    rng: &mut Rng,
) {
    let rms = (w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64).sqrt() as f32;
    let b: Vec<f32> = (0..rows * rank).map(|_| rng.normal()).collect();
    let a: Vec<f32> = (0..rank * cols).map(|_| rng.normal()).collect();
    // Entries of B·A have variance `rank`.
    let k = scale * rms / (rank as f32).sqrt();
    for i in 0..rows {
        for j in 0..cols {
            let mut s = 0f32;
            for t in 0..rank {
                s += b[i * rank + t] * a[t * cols + j];
            }
            w[i * cols + j] += k * s;
        }
    }
}
