//! Softmax cross-entropy with label smoothing, loss and gradient together.

use super::shape_err;
use crate::error::Result;

/// Softmax cross-entropy over `classes` logits with label smoothing
/// `smoothing` (ε), averaged over the batch: PyTorch's
/// `F.cross_entropy(logits, labels, label_smoothing=ε)`, i.e. per item
/// `-Σ_j q_j log softmax(z)_j` with target `q = (1-ε) onehot(y) + ε/K`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Number of classes `K`.
    pub classes: usize,
    /// Label smoothing ε in `[0, 1]`.
    pub smoothing: f32,
}

/// The loss of a batch, its gradient, and the batch's accuracy count.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// Mean loss over the batch (accumulated in f64).
    pub loss: f64,
    /// Items whose largest logit (the first, on ties) is their label.
    pub correct: usize,
    /// `d loss / d logits`, `[B, K]`: `(softmax(z) - q) / B`.
    pub dlogits: Vec<f32>,
}

impl CrossEntropy {
    /// Loss and gradient of `logits [B, K]` for `labels [B]` (each `< K`).
    pub fn forward_backward(&self, logits: &[f32], labels: &[usize]) -> Result<LossOutput> {
        let k = self.classes;
        let b = labels.len();
        if k == 0 || logits.len() != b.saturating_mul(k) || b == 0 {
            return Err(shape_err(format!(
                "cross_entropy: {} logits for {b} labels of {k} classes",
                logits.len()
            )));
        }
        if !(0.0..=1.0).contains(&self.smoothing) {
            return Err(shape_err(format!(
                "cross_entropy: label smoothing {} is not in [0, 1]",
                self.smoothing
            )));
        }
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= k) {
            return Err(shape_err(format!(
                "cross_entropy: label {y} of item {i} is not below {k}"
            )));
        }
        let eps = f64::from(self.smoothing);
        let (off, on) = (eps / k as f64, 1.0 - eps + eps / k as f64);
        let inv_b = 1.0 / b as f64;
        let mut dlogits = vec![0.0f32; logits.len()];
        let (mut total, mut correct) = (0.0f64, 0usize);
        for ((z, d), &y) in logits.chunks(k).zip(dlogits.chunks_mut(k)).zip(labels) {
            let (mut arg, mut max) = (0, z[0]);
            for (j, &v) in z.iter().enumerate() {
                if v > max {
                    (arg, max) = (j, v);
                }
            }
            correct += usize::from(arg == y);
            let m = f64::from(max);
            let sum: f64 = z.iter().map(|&v| (f64::from(v) - m).exp()).sum();
            let lse = m + sum.ln();
            for (j, (&v, d)) in z.iter().zip(d.iter_mut()).enumerate() {
                let q = if j == y { on } else { off };
                let logp = f64::from(v) - lse;
                total -= q * logp;
                *d = ((logp.exp() - q) * inv_b) as f32;
            }
        }
        Ok(LossOutput {
            loss: total * inv_b,
            correct,
            dlogits,
        })
    }
}
