//! The reference kernels against a dense f64 oracle built on SPEC.md's
//! pseudocode, plus structural properties, storage types and error paths.

use crate::common::{dense, max_abs_diff, spec_mask, Dense, Normal};
use na_core::reference::{self, Grads, Inputs, Saved};
use na_core::{bf16, f16, Element, Error, Par, Params, Problem};
use proptest::prelude::*;

/// A random problem instance with its inputs.
struct Case {
    p: Problem,
    spatial: Vec<usize>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rpb: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

impl Case {
    fn new(p: Problem, spatial: &[usize], with_rpb: bool, seed: u64) -> Self {
        let mut r = Normal::new(seed);
        Case {
            spatial: spatial.to_vec(),
            q: r.vec(p.qk_len()),
            k: r.vec(p.qk_len()),
            v: r.vec(p.v_len()),
            rpb: with_rpb.then(|| r.vec(p.rpb_len())),
            d_out: r.vec(p.v_len()),
            p,
        }
    }

    fn oracle(&self) -> Dense {
        let mask = spec_mask(&self.p, &self.spatial);
        dense(
            &self.p,
            &self.spatial,
            &self.q,
            &self.k,
            &self.v,
            self.rpb.as_deref(),
            &self.d_out,
            &mask,
        )
    }
}

/// Outputs of the reference in f32 (converted back from storage type `T`).
struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drpb: Vec<f32>,
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}
fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn run<T: Element>(c: &Case, par: Par) -> Run {
    let p = &c.p;
    let (q, k, v, d_out) = (
        conv::<T>(&c.q),
        conv::<T>(&c.k),
        conv::<T>(&c.v),
        conv::<T>(&c.d_out),
    );
    let rpb = c.rpb.as_deref().map(conv::<T>);
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    reference::forward(p, x, &mut out, Some(&mut lse), par).unwrap();
    let mut dq = vec![T::default(); p.qk_len()];
    let mut dk = vec![T::default(); p.qk_len()];
    let mut dv = vec![T::default(); p.v_len()];
    let mut drpb = vec![T::default(); if rpb.is_some() { p.rpb_len() } else { 0 }];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: rpb.is_some().then_some(&mut drpb[..]),
    };
    reference::backward(
        p,
        x,
        Saved {
            out: &out,
            lse: &lse,
            d_out: &d_out,
        },
        g,
        par,
    )
    .unwrap();
    Run {
        out: back(&out),
        lse,
        dq: back(&dq),
        dk: back(&dk),
        dv: back(&dv),
        drpb: back(&drpb),
    }
}

/// Asserts every output within the SPEC tolerances `(fwd, bwd)`.
fn assert_close(r: &Run, o: &Dense, tol: (f64, f64), what: &str) {
    let checks = [
        ("out", max_abs_diff(&r.out, &o.out), tol.0),
        ("lse", max_abs_diff(&r.lse, &o.lse), tol.0),
        ("d_query", max_abs_diff(&r.dq, &o.dq), tol.1),
        ("d_key", max_abs_diff(&r.dk, &o.dk), tol.1),
        ("d_value", max_abs_diff(&r.dv, &o.dv), tol.1),
    ];
    for (name, err, tol) in checks {
        assert!(err <= tol, "{what}: {name} max abs error {err:e} > {tol:e}");
    }
    if !r.drpb.is_empty() {
        let err = max_abs_diff(&r.drpb, &o.drpb);
        assert!(
            err <= tol.1,
            "{what}: d_rpb max abs error {err:e} > {:e}",
            tol.1
        );
    }
}

/// Random problems of 1 to 3 axes with every parameter in its valid range.
fn problems() -> impl Strategy<Value = (Problem, Vec<usize>, bool, u64)> {
    let axis = (2usize..=9)
        .prop_flat_map(|l| (Just(l), 2..=l))
        .prop_flat_map(|(l, k)| (Just(l), Just(k), 1..=k, 1..=l / k, any::<bool>()));
    (
        prop::collection::vec(axis, 1..=3),
        1usize..=2,
        1usize..=2,
        1usize..=6,
        1usize..=6,
        any::<bool>(),
        prop::option::of(-2.0f32..2.0),
        any::<u64>(),
    )
        .prop_map(|(axes, b, h, dk, dv, rpb, scale, seed)| {
            let spatial: Vec<usize> = axes.iter().map(|a| a.0).collect();
            let ks: Vec<usize> = axes.iter().map(|a| a.1).collect();
            let ss: Vec<usize> = axes.iter().map(|a| a.2).collect();
            let ds: Vec<usize> = axes.iter().map(|a| a.3).collect();
            let cs: Vec<bool> = axes.iter().map(|a| a.4).collect();
            let mut params = Params::new(&ks)
                .unwrap()
                .with_stride(&ss)
                .unwrap()
                .with_dilation(&ds)
                .unwrap()
                .with_causal(&cs)
                .unwrap();
            if let Some(s) = scale {
                params = params.with_scale(s).unwrap();
            }
            (
                Problem::new(b, &spatial, h, dk, dv, params).unwrap(),
                spatial,
                rpb,
                seed,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]
    #[test]
    fn f32_matches_dense_oracle((p, spatial, with_rpb, seed) in problems()) {
        let c = Case::new(p, &spatial, with_rpb, seed);
        assert_close(&run::<f32>(&c, Par::Seq), &c.oracle(), (1e-4, 1e-3), &format!("{p:?}"));
    }
}

fn problem(b: usize, spatial: &[usize], h: usize, dk: usize, dv: usize, params: Params) -> Problem {
    Problem::new(b, spatial, h, dk, dv, params).unwrap()
}

#[test]
fn half_precision_within_spec_tolerances() {
    let cases = [
        (
            problem(
                2,
                &[12, 11],
                2,
                16,
                16,
                Params::new(&[5, 4])
                    .unwrap()
                    .with_dilation(&[2, 1])
                    .unwrap(),
            ),
            true,
        ),
        (
            problem(
                1,
                &[33],
                3,
                32,
                24,
                Params::new(&[7]).unwrap().with_stride(&[3]).unwrap(),
            ),
            false,
        ),
        (
            problem(
                1,
                &[5, 6, 7],
                2,
                8,
                8,
                Params::new(&[3, 3, 4])
                    .unwrap()
                    .with_causal(&[true, false, false])
                    .unwrap(),
            ),
            true,
        ),
    ];
    for (i, (p, rpb)) in cases.into_iter().enumerate() {
        let spatial: Vec<usize> = p.axes().iter().map(|a| a.len()).collect();
        let c = Case::new(p, &spatial, rpb, 100 + i as u64);
        let o = c.oracle();
        assert_close(&run::<f32>(&c, Par::Seq), &o, (1e-4, 1e-3), "f32");
        assert_close(&run::<f16>(&c, Par::Seq), &o, (1e-2, 2e-2), "f16");
        assert_close(&run::<bf16>(&c, Par::Seq), &o, (5e-2, 5e-2), "bf16");
    }
}

#[test]
fn equals_full_self_attention_when_kernel_spans_every_axis() {
    for spatial in [vec![9], vec![5, 6], vec![3, 4, 5]] {
        let p = problem(2, &spatial, 2, 8, 8, Params::new(&spatial).unwrap());
        let c = Case::new(p, &spatial, false, 7);
        let o = dense(&p, &spatial, &c.q, &c.k, &c.v, None, &c.d_out, &|_, _| {
            Some(0)
        });
        assert_close(
            &run::<f32>(&c, Par::Seq),
            &o,
            (1e-4, 1e-3),
            "full attention",
        );
    }
}

#[test]
fn blocked_attention_when_stride_equals_kernel() {
    let spatial = [12, 8];
    let p = problem(
        1,
        &spatial,
        2,
        8,
        8,
        Params::new(&[4, 2]).unwrap().with_stride(&[4, 2]).unwrap(),
    );
    let c = Case::new(p, &spatial, false, 9);
    let block = |pc: &[usize], tc: &[usize]| {
        (pc[0] / 4 == tc[0] / 4 && pc[1] / 2 == tc[1] / 2).then_some(0)
    };
    let o = dense(&p, &spatial, &c.q, &c.k, &c.v, None, &c.d_out, &block);
    assert_close(
        &run::<f32>(&c, Par::Seq),
        &o,
        (1e-4, 1e-3),
        "blocked attention",
    );
}

#[test]
fn translation_equivariant_in_the_interior() {
    // Shift every input one position along axis 1; interior outputs shift too.
    let spatial = [10, 16];
    let (h, d) = (2, 4);
    let p = problem(1, &spatial, h, d, d, Params::new(&[3, 5]).unwrap());
    let c = Case::new(p, &spatial, true, 11);
    let shift = |x: &[f32], w: usize| {
        let mut y = x.to_vec();
        for i in 0..spatial[0] {
            for j in 1..spatial[1] {
                let (dst, src) = ((i * spatial[1] + j) * w, (i * spatial[1] + j - 1) * w);
                y[dst..dst + w].copy_from_slice(&x[src..src + w]);
            }
        }
        y
    };
    let w = h * d;
    let r0 = run::<f32>(&c, Par::Seq);
    let shifted = Case {
        q: shift(&c.q, w),
        k: shift(&c.k, w),
        v: shift(&c.v, w),
        d_out: shift(&c.d_out, w),
        ..c
    };
    let r1 = run::<f32>(&shifted, Par::Seq);
    // Output at (i, j + 1) of the shifted run equals (i, j) of the original,
    // away from the borders (both windows then lie inside the map).
    for i in 1..spatial[0] - 1 {
        for j in 3..spatial[1] - 3 {
            let (s, u) = ((i * spatial[1] + j + 1) * w, (i * spatial[1] + j) * w);
            for e in 0..w {
                assert!(
                    (r1.out[s + e] - r0.out[u + e]).abs() < 1e-5,
                    "out differs at ({i}, {j})"
                );
            }
        }
    }
}

#[test]
fn threads_give_bit_identical_results() {
    let spatial = [14, 13];
    let p = problem(
        2,
        &spatial,
        3,
        8,
        5,
        Params::new(&[5, 3])
            .unwrap()
            .with_dilation(&[2, 3])
            .unwrap()
            .with_stride(&[2, 1])
            .unwrap(),
    );
    let c = Case::new(p, &spatial, true, 13);
    let seq = run::<f32>(&c, Par::Seq);
    for n in [2, 3, 8] {
        let par = run::<f32>(&c, Par::rayon(n));
        assert_eq!(seq.out, par.out);
        assert_eq!(seq.lse, par.lse);
        assert_eq!(seq.dq, par.dq);
        assert_eq!(seq.dk, par.dk);
        assert_eq!(seq.dv, par.dv);
        assert_eq!(seq.drpb, par.drpb);
    }
}

#[test]
fn scratch_entry_points_match_allocating_ones() {
    let spatial = [7, 9];
    let p = problem(
        1,
        &spatial,
        2,
        4,
        6,
        Params::new(&[3, 4])
            .unwrap()
            .with_causal(&[false, true])
            .unwrap(),
    );
    let c = Case::new(p, &spatial, true, 17);
    let r = run::<f32>(&c, Par::Seq);
    let x = Inputs {
        query: &c.q,
        key: &c.k,
        value: &c.v,
        rpb: c.rpb.as_deref(),
    };
    let mut out = vec![0.0; p.v_len()];
    let mut lse = vec![0.0; p.lse_len()];
    let mut scratch = vec![0.0; reference::forward_scratch_len(&p)];
    reference::forward_with_scratch(&p, x, &mut out, Some(&mut lse), &mut scratch).unwrap();
    assert_eq!(out, r.out);
    assert_eq!(lse, r.lse);
    let (mut dq, mut dk, mut dv, mut drpb) = (
        vec![0.0; p.qk_len()],
        vec![0.0; p.qk_len()],
        vec![0.0; p.v_len()],
        vec![0.0; p.rpb_len()],
    );
    let mut scratch = vec![0.0; reference::backward_scratch_len(&p)];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: Some(&mut drpb),
    };
    let s = Saved {
        out: &out,
        lse: &lse,
        d_out: &c.d_out,
    };
    reference::backward_with_scratch(&p, x, s, g, &mut scratch).unwrap();
    assert_eq!((dq, dk, dv, drpb), (r.dq, r.dk, r.dv, r.drpb));
}

#[test]
fn every_api_error_is_typed() {
    let p = problem(1, &[6, 6], 2, 4, 3, Params::new(&[3, 3]).unwrap());
    let c = Case::new(p, &[6, 6], true, 1);
    let mut out = vec![0.0; p.v_len()];
    let mut lse = vec![0.0; p.lse_len()];
    let good = Inputs {
        query: &c.q,
        key: &c.k,
        value: &c.v,
        rpb: c.rpb.as_deref(),
    };
    let short = &c.q[1..];
    let mism = |tensor, expected, got| {
        Err(Error::LengthMismatch {
            tensor,
            expected,
            got,
        })
    };
    let (qk, v) = (p.qk_len(), p.v_len());
    let fwd = |x: Inputs<'_, f32>, out: &mut [f32], lse: Option<&mut [f32]>| {
        reference::forward(&p, x, out, lse, Par::Seq)
    };
    assert_eq!(
        fwd(
            Inputs {
                query: short,
                ..good
            },
            &mut out,
            None
        ),
        mism("query", qk, qk - 1)
    );
    assert_eq!(
        fwd(Inputs { key: short, ..good }, &mut out, None),
        mism("key", qk, qk - 1)
    );
    assert_eq!(
        fwd(
            Inputs {
                value: &c.q,
                ..good
            },
            &mut out,
            None
        ),
        mism("value", v, qk)
    );
    assert_eq!(
        fwd(
            Inputs {
                rpb: Some(&c.q),
                ..good
            },
            &mut out,
            None
        ),
        mism("rpb", p.rpb_len(), qk)
    );
    assert_eq!(fwd(good, &mut out[1..], None), mism("out", v, v - 1));
    assert_eq!(
        fwd(good, &mut out, Some(&mut lse[1..])),
        mism("lse", p.lse_len(), p.lse_len() - 1)
    );
    let mut tiny = [0.0f32; 2];
    assert_eq!(
        reference::forward_with_scratch(&p, good, &mut out, None, &mut tiny),
        Err(Error::ScratchTooSmall {
            needed: reference::forward_scratch_len(&p),
            got: 2
        })
    );
    fwd(good, &mut out, Some(&mut lse)).unwrap();

    let (mut dq, mut dk, mut dv, mut drpb) = (
        vec![0.0; qk],
        vec![0.0; qk],
        vec![0.0; v],
        vec![0.0; p.rpb_len()],
    );
    let s = Saved {
        out: &out,
        lse: &lse,
        d_out: &c.d_out,
    };
    let mut bwd = |x: Inputs<'_, f32>, s: Saved<'_, f32>, which: usize| {
        let mut g = Grads {
            d_query: &mut dq[..],
            d_key: &mut dk[..],
            d_value: &mut dv[..],
            d_rpb: Some(&mut drpb[..]),
        };
        match which {
            1 => g.d_query = &mut [],
            2 => g.d_key = &mut [],
            3 => g.d_value = &mut [],
            4 => g.d_rpb = Some(&mut []),
            _ => {}
        }
        reference::backward(&p, x, s, g, Par::Seq)
    };
    assert_eq!(
        bwd(
            good,
            Saved {
                out: &out[1..],
                ..s
            },
            0
        ),
        mism("out", v, v - 1)
    );
    assert_eq!(
        bwd(
            good,
            Saved {
                lse: &lse[1..],
                ..s
            },
            0
        ),
        mism("lse", p.lse_len(), p.lse_len() - 1)
    );
    assert_eq!(
        bwd(
            good,
            Saved {
                d_out: &c.d_out[1..],
                ..s
            },
            0
        ),
        mism("d_out", v, v - 1)
    );
    assert_eq!(bwd(good, s, 1), mism("d_query", qk, 0));
    assert_eq!(bwd(good, s, 2), mism("d_key", qk, 0));
    assert_eq!(bwd(good, s, 3), mism("d_value", v, 0));
    assert_eq!(bwd(good, s, 4), mism("d_rpb", p.rpb_len(), 0));
    assert_eq!(
        bwd(Inputs { rpb: None, ..good }, s, 0),
        Err(Error::GradRpbWithoutRpb)
    );
    bwd(good, s, 0).unwrap();
}
