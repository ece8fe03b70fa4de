//! Singular values of a (difference) matrix, and how many of them carry signal.

/// At most this many rows of a tall matrix are used: a row sample keeps a low-rank
/// matrix's rank and a full-rank matrix full.
const MAX_ROWS: usize = 1024;
/// And at most this many columns (the Gram matrix is at most this square).
const MAX_COLS: usize = 2048;

/// Rank estimates of a matrix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RankInfo {
    /// Singular values above the noise edge (Gavish–Donoho threshold over the median
    /// singular value) when there are any and they are few; otherwise `energy_rank_99`.
    pub effective_rank: usize,
    /// Fewest singular values holding 99% of the squared Frobenius norm.
    pub energy_rank_99: usize,
    /// Singular values standing out of the noise (0 when the matrix is noise-like).
    pub spikes: usize,
    /// min(rows, cols) of the (sampled) matrix: the largest possible rank.
    pub max_rank: usize,
    /// The largest singular values (at most 16), descending.
    pub top_singular_values: Vec<f64>,
}

/// Rank estimates of the row-major `rows` × `cols` matrix `m`.
pub fn rank_info(m: &[f32], rows: usize, cols: usize) -> RankInfo {
    // Sample rows and columns evenly when large.
    let rsel: Vec<usize> = sample(rows, MAX_ROWS);
    let csel: Vec<usize> = sample(cols, MAX_COLS);
    let (r, c) = (rsel.len(), csel.len());
    let sub: Vec<f64> = rsel
        .iter()
        .flat_map(|&i| csel.iter().map(move |&j| m[i * cols + j] as f64))
        .collect();
    // Gram matrix on the smaller side.
    let (n, gram) = if r <= c {
        let mut g = vec![0f64; r * r];
        for i in 0..r {
            let a = &sub[i * c..(i + 1) * c];
            for j in i..r {
                let b = &sub[j * c..(j + 1) * c];
                let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                g[i * r + j] = d;
                g[j * r + i] = d;
            }
        }
        (r, g)
    } else {
        // Columns as vectors: transpose first for contiguous access.
        let mut t = vec![0f64; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = sub[i * c + j];
            }
        }
        let mut g = vec![0f64; c * c];
        for i in 0..c {
            let a = &t[i * r..(i + 1) * r];
            for j in i..c {
                let b = &t[j * r..(j + 1) * r];
                let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                g[i * c + j] = d;
                g[j * c + i] = d;
            }
        }
        (c, g)
    };
    let g = nalgebra::DMatrix::from_row_slice(n, n, &gram);
    let eig = nalgebra::SymmetricEigen::new(g).eigenvalues;
    let mut sv: Vec<f64> = eig.iter().map(|&e| e.max(0.0).sqrt()).collect();
    sv.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    classify(&sv, r, c)
}

fn sample(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        (0..n).collect()
    } else {
        (0..max).map(|i| i * n / max).collect()
    }
}

fn classify(sv: &[f64], rows: usize, cols: usize) -> RankInfo {
    let max_rank = rows.min(cols);
    let energy: f64 = sv.iter().map(|s| s * s).sum();
    let mut acc = 0.0;
    let mut energy_rank_99 = 0;
    if energy > 0.0 {
        for s in sv {
            acc += s * s;
            energy_rank_99 += 1;
            if acc >= 0.99 * energy {
                break;
            }
        }
    }
    // Gavish & Donoho (2014): the optimal hard threshold for unknown noise is
    // omega(beta) * median singular value.
    let beta = rows.min(cols) as f64 / rows.max(cols) as f64;
    let omega = 0.56 * beta.powi(3) - 0.95 * beta.powi(2) + 1.82 * beta + 1.43;
    let median = if sv.is_empty() { 0.0 } else { sv[sv.len() / 2] };
    let top = sv.first().copied().unwrap_or(0.0);
    let floor = (omega * median).max(top * 1e-4);
    let spikes = if top > 0.0 {
        sv.iter().filter(|&&s| s > floor).count()
    } else {
        0
    };
    // Structured noise (quantization error is correlated within blocks) lifts a few more
    // values over the threshold: a clear gap (a factor of 3 between neighbours) among the
    // spikes marks the end of the signal.
    let gap = (1..=spikes.min(sv.len().saturating_sub(1)))
        .map(|k| (k, sv[k - 1] / sv[k].max(f64::MIN_POSITIVE)))
        .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
        .filter(|&(_, ratio)| ratio >= 3.0)
        .map(|(k, _)| k);
    let spikes = gap.unwrap_or(spikes);
    let effective_rank = if spikes > 0 && spikes <= max_rank / 4 {
        spikes
    } else {
        energy_rank_99
    };
    RankInfo {
        effective_rank,
        energy_rank_99,
        spikes,
        max_rank,
        top_singular_values: sv.iter().take(16).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn low_rank_plus_noise() {
        let (rows, cols, k) = (200, 120, 5);
        let mut s = 7u64;
        let a: Vec<f32> = (0..rows * k).map(|_| lcg(&mut s)).collect();
        let b: Vec<f32> = (0..k * cols).map(|_| lcg(&mut s)).collect();
        let mut m = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let mut v = 0.0;
                for t in 0..k {
                    v += a[i * k + t] * b[t * cols + j];
                }
                m[i * cols + j] = v;
            }
        }
        assert_eq!(rank_info(&m, rows, cols).effective_rank, k);
        for x in m.iter_mut() {
            *x += 0.01 * lcg(&mut s);
        }
        let r = rank_info(&m, rows, cols);
        assert_eq!(r.spikes, k, "{r:?}");
        let noise: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let r = rank_info(&noise, rows, cols);
        assert!(r.effective_rank > cols / 2, "{r:?}");
    }
}
