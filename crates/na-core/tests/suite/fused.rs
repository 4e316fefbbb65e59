//! The fused kernels against the reference (the oracle) and the dense f64
//! oracle, on every ISA this CPU has, in every storage type.

use crate::common::{dense, max_abs_diff, spec_mask, Normal};
use na_core::fused::{self, Fused, Isa};
use na_core::reference::Reference;
use na_core::{bf16, f16, Element, Error, Grads, Inputs, Kernels, Par, Params, Problem, Saved};
use proptest::prelude::*;

/// Everything one implementation produces, widened to f32.
#[derive(Debug, PartialEq)]
struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drpb: Vec<f32>,
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rpb: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

fn data(p: &Problem, rpb: bool, seed: u64) -> Data {
    let mut r = Normal::new(seed);
    Data {
        q: r.vec(p.qk_len()),
        k: r.vec(p.qk_len()),
        v: r.vec(p.v_len()),
        rpb: rpb.then(|| r.vec(p.rpb_len())),
        d_out: r.vec(p.v_len()),
    }
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}
fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

#[derive(Clone, Copy)]
enum Impl {
    Reference,
    Fused(Isa),
}

fn run<T: Element>(p: &Problem, d: &Data, imp: Impl, par: Par) -> Run {
    match imp {
        Impl::Reference => run_family::<T, _>(p, d, Reference, Some(par)),
        Impl::Fused(isa) => run_family::<T, _>(p, d, Fused::on(isa), Some(par)),
    }
}

/// Forward then backward through a [`Kernels`] family: its allocating entry
/// points with `par`, or with `None` its `*_with_scratch` forms on a scratch
/// buffer of exactly the stated length.
fn run_family<T: Element, K: Kernels>(p: &Problem, d: &Data, k: K, par: Option<Par>) -> Run {
    let (q, kk, v, d_out) = (
        conv::<T>(&d.q),
        conv::<T>(&d.k),
        conv::<T>(&d.v),
        conv::<T>(&d.d_out),
    );
    let rpb = d.rpb.as_deref().map(conv::<T>);
    let x = Inputs {
        query: &q,
        key: &kk,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    match par {
        Some(par) => k.forward(p, x, &mut out, Some(&mut lse), par),
        None => {
            let mut scratch = vec![f32::NAN; k.forward_scratch_len(p)];
            k.forward_with_scratch(p, x, &mut out, Some(&mut lse), &mut scratch)
        }
    }
    .unwrap();
    let (mut dq, mut dk, mut dv) = (
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.v_len()],
    );
    let mut drpb = vec![T::default(); if rpb.is_some() { p.rpb_len() } else { 0 }];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: rpb.is_some().then_some(&mut drpb[..]),
    };
    let s = Saved {
        out: &out,
        lse: &lse,
        d_out: &d_out,
    };
    match par {
        Some(par) => k.backward(p, x, s, g, par),
        None => {
            let mut scratch = vec![f32::NAN; k.backward_scratch_len(p)];
            k.backward_with_scratch(p, x, s, g, &mut scratch)
        }
    }
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

fn diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_close(a: &Run, b: &Run, tol: (f32, f32), what: &str) {
    // d_rpb sums d_logit over every position: its values grow with the
    // problem, so its tolerance is relative to its magnitude (above 1).
    let rpb_scale = b.drpb.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (name, e, t) in [
        ("out", diff(&a.out, &b.out), tol.0),
        ("lse", diff(&a.lse, &b.lse), tol.0),
        ("d_query", diff(&a.dq, &b.dq), tol.1),
        ("d_key", diff(&a.dk, &b.dk), tol.1),
        ("d_value", diff(&a.dv, &b.dv), tol.1),
        ("d_rpb", diff(&a.drpb, &b.drpb), tol.1 * rpb_scale),
    ] {
        assert!(e <= t, "{what}: {name} differs by {e:e} > {t:e}");
    }
}

fn problems() -> impl Strategy<Value = (Problem, bool, u64)> {
    let axis = (2usize..=20)
        .prop_flat_map(|l| (Just(l), 2..=l.min(9)))
        .prop_flat_map(|(l, k)| (Just(l), Just(k), 1..=k, 1..=l / k, any::<bool>()));
    (
        prop::collection::vec(axis, 1..=3),
        1usize..=2,
        1usize..=3,
        prop_oneof![1usize..=9, Just(16), Just(32)],
        prop_oneof![1usize..=9, Just(16), Just(32)],
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(axes, b, h, dk, dv, rpb, seed)| {
            let spatial: Vec<usize> = axes.iter().map(|a| a.0).collect();
            let pick = |f: fn(&(usize, usize, usize, usize, bool)) -> usize| {
                axes.iter().map(f).collect::<Vec<_>>()
            };
            let cs: Vec<bool> = axes.iter().map(|a| a.4).collect();
            let params = Params::new(&pick(|a| a.1))
                .unwrap()
                .with_stride(&pick(|a| a.2))
                .unwrap()
                .with_dilation(&pick(|a| a.3))
                .unwrap()
                .with_causal(&cs)
                .unwrap();
            (
                Problem::new(b, &spatial, h, dk, dv, params).unwrap(),
                rpb,
                seed,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn fused_matches_reference_on_every_isa((p, rpb, seed) in problems()) {
        let d = data(&p, rpb, seed);
        let want = run::<f32>(&p, &d, Impl::Reference, Par::Seq);
        for isa in Isa::available() {
            let got = run::<f32>(&p, &d, Impl::Fused(isa), Par::Seq);
            assert_close(&got, &want, (2e-5, 2e-4), &format!("{isa} {p:?}"));
        }
    }
}

#[test]
fn fused_matches_dense_oracle_within_spec_tolerances() {
    let cases = [
        (
            1,
            vec![40],
            Params::new(&[9]).unwrap().with_dilation(&[3]).unwrap(),
            32,
            16,
        ),
        (
            2,
            vec![17, 19],
            Params::new(&[5, 4]).unwrap().with_stride(&[2, 3]).unwrap(),
            16,
            16,
        ),
        (
            1,
            vec![9, 10],
            Params::new(&[3, 7])
                .unwrap()
                .with_causal(&[true, false])
                .unwrap(),
            8,
            24,
        ),
        (
            1,
            vec![6, 7, 9],
            Params::new(&[3, 3, 4])
                .unwrap()
                .with_dilation(&[2, 1, 2])
                .unwrap(),
            16,
            8,
        ),
    ];
    for (i, (b, spatial, params, dk, dv)) in cases.into_iter().enumerate() {
        let p = Problem::new(b, &spatial, 2, dk, dv, params).unwrap();
        let d = data(&p, true, 40 + i as u64);
        let o = dense(
            &p,
            &spatial,
            &d.q,
            &d.k,
            &d.v,
            d.rpb.as_deref(),
            &d.d_out,
            &spec_mask(&p, &spatial),
        );
        for isa in Isa::available() {
            let r = run::<f32>(&p, &d, Impl::Fused(isa), Par::Seq);
            for (name, got, want, tol) in [
                ("out", &r.out, &o.out, 1e-4),
                ("lse", &r.lse, &o.lse, 1e-4),
                ("d_query", &r.dq, &o.dq, 1e-3),
                ("d_key", &r.dk, &o.dk, 1e-3),
                ("d_value", &r.dv, &o.dv, 1e-3),
                ("d_rpb", &r.drpb, &o.drpb, 1e-3),
            ] {
                let e = max_abs_diff(got, want);
                assert!(e <= tol, "case {i} {isa}: {name} error {e:e}");
            }
        }
    }
}

/// The ISAs the sweeps above cover: on aarch64, NEON (a compile-time
/// feature) must be among them and be the best, so a build that lost it would
/// fail here instead of quietly testing only the portable path.
#[test]
fn every_isa_of_the_target_is_tested() {
    let names: Vec<&str> = Isa::available().map(Isa::name).collect();
    assert_eq!(names[0], "generic");
    if cfg!(target_arch = "aarch64") {
        assert_eq!(names, ["generic", "neon"]);
        assert_eq!(Isa::best().name(), "neon");
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(names.contains(&"avx2"), "{names:?}");
    }
    assert_eq!(
        Isa::best(),
        *Isa::available().collect::<Vec<_>>().last().unwrap()
    );
}

#[test]
fn half_precision_fused_within_spec_tolerances_of_f32_reference() {
    let p = Problem::new(
        2,
        &[12, 11],
        2,
        32,
        32,
        Params::new(&[5, 4])
            .unwrap()
            .with_dilation(&[2, 1])
            .unwrap(),
    )
    .unwrap();
    let d = data(&p, true, 5);
    let want = run::<f32>(&p, &d, Impl::Reference, Par::Seq);
    for isa in Isa::available() {
        assert_close(
            &run::<f16>(&p, &d, Impl::Fused(isa), Par::Seq),
            &want,
            (1e-2, 2e-2),
            &format!("f16 {isa}"),
        );
        assert_close(
            &run::<bf16>(&p, &d, Impl::Fused(isa), Par::Seq),
            &want,
            (5e-2, 5e-2),
            &format!("bf16 {isa}"),
        );
    }
}

#[test]
fn half_precision_fused_no_worse_than_half_precision_reference() {
    // A larger problem, where d_rpb sums ~800 terms: rounding in bf16 alone
    // exceeds SPEC's absolute tolerance, so compare error to the reference's.
    let p = Problem::new(
        2,
        &[14, 15],
        2,
        32,
        32,
        Params::new(&[5, 5])
            .unwrap()
            .with_dilation(&[2, 1])
            .unwrap(),
    )
    .unwrap();
    let d = data(&p, true, 5);
    let exact = run::<f32>(&p, &d, Impl::Reference, Par::Seq);
    let err = |r: &Run| {
        [
            diff(&r.out, &exact.out),
            diff(&r.lse, &exact.lse),
            diff(&r.dq, &exact.dq),
            diff(&r.dk, &exact.dk),
            diff(&r.dv, &exact.dv),
            diff(&r.drpb, &exact.drpb),
        ]
    };
    let (rf, rb) = (
        err(&run::<f16>(&p, &d, Impl::Reference, Par::Seq)),
        err(&run::<bf16>(&p, &d, Impl::Reference, Par::Seq)),
    );
    for isa in Isa::available() {
        let (ff, fb) = (
            err(&run::<f16>(&p, &d, Impl::Fused(isa), Par::Seq)),
            err(&run::<bf16>(&p, &d, Impl::Fused(isa), Par::Seq)),
        );
        for i in 0..6 {
            assert!(
                ff[i] <= 2.0 * rf[i] + 1e-3,
                "f16 {isa} output {i}: {} vs reference {}",
                ff[i],
                rf[i]
            );
            assert!(
                fb[i] <= 2.0 * rb[i] + 1e-2,
                "bf16 {isa} output {i}: {} vs reference {}",
                fb[i],
                rb[i]
            );
        }
    }
}

#[test]
fn threads_give_bit_identical_results() {
    let p = Problem::new(
        2,
        &[20, 70],
        3,
        16,
        8,
        Params::new(&[7, 5])
            .unwrap()
            .with_dilation(&[2, 3])
            .unwrap(),
    )
    .unwrap();
    let d = data(&p, true, 6);
    for isa in Isa::available() {
        let seq = run::<f32>(&p, &d, Impl::Fused(isa), Par::Seq);
        for n in [2, 5] {
            assert_eq!(
                run::<f32>(&p, &d, Impl::Fused(isa), Par::rayon(n)),
                seq,
                "{isa} with {n} threads"
            );
        }
    }
}

/// Every family through the one [`Kernels`] interface: caller-owned scratch
/// of exactly the stated length (filled with NaN, so a kernel that read it
/// before writing would show), one thread and two threads give the same bits.
#[test]
fn every_kernel_family_gives_the_same_bits_with_scratch_and_threads() {
    let problems = [
        Problem::new(2, &[9, 8], 2, 4, 4, Params::new(&[3, 3]).unwrap()).unwrap(),
        Problem::new(
            1,
            &[13, 11],
            1,
            8,
            8,
            Params::new(&[5, 3])
                .unwrap()
                .with_dilation(&[2, 3])
                .unwrap(),
        )
        .unwrap(),
        Problem::new(
            1,
            &[40],
            2,
            16,
            16,
            Params::new(&[7]).unwrap().with_causal(&[true]).unwrap(),
        )
        .unwrap(),
        Problem::new(1, &[4, 5, 6], 1, 4, 4, Params::new(&[3, 3, 3]).unwrap()).unwrap(),
    ];
    fn check<T: Element, K: Kernels>(p: &Problem, d: &Data, k: K) {
        let with_scratch = run_family::<T, K>(p, d, k, None);
        for par in [Par::Seq, Par::rayon(2)] {
            let r = run_family::<T, K>(p, d, k, Some(par));
            assert_eq!(r, with_scratch, "{} {par:?} {p:?}", k.name());
        }
    }
    for (i, p) in problems.iter().enumerate() {
        let rpb = p.rpb_len() > 0 && i != 2;
        let d = data(p, rpb, 40 + i as u64);
        check::<f32, _>(p, &d, Reference);
        check::<f16, _>(p, &d, Reference);
        check::<f32, _>(p, &d, Fused::best());
        for isa in Isa::available() {
            check::<f32, _>(p, &d, Fused::on(isa));
            check::<bf16, _>(p, &d, Fused::on(isa));
        }
    }
}

#[test]
fn scratch_entry_points_and_errors() {
    let p = Problem::new(1, &[9, 8], 2, 4, 4, Params::new(&[3, 3]).unwrap()).unwrap();
    let d = data(&p, true, 8);
    let x = Inputs {
        query: &d.q,
        key: &d.k,
        value: &d.v,
        rpb: d.rpb.as_deref(),
    };
    // The entry points without `_on` run on `Isa::best_for` (chunks, hence
    // the order of the `d_rpb` sums, depend on the ISA).
    let want = run::<f32>(&p, &d, Impl::Fused(Isa::best_for(&p)), Par::Seq);
    let mut out = vec![0.0; p.v_len()];
    let mut lse = vec![0.0; p.lse_len()];
    let mut tiny = [0.0f32; 3];
    assert_eq!(
        fused::forward_with_scratch(&p, x, &mut out, None, &mut tiny),
        Err(Error::ScratchTooSmall {
            needed: fused::forward_scratch_len(&p),
            got: 3
        })
    );
    assert_eq!(
        fused::forward(
            &p,
            Inputs {
                key: &d.k[1..],
                ..x
            },
            &mut out,
            None,
            Par::Seq
        ),
        Err(Error::LengthMismatch {
            tensor: "key",
            expected: p.qk_len(),
            got: p.qk_len() - 1
        })
    );
    let mut scratch = vec![0.0; fused::forward_scratch_len(&p)];
    fused::forward_with_scratch(&p, x, &mut out, Some(&mut lse), &mut scratch).unwrap();
    assert_eq!((&out, &lse), (&want.out, &want.lse));
    let (mut dq, mut dk, mut dv, mut drpb) = (
        vec![0.0; p.qk_len()],
        vec![0.0; p.qk_len()],
        vec![0.0; p.v_len()],
        vec![0.0; p.rpb_len()],
    );
    let s = Saved {
        out: &out,
        lse: &lse,
        d_out: &d.d_out,
    };
    let mut scratch = vec![0.0; fused::backward_scratch_len(&p)];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: Some(&mut drpb),
    };
    fused::backward_with_scratch(&p, x, s, g, &mut scratch).unwrap();
    assert_eq!((dq, dk, dv, drpb), (want.dq, want.dk, want.dv, want.drpb));
    let g = Grads {
        d_query: &mut [],
        d_key: &mut [],
        d_value: &mut [],
        d_rpb: None,
    };
    assert_eq!(
        fused::backward(&p, x, s, g, Par::Seq),
        Err(Error::LengthMismatch {
            tensor: "d_query",
            expected: p.qk_len(),
            got: 0
        })
    );
}

#[test]
fn benchmark_shapes_match_reference() {
    // Smaller batches of BENCHMARKS.md shapes: nat-l0, dinat-l0, 1D long window, 3D.
    let cases = [
        Problem::new(1, &[56, 56], 2, 32, 32, Params::new(&[7, 7]).unwrap()).unwrap(),
        Problem::new(
            1,
            &[56, 56],
            2,
            32,
            32,
            Params::new(&[7, 7]).unwrap().with_dilation(&[8]).unwrap(),
        )
        .unwrap(),
        Problem::new(1, &[600], 1, 64, 64, Params::new(&[255]).unwrap()).unwrap(),
        Problem::new(
            1,
            &[512],
            1,
            64,
            64,
            Params::new(&[128]).unwrap().with_stride(&[128]).unwrap(),
        )
        .unwrap(),
        Problem::new(1, &[8, 16, 16], 1, 32, 32, Params::new(&[3, 7, 7]).unwrap()).unwrap(),
        // Rows longer than a 64-position segment on maps of 16 lines or
        // more: chunks of whole rows, multi-row tiles (causal, no bias).
        Problem::new(
            2,
            &[18, 70],
            1,
            8,
            8,
            Params::new(&[3, 9])
                .unwrap()
                .with_causal(&[false, true])
                .unwrap(),
        )
        .unwrap(),
        // The same with dilation on both axes and a bias.
        Problem::new(
            1,
            &[16, 100],
            2,
            16,
            16,
            Params::new(&[5, 13])
                .unwrap()
                .with_dilation(&[2, 3])
                .unwrap(),
        )
        .unwrap(),
    ];
    for (i, p) in cases.iter().enumerate() {
        let d = data(p, i % 2 == 0, 90 + i as u64);
        let want = run::<f32>(p, &d, Impl::Reference, Par::rayon(0));
        for isa in Isa::available() {
            let got = run::<f32>(p, &d, Impl::Fused(isa), Par::rayon(0));
            assert_close(&got, &want, (2e-5, 2e-4), &format!("case {i} on {isa}"));
        }
    }
}
