//! The CUDA kernels against na-core's reference and NATTEN's golden
//! fixtures, forward and backward, f32/f16/bf16, within SPEC.md's
//! tolerances.
//!
//! Needs a CUDA device: without one every test prints why and passes
//! (skips), unless `NA_CUDA_REQUIRE_GPU=1`, which turns the skip into a
//! failure (set it on the device machine so that a broken driver setup
//! cannot pass silently).
//!
//! On a device machine: build here with `cargo test -p na-cuda --release
//! --no-run`, carry the `target/release/deps/gpu-*` binary and the fixtures
//! (`crates/na-core/tests/fixtures`), run it from `crates/na-cuda` with
//! NVRTC on `LD_LIBRARY_PATH`.

mod common;

use common::{fixtures, fixtures_dir, sweep, Case, Normal};
use na_core::npy::{read_npy, DEFAULT_MAX_ELEMENTS};
use na_core::{bf16, f16, reference, DType, Element, Grads, Inputs, Par, Problem, Saved};
use na_cuda::cache::DiskCache;
use na_cuda::{
    backward_host, forward_host, CudaContext, CudaError, DeviceGrads, DeviceInputs, DeviceSaved,
};

fn ctx() -> Option<CudaContext> {
    let required = std::env::var("NA_CUDA_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match CudaContext::new(0) {
        Ok(c) => {
            let i = c.info();
            eprintln!(
                "device {}: {} (sm_{}), driver {}",
                i.ordinal,
                i.name,
                i.arch,
                i.driver()
            );
            Some(c)
        }
        Err(e) if e.is_unavailable() && !required => {
            eprintln!("skipped: {e} (set NA_CUDA_REQUIRE_GPU=1 to make this a failure)");
            None
        }
        Err(e) => panic!("no usable CUDA device: {e}"),
    }
}

/// SPEC.md's tolerances: (out and lse, gradients).
fn tolerance(dt: DType) -> (f32, f32) {
    match dt {
        DType::F32 => (1e-4, 1e-3),
        DType::F16 => (1e-2, 2e-2),
        DType::BF16 => (5e-2, 5e-2),
    }
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// Compares `got` with `want` within `tol`, scaled for f16/bf16 by the
/// largest magnitude above 1 (storage rounding alone is relative), as
/// na-core's golden test does.
fn expect_close(what: &str, dt: DType, got: &[f32], want: &[f32], tol: f32) {
    let mag = if dt == DType::F32 {
        1.0
    } else {
        want.iter().fold(1.0f32, |m, v| m.max(v.abs()))
    };
    let err = max_err(got, want);
    assert!(
        err <= tol * mag,
        "{what} ({dt}): max abs error {err:e} > {:e}",
        tol * mag
    );
}

/// The tensors of one run: inputs (already rounded to the storage type, in
/// f32) and `d_out`.
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rpb: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

/// Expected results, computed by na-core (reference) or read from fixtures.
struct Expected {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drpb: Option<Vec<f32>>,
}

/// na-core's reference in storage type `T`, on the same rounded inputs.
fn reference_of<T: Element>(p: &Problem, d: &Data) -> Expected {
    let (q, k, v, d_out) = (
        conv::<T>(&d.q),
        conv::<T>(&d.k),
        conv::<T>(&d.v),
        conv::<T>(&d.d_out),
    );
    let rpb = d.rpb.as_deref().map(conv::<T>);
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    reference::forward(p, x, &mut out, Some(&mut lse), Par::Seq).unwrap();
    let (mut dq, mut dk, mut dv) = (
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.v_len()],
    );
    let mut drpb = vec![T::default(); p.rpb_len()];
    reference::backward(
        p,
        x,
        Saved {
            out: &out,
            lse: &lse,
            d_out: &d_out,
        },
        Grads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: rpb.is_some().then_some(&mut drpb[..]),
        },
        Par::Seq,
    )
    .unwrap();
    Expected {
        out: back(&out),
        lse,
        dq: back(&dq),
        dk: back(&dk),
        dv: back(&dv),
        drpb: rpb.is_some().then(|| back(&drpb)),
    }
}

/// Runs forward then backward on the device in storage type `T` and checks
/// both against `want`. The backward reads the *expected* `out` and `lse`,
/// so that its check does not inherit the forward's rounding.
fn check_on_device<T: Element>(
    ctx: &CudaContext,
    name: &str,
    p: &Problem,
    d: &Data,
    want: &Expected,
) {
    let dt = T::DTYPE;
    let tol = tolerance(dt);
    let (q, k, v, d_out) = (
        conv::<T>(&d.q),
        conv::<T>(&d.k),
        conv::<T>(&d.v),
        conv::<T>(&d.d_out),
    );
    let rpb = d.rpb.as_deref().map(conv::<T>);
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    forward_host(ctx, p, x, &mut out, Some(&mut lse)).unwrap_or_else(|e| panic!("{name}: {e}"));
    expect_close(&format!("{name} out"), dt, &back(&out), &want.out, tol.0);
    expect_close(&format!("{name} lse"), dt, &lse, &want.lse, tol.0);

    let saved_out = conv::<T>(&want.out);
    let (mut dq, mut dk, mut dv) = (
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.v_len()],
    );
    let mut drpb = vec![T::default(); p.rpb_len()];
    backward_host(
        ctx,
        p,
        x,
        Saved {
            out: &saved_out,
            lse: &want.lse,
            d_out: &d_out,
        },
        Grads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: rpb.is_some().then_some(&mut drpb[..]),
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    expect_close(&format!("{name} d_query"), dt, &back(&dq), &want.dq, tol.1);
    expect_close(&format!("{name} d_key"), dt, &back(&dk), &want.dk, tol.1);
    expect_close(&format!("{name} d_value"), dt, &back(&dv), &want.dv, tol.1);
    if let Some(w) = &want.drpb {
        expect_close(&format!("{name} d_rpb"), dt, &back(&drpb), w, tol.1);
    }
}

/// Standard normal inputs for a sweep case, rounded to `T`.
fn random_data<T: Element>(c: &Case, seed: u64) -> Data {
    let p = &c.p;
    let mut n = Normal::new(seed);
    let round = |x: Vec<f32>| back(&conv::<T>(&x));
    Data {
        q: round(n.vec(p.qk_len())),
        k: round(n.vec(p.qk_len())),
        v: round(n.vec(p.v_len())),
        rpb: c.rpb.then(|| round(n.vec(p.rpb_len()))),
        d_out: round(n.vec(p.v_len())),
    }
}

fn sweep_in<T: Element>(ctx: &CudaContext) {
    for (i, c) in sweep().iter().enumerate() {
        let d = random_data::<T>(c, 1000 + i as u64);
        let want = reference_of::<T>(&c.p, &d);
        check_on_device::<T>(ctx, &c.name, &c.p, &d, &want);
    }
}

#[test]
fn sweep_f32_matches_reference() {
    if let Some(ctx) = ctx() {
        sweep_in::<f32>(&ctx);
    }
}

#[test]
fn sweep_f16_matches_reference() {
    if let Some(ctx) = ctx() {
        sweep_in::<f16>(&ctx);
    }
}

#[test]
fn sweep_bf16_matches_reference() {
    if let Some(ctx) = ctx() {
        sweep_in::<bf16>(&ctx);
    }
}

fn fixture(case: &str, name: &str) -> Vec<f32> {
    let path = fixtures_dir().join(format!("{case}.{name}.npy"));
    read_npy(&path, DEFAULT_MAX_ELEMENTS)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .data
}

fn fixtures_in<T: Element>(ctx: &CudaContext) {
    for c in fixtures() {
        let get = |n: &str| fixture(&c.name, n);
        let round = |x: Vec<f32>| back(&conv::<T>(&x));
        let d = Data {
            q: round(get("query")),
            k: round(get("key")),
            v: round(get("value")),
            rpb: c.rpb.then(|| round(get("rpb"))),
            d_out: round(get("grad_out")),
        };
        let want = Expected {
            out: get("out"),
            lse: get("lse"),
            dq: get("grad_query"),
            dk: get("grad_key"),
            dv: get("grad_value"),
            drpb: c.rpb.then(|| get("grad_rpb")),
        };
        check_on_device::<T>(ctx, &c.name, &c.p, &d, &want);
    }
}

#[test]
fn golden_fixtures_f32() {
    if let Some(ctx) = ctx() {
        fixtures_in::<f32>(&ctx);
    }
}

#[test]
fn golden_fixtures_f16_and_bf16() {
    if let Some(ctx) = ctx() {
        fixtures_in::<f16>(&ctx);
        fixtures_in::<bf16>(&ctx);
    }
}

/// Forward then backward entirely on the device (the backward reads the
/// device's own out and lse), run twice: the gradients are bit-identical.
#[test]
fn device_chain_is_deterministic() {
    let Some(ctx) = ctx() else {
        return;
    };
    for c in sweep().iter().filter(|c| c.rpb) {
        let p = &c.p;
        let d = random_data::<f32>(c, 7);
        let (q, k, v) = (
            ctx.upload(&d.q).unwrap(),
            ctx.upload(&d.k).unwrap(),
            ctx.upload(&d.v).unwrap(),
        );
        let rpb = ctx.upload(d.rpb.as_deref().unwrap()).unwrap();
        let d_out = ctx.upload(&d.d_out).unwrap();
        let x = DeviceInputs {
            query: &q,
            key: &k,
            value: &v,
            rpb: Some(&rpb),
        };
        let mut out = ctx.zeros(DType::F32, p.v_len()).unwrap();
        let mut lse = ctx.zeros(DType::F32, p.lse_len()).unwrap();
        ctx.forward(p, x, &mut out, Some(&mut lse)).unwrap();
        let run = || {
            let mut g = [
                ctx.zeros(DType::F32, p.qk_len()).unwrap(),
                ctx.zeros(DType::F32, p.qk_len()).unwrap(),
                ctx.zeros(DType::F32, p.v_len()).unwrap(),
                ctx.zeros(DType::F32, p.rpb_len()).unwrap(),
            ];
            let [dq, dk, dv, dr] = &mut g;
            ctx.backward(
                p,
                x,
                DeviceSaved {
                    out: &out,
                    lse: &lse,
                    d_out: &d_out,
                },
                DeviceGrads {
                    d_query: dq,
                    d_key: dk,
                    d_value: dv,
                    d_rpb: Some(dr),
                },
            )
            .unwrap();
            g.iter()
                .map(|t| {
                    let mut h = vec![0.0f32; t.len()];
                    ctx.download(t, &mut h).unwrap();
                    h.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert!(a == b, "{}: backward is not deterministic", c.name);
        let want = reference_of::<f32>(p, &d);
        let dq: Vec<f32> = a[0].iter().map(|&b| f32::from_bits(b)).collect();
        expect_close(
            &format!("{} chained d_query", c.name),
            DType::F32,
            &dq,
            &want.dq,
            1e-3,
        );
    }
}

#[test]
fn forward_without_lse_and_backward_without_d_rpb() {
    let Some(ctx) = ctx() else {
        return;
    };
    let c = &sweep()[1]; // has a bias
    let p = &c.p;
    let d = random_data::<f32>(c, 3);
    let want = reference_of::<f32>(p, &d);
    let x = Inputs {
        query: &d.q,
        key: &d.k,
        value: &d.v,
        rpb: d.rpb.as_deref(),
    };
    let mut out = vec![0.0f32; p.v_len()];
    forward_host(&ctx, p, x, &mut out, None).unwrap();
    expect_close("out without lse", DType::F32, &out, &want.out, 1e-4);
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; p.qk_len()],
        vec![0.0; p.qk_len()],
        vec![0.0; p.v_len()],
    );
    backward_host(
        &ctx,
        p,
        x,
        Saved {
            out: &want.out,
            lse: &want.lse,
            d_out: &d.d_out,
        },
        Grads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: None,
        },
    )
    .unwrap();
    expect_close("d_key without d_rpb", DType::F32, &dk, &want.dk, 1e-3);
}

#[test]
fn invalid_calls_are_typed_errors_before_any_launch() {
    let Some(ctx) = ctx() else {
        return;
    };
    let c = &sweep()[0];
    let p = &c.p;
    let q = vec![0.0f32; p.qk_len()];
    let v = vec![0.0f32; p.v_len()];
    let short = vec![0.0f32; p.qk_len() - 1];
    let x = Inputs {
        query: &q,
        key: &short,
        value: &v,
        rpb: None,
    };
    let mut out = vec![0.0f32; p.v_len()];
    let e = forward_host(&ctx, p, x, &mut out, None).unwrap_err();
    assert!(
        matches!(
            e,
            CudaError::Problem(na_core::Error::LengthMismatch { tensor: "key", .. })
        ),
        "{e}"
    );
    // Mixed storage types on the device.
    let qd = ctx.upload(&q).unwrap();
    let kd = ctx.upload(&conv::<f16>(&q)).unwrap();
    let vd = ctx.upload(&v).unwrap();
    let mut od = ctx.zeros(DType::F32, p.v_len()).unwrap();
    let e = ctx
        .forward(
            p,
            DeviceInputs {
                query: &qd,
                key: &kd,
                value: &vd,
                rpb: None,
            },
            &mut od,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(e, CudaError::DTypeMismatch { tensor: "key", .. }),
        "{e}"
    );
    // d_rpb without rpb.
    let (mut dq, mut dk, mut dv, mut dr) =
        (q.clone(), q.clone(), v.clone(), vec![0.0f32; p.rpb_len()]);
    let lse = vec![0.0f32; p.lse_len()];
    let x = Inputs {
        query: &q,
        key: &q,
        value: &v,
        rpb: None,
    };
    let e = backward_host(
        &ctx,
        p,
        x,
        Saved {
            out: &v,
            lse: &lse,
            d_out: &v,
        },
        Grads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: Some(&mut dr),
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, CudaError::Problem(na_core::Error::GradRpbWithoutRpb)),
        "{e}"
    );
}

/// The disk cache: a second context loads the module from disk; a corrupt
/// entry is rebuilt and the results stay right.
#[test]
fn disk_cache_entries_are_reused_and_rebuilt() {
    let Some(ctx) = ctx() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("na-cuda-gpu-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ctx = ctx.with_disk_cache(Some(DiskCache::new(&dir)));
    let c = &sweep()[0];
    let d = random_data::<f32>(c, 11);
    let want = reference_of::<f32>(&c.p, &d);
    let run = |ctx: &CudaContext| {
        let mut out = vec![0.0f32; c.p.v_len()];
        let x = Inputs {
            query: &d.q,
            key: &d.k,
            value: &d.v,
            rpb: None,
        };
        forward_host(ctx, &c.p, x, &mut out, None).unwrap();
        expect_close("cached out", DType::F32, &out, &want.out, 1e-4);
    };
    run(&ctx);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // Corrupt the entry; a fresh context must rebuild it.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let fresh = CudaContext::new(0)
        .unwrap()
        .with_disk_cache(Some(DiskCache::new(&dir)));
    run(&fresh);
    let rebuilt = std::fs::read(&files[0]).unwrap();
    assert_ne!(rebuilt, bytes, "the corrupt entry was not rewritten");
    let again = CudaContext::new(0)
        .unwrap()
        .with_disk_cache(Some(DiskCache::new(&dir)));
    run(&again);
    std::fs::remove_dir_all(&dir).unwrap();
}
