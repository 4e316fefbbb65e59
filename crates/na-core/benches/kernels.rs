//! Criterion micro-benchmarks of the fused kernels' inner paths, one ISA at
//! a time, on the calling thread and without allocation (the `*_with_scratch`
//! entry points): the sliding-window path of interior tiles (a 1D line and a
//! 2D map with stride 1), border runs with broadcast keys (a dilation group
//! as short as the kernel), the union path (stride > 1), bias, and f16
//! storage. Whole-operator figures with baselines come from `na bench`.
//!
//! `cargo bench -p na-core --bench kernels [-- FILTER]`; throughput "elements"
//! are floating-point operations (forward: 4 B heads N W D), so Gelem/s reads
//! as GFLOP/s of the forward pass.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use na_core::fused::{self, Isa};
use na_core::{Element, Grads, Inputs, Params, Problem, Saved};
use std::hint::black_box;

/// A named shape: spatial extent, heads, head dim, kernel, dilation, stride, bias.
struct Shape {
    id: &'static str,
    spatial: &'static [usize],
    heads: usize,
    dim: usize,
    kernel: usize,
    dilation: usize,
    stride: usize,
    rpb: bool,
}

const SHAPES: &[Shape] = &[
    Shape {
        id: "1d-slide-k7",
        spatial: &[256],
        heads: 2,
        dim: 32,
        kernel: 7,
        dilation: 1,
        stride: 1,
        rpb: false,
    },
    Shape {
        id: "2d-slide-k7",
        spatial: &[16, 16],
        heads: 2,
        dim: 32,
        kernel: 7,
        dilation: 1,
        stride: 1,
        rpb: false,
    },
    Shape {
        id: "2d-slide-k7-rpb",
        spatial: &[16, 16],
        heads: 2,
        dim: 32,
        kernel: 7,
        dilation: 1,
        stride: 1,
        rpb: true,
    },
    Shape {
        id: "2d-broadcast-d4",
        spatial: &[28, 28],
        heads: 2,
        dim: 32,
        kernel: 7,
        dilation: 4,
        stride: 1,
        rpb: false,
    },
    Shape {
        id: "2d-union-s2",
        spatial: &[16, 16],
        heads: 2,
        dim: 32,
        kernel: 7,
        dilation: 1,
        stride: 2,
        rpb: false,
    },
];

fn problem(s: &Shape) -> Problem {
    let n = s.spatial.len();
    let params = Params::new(&vec![s.kernel; n])
        .and_then(|p| p.with_dilation(&[s.dilation]))
        .and_then(|p| p.with_stride(&[s.stride]))
        .expect("valid parameters");
    Problem::new(1, s.spatial, s.heads, s.dim, s.dim, params).expect("valid problem")
}

/// Deterministic inputs in [-1, 1).
fn fill<T: Element>(n: usize, seed: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f32(((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0))
        .collect()
}

fn bench_dtype<T: Element>(c: &mut Criterion, dtype: &str, shapes: &[&Shape]) {
    let mut g = c.benchmark_group(format!("fused-{dtype}"));
    for s in shapes {
        let p = problem(s);
        let n = p.qk_len();
        let (q, k, v, d_out) = (
            fill::<T>(n, 1),
            fill::<T>(n, 2),
            fill::<T>(n, 3),
            fill::<T>(n, 4),
        );
        let rpb = fill::<T>(p.rpb_len(), 5);
        let x = Inputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: s.rpb.then_some(&rpb[..]),
        };
        let mut out = vec![T::default(); p.v_len()];
        let mut lse = vec![0.0f32; p.lse_len()];
        // Scratch for the hungriest ISA (lengths scale with the lanes).
        let most = |len: fn(Isa, &Problem) -> usize| {
            Isa::available().map(|i| len(i, &p)).max().unwrap_or(0)
        };
        let mut fs = vec![0.0f32; most(fused::forward_scratch_len_on)];
        let mut bs = vec![0.0f32; most(fused::backward_scratch_len_on)];
        let (mut dq, mut dk, mut dv) = (
            vec![T::default(); n],
            vec![T::default(); n],
            vec![T::default(); p.v_len()],
        );
        let mut drpb = vec![T::default(); p.rpb_len()];
        g.throughput(Throughput::Elements(p.forward_flops() as u64));
        for isa in Isa::available() {
            g.bench_function(BenchmarkId::new(format!("{}/forward", s.id), isa), |b| {
                b.iter(|| {
                    fused::forward_with_scratch_on(isa, &p, x, &mut out, Some(&mut lse), &mut fs)
                        .expect("forward");
                    black_box(&out);
                })
            });
            fused::forward_with_scratch_on(isa, &p, x, &mut out, Some(&mut lse), &mut fs)
                .expect("forward");
            g.bench_function(BenchmarkId::new(format!("{}/backward", s.id), isa), |b| {
                b.iter(|| {
                    let sv = Saved {
                        out: &out,
                        lse: &lse,
                        d_out: &d_out,
                    };
                    let gr = Grads {
                        d_query: &mut dq,
                        d_key: &mut dk,
                        d_value: &mut dv,
                        d_rpb: s.rpb.then_some(&mut drpb[..]),
                    };
                    fused::backward_with_scratch_on(isa, &p, x, sv, gr, &mut bs).expect("backward");
                    black_box(&dq);
                })
            });
        }
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let all: Vec<&Shape> = SHAPES.iter().collect();
    bench_dtype::<f32>(c, "f32", &all);
    bench_dtype::<f16>(c, "f16", &all[1..2]);
}

criterion_group!(benches, kernels);
criterion_main!(benches);
