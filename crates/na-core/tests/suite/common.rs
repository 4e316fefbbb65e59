//! Test helpers shared by the integration tests: a literal reading of
//! SPEC.md's window pseudocode, a dense f64 attention oracle, and a
//! deterministic normal generator.
#![allow(dead_code)]

use na_core::Problem;

/// SPEC.md's window pseudocode, transcribed with signed integers. Returns the
/// full coordinates of the keys query `i` attends on one axis.
pub fn spec_window(l: usize, k: usize, s: usize, d: usize, causal: bool, i: usize) -> Vec<usize> {
    let (l, k, s, d, i) = (l as i64, k as i64, s as i64, d as i64, i as i64);
    let g = i % d;
    let ii = i / d;
    let lg = l / d + if g < l % d { 1 } else { 0 };
    let left = k / 2;
    let right = k / 2 + (k % 2) - 1;
    let (start, end);
    if !causal {
        let lead = ((ii / s) * s + s / 2).min(lg - 1);
        let mut st = (lead - left).max(0);
        if lead + right >= lg {
            st += lg - right - lead - 1;
        }
        start = st;
        end = st + k;
    } else {
        let lead = ((ii / s) * s + s - 1).min(lg - 1);
        start = (lead - (k - 1)).max(0);
        end = (ii + 1).min(lg);
    }
    (start..end).map(|j| (j * d + g) as usize).collect()
}

/// SplitMix64 + Box-Muller: deterministic standard normal samples.
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Normal(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn sample(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sample()).collect()
    }
}

/// Which keys a query attends: `mask(query_coords, key_coords)` is the bias
/// offset inside one head's table, or `None`.
pub type Mask<'a> = &'a dyn Fn(&[usize], &[usize]) -> Option<usize>;

/// Results of the dense oracle, all f64.
pub struct Dense {
    pub out: Vec<f64>,
    pub lse: Vec<f64>,
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub drpb: Vec<f64>,
}

/// Spatial coordinates of token `tok` for extents `ext`.
pub fn unravel(mut tok: usize, ext: &[usize]) -> Vec<usize> {
    let mut c = vec![0; ext.len()];
    for a in (0..ext.len()).rev() {
        c[a] = tok % ext[a];
        tok /= ext[a];
    }
    c
}

/// Dense attention in f64 over all `N x N` pairs with a mask given by
/// `mask(p_coords, t_coords) -> Option<rpb offset per head>`: softmax,
/// output, lse, and the analytic gradients for `d_out`.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    p: &Problem,
    spatial: &[usize],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rpb: Option<&[f32]>,
    d_out: &[f32],
    mask: Mask<'_>,
) -> Dense {
    let (b_n, h_n, dk, dv) = (p.batch(), p.heads(), p.head_dim(), p.head_dim_v());
    let n = spatial.iter().product::<usize>();
    let per_head = p.rpb_per_head();
    let scale = p.scale() as f64;
    let mut r = Dense {
        out: vec![0.0; p.v_len()],
        lse: vec![0.0; p.lse_len()],
        dq: vec![0.0; p.qk_len()],
        dk: vec![0.0; p.qk_len()],
        dv: vec![0.0; p.v_len()],
        drpb: vec![0.0; p.rpb_len()],
    };
    let coords: Vec<Vec<usize>> = (0..n).map(|t| unravel(t, spatial)).collect();
    for b in 0..b_n {
        for h in 0..h_n {
            let row = |t: usize| (b * n + t) * h_n + h;
            for pq in 0..n {
                let rq = row(pq);
                // Logits over the attended keys.
                let mut keys = vec![];
                for t in 0..n {
                    if let Some(off) = mask(&coords[pq], &coords[t]) {
                        let rk = row(t);
                        let mut s = 0.0;
                        for c in 0..dk {
                            s += q[rq * dk + c] as f64 * k[rk * dk + c] as f64;
                        }
                        let bias = rpb.map_or(0.0, |r| r[h * per_head + off] as f64);
                        keys.push((t, off, scale * s + bias));
                    }
                }
                let m = keys.iter().map(|x| x.2).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = keys.iter().map(|x| (x.2 - m).exp()).sum();
                let lse = m + sum.ln();
                r.lse[rq] = lse;
                let probs: Vec<f64> = keys.iter().map(|x| (x.2 - lse).exp()).collect();
                for (&(t, _, _), &pr) in keys.iter().zip(&probs) {
                    for c in 0..dv {
                        r.out[rq * dv + c] += pr * v[row(t) * dv + c] as f64;
                    }
                }
                // Backward.
                let delta: f64 = (0..dv)
                    .map(|c| d_out[rq * dv + c] as f64 * r.out[rq * dv + c])
                    .sum();
                for (&(t, off, _), &pr) in keys.iter().zip(&probs) {
                    let rk = row(t);
                    let dp: f64 = (0..dv)
                        .map(|c| d_out[rq * dv + c] as f64 * v[rk * dv + c] as f64)
                        .sum();
                    let ds = pr * (dp - delta);
                    for c in 0..dk {
                        r.dq[rq * dk + c] += scale * ds * k[rk * dk + c] as f64;
                        r.dk[rk * dk + c] += scale * ds * q[rq * dk + c] as f64;
                    }
                    for c in 0..dv {
                        r.dv[rk * dv + c] += pr * d_out[rq * dv + c] as f64;
                    }
                    r.drpb[h * per_head + off] += ds;
                }
            }
        }
    }
    r
}

/// The SPEC mask: `Some(rpb offset)` iff `t` is in `p`'s window on every axis.
pub fn spec_mask(p: &Problem, spatial: &[usize]) -> impl Fn(&[usize], &[usize]) -> Option<usize> {
    let params = *p.params();
    let spatial = spatial.to_vec();
    move |pc: &[usize], tc: &[usize]| {
        let mut off = 0;
        for a in 0..spatial.len() {
            let (k, d) = (params.kernel_size()[a], params.dilation()[a]);
            let w = spec_window(
                spatial[a],
                k,
                params.stride()[a],
                d,
                params.causal()[a],
                pc[a],
            );
            if !w.contains(&tc[a]) {
                return None;
            }
            let idx = (tc[a] / d) as i64 - (pc[a] / d) as i64 + k as i64 - 1;
            off = off * (2 * k - 1) + idx as usize;
        }
        Some(off)
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}
