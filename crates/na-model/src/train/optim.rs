//! AdamW (decoupled weight decay) and the learning-rate schedule (linear
//! warm-up, then cosine decay).

use crate::error::Result;
use crate::ops::shape_err;
use crate::params::ParamSet;

/// AdamW as PyTorch's `torch.optim.AdamW` computes it (non-fused, no
/// `amsgrad`): per step `t` (from 1), for each parameter `p` with gradient
/// `g`: `p ← p·(1 - lr·wd)` (only where [`crate::ParamEntry::decay`]),
/// `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`,
/// `p ← p - (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + ε)`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Weight decay (decoupled; applied to the decaying tensors only).
    pub weight_decay: f32,
    /// Steps taken.
    pub step: u64,
    /// First moments, laid out like [`ParamSet::data`].
    pub m: Vec<f32>,
    /// Second moments, laid out like [`ParamSet::data`].
    pub v: Vec<f32>,
}

impl AdamW {
    /// A fresh optimiser for `n` parameters (β = 0.9, 0.999; ε = 1e-8).
    pub fn new(n: usize, weight_decay: f32) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One update of `params` with gradient `grad` at learning rate `lr`.
    pub fn update(&mut self, params: &mut ParamSet, grad: &[f32], lr: f32) -> Result<()> {
        let n = params.len();
        if grad.len() != n || self.m.len() != n || self.v.len() != n {
            return Err(shape_err(format!(
                "adamw: {n} parameters, {} gradients, moments of {} and {}",
                grad.len(),
                self.m.len(),
                self.v.len()
            )));
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for e in &params.entries {
            let r = e.range.clone();
            let decay = if e.decay {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            for (((p, &g), m), v) in params.data[r.clone()]
                .iter_mut()
                .zip(&grad[r.clone()])
                .zip(&mut self.m[r.clone()])
                .zip(&mut self.v[r])
            {
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + self.eps;
                *p -= step_size * *m / denom;
            }
        }
        Ok(())
    }
}

/// Learning rate per step: linear warm-up from `base / warmup` to `base`
/// over `warmup` steps, then a cosine from `base` down to `min` at step
/// `total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub base: f32,
    /// Final learning rate.
    pub min: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `s` (from 0).
    pub fn lr(&self, s: u64) -> f32 {
        if s < self.warmup {
            return self.base * (s + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let f = ((s - self.warmup) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (core::f64::consts::PI * f).cos());
        (f64::from(self.min) + f64::from(self.base - self.min) * cos) as f32
    }
}
