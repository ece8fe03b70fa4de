//! AdamW, the learning-rate schedule and clipping by global norm, with PyTorch's
//! (`torch.optim.AdamW`, `clip_grad_norm_`) and transformers' (`get_*_schedule_with_warmup`)
//! formulas, so that a run here and a run with PEFT follow the same trajectory.

use serde::{Deserialize, Serialize};

/// How the learning rate moves after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "linear" => Ok(Schedule::Linear),
            "constant" => Ok(Schedule::Constant),
            _ => Err(format!(
                "unknown schedule '{s}': use cosine, linear or constant"
            )),
        }
    }
}

/// Optimizer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

/// The factor on the learning rate at optimizer step `step` (0-based) of `total`, as
/// transformers computes it.
pub fn lr_factor(schedule: Schedule, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => {
            ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
        }
        Schedule::Cosine => {
            let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

/// AdamW's moments.
#[derive(Clone, Debug, Default)]
pub struct AdamState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates applied so far.
    pub t: u64,
}

impl AdamState {
    pub fn new(n: usize) -> Self {
        AdamState {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }
}

/// The global L2 norm of `g`, summed in order in f64.
pub fn global_norm(g: &[f32]) -> f64 {
    g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

/// Scale `g` so its global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm before clipping.
pub fn clip(g: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(g);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let c = coef as f32;
            g.iter_mut().for_each(|v| *v *= c);
        }
    }
    norm
}

/// One AdamW update of `p` with gradient `g` at learning rate `lr` (PyTorch's order:
/// decoupled weight decay first, then the bias-corrected Adam step).
pub fn adamw_step(p: &mut [f32], g: &[f32], st: &mut AdamState, cfg: &OptimConfig, lr: f64) {
    st.t += 1;
    let t = st.t as i32;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let bc1 = 1.0 - cfg.beta1.powi(t);
    let bc2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
    let step_size = (lr / bc1) as f32;
    let decay = (1.0 - lr * cfg.weight_decay) as f32;
    let (eps, bc2_sqrt) = (cfg.eps as f32, bc2_sqrt as f32);
    for (((pv, &gv), m), v) in p.iter_mut().zip(g).zip(&mut st.m).zip(&mut st.v) {
        if cfg.weight_decay != 0.0 {
            *pv *= decay;
        }
        *m += (gv - *m) * (1.0 - b1);
        *v = *v * b2 + (1.0 - b2) * gv * gv;
        let denom = v.sqrt() / bc2_sqrt + eps;
        *pv -= step_size * *m / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_cosine_schedule_with_warmup(warmup=10, total=100)
        assert_eq!(lr_factor(Schedule::Cosine, 0, 10, 100), 0.0);
        assert_eq!(lr_factor(Schedule::Cosine, 5, 10, 100), 0.5);
        assert_eq!(lr_factor(Schedule::Cosine, 10, 10, 100), 1.0);
        assert!((lr_factor(Schedule::Cosine, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(lr_factor(Schedule::Cosine, 100, 10, 100).abs() < 1e-12);
        assert!((lr_factor(Schedule::Linear, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert_eq!(lr_factor(Schedule::Constant, 99, 10, 100), 1.0);
    }

    #[test]
    fn clipping_caps_the_norm() {
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip(&mut g, 1.0), 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        let mut g = vec![0.3, 0.4];
        clip(&mut g, 1.0);
        assert_eq!(g, vec![0.3, 0.4]);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let cfg = OptimConfig {
            lr: 0.1,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
        };
        let mut p = vec![1.0f32, -1.0];
        let mut st = AdamState::new(2);
        adamw_step(&mut p, &[0.5, -2.0], &mut st, &cfg, 0.1);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }
}
