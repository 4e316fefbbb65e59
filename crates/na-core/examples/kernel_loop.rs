//! Runs one fused forward (or forward + backward) shape on the calling
//! thread in a loop, for profilers (`perf record`): nothing else runs.
//!
//! `cargo run --release -p na-core --example kernel_loop -- H W HEADS D K DIL ITERS [bwd] [isa]`

use na_core::fused::{self, Isa};
use na_core::{Grads, Inputs, Params, Problem, Saved};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (h, w, heads, d, k, dil, iters) = (
        num(0, 56),
        num(1, 56),
        num(2, 2),
        num(3, 32),
        num(4, 7),
        num(5, 1),
        num(6, 200),
    );
    let bwd = a.get(7).is_some_and(|s| s == "bwd");
    let isa = match a.get(8).map(String::as_str) {
        Some("avx2") => Isa::available().find(|i| i.name() == "avx2"),
        Some("generic") => Some(Isa::Generic),
        Some("avx512") => Isa::available().find(|i| i.name() == "avx512"),
        _ => None,
    }
    .unwrap_or_else(Isa::best);
    let params = Params::new(&[k, k])
        .and_then(|p| p.with_dilation(&[dil]))
        .expect("params");
    let p = Problem::new(1, &[h, w], heads, d, d, params).expect("problem");
    let n = h * w * heads * d;
    let x: Vec<f32> = (0..3 * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let inp = Inputs {
        query: &x[..n],
        key: &x[n..2 * n],
        value: &x[2 * n..],
        rpb: None,
    };
    let mut out = vec![0.0f32; n];
    let mut lse = vec![0.0f32; p.lse_len()];
    let mut scratch = vec![0.0f32; fused::forward_scratch_len_on(isa, &p)];
    let mut bscratch = vec![0.0f32; fused::backward_scratch_len_on(isa, &p)];
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut best = f64::INFINITY;
    let mut total = 0.0;
    for _ in 0..iters {
        let t = Instant::now();
        fused::forward_with_scratch_on(isa, &p, inp, &mut out, Some(&mut lse), &mut scratch)
            .expect("forward");
        if bwd {
            let s = Saved {
                out: &out,
                lse: &lse,
                d_out: &x[..n],
            };
            let g = Grads {
                d_query: &mut dq,
                d_key: &mut dk,
                d_value: &mut dv,
                d_rpb: None,
            };
            fused::backward_with_scratch_on(isa, &p, inp, s, g, &mut bscratch).expect("backward");
        }
        let e = t.elapsed().as_secs_f64();
        best = best.min(e);
        total += e;
    }
    println!(
        "{isa}: min {:.3} ms, mean {:.3} ms per call",
        best * 1e3,
        total / iters as f64 * 1e3
    );
}
