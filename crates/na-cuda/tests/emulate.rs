//! The CUDA kernels, run on the CPU: the exact kernel source (all four entry
//! points) compiled by the host C++ compiler against a small emulation of
//! the CUDA built-ins (`tests/emulation/prelude.h`: one OS thread per CUDA
//! thread, sleeping barriers for `__syncthreads` and warp shuffles) under
//! AddressSanitizer, and compared with na-core's reference.
//!
//! This checks everything but the hardware: window math, tiling over
//! dilation groups, chunked staging, masking, online softmax, the inverse
//! neighbourhood gather, the `d_rpb` partial sums and their reduction, and
//! out-of-bounds accesses (ASan plays compute-sanitizer's memcheck). It does
//! not check PTX-level behaviour (the f16 conversion instructions, real warp
//! scheduling, memory ordering on the device).
//!
//! Needs a C++20 compiler (`$CXX`, else `g++`); skips with a printed reason
//! without one. The cases are small: every warp shuffle is a barrier of 32
//! OS threads.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Case, Normal};
use na_core::{bf16, f16, reference, DType, Element, Grads, Inputs, Par, Params, Problem, Saved};
use na_cuda::spec::{geometry, KernelSpec, NaParams, WARPS};

const PRELUDE: &str = include_str!("emulation/prelude.h");
const HARNESS: &str = include_str!("emulation/harness.cpp");

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    // The emulation needs C++20 and AddressSanitizer's runtime.
    let dir = std::env::temp_dir().join(format!("na-cuda-cxx-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("probe.cpp");
    std::fs::write(
        &src,
        "#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); }\n",
    )
    .ok()?;
    let ok = Command::new(&cxx)
        .args(["-std=c++20", "-pthread", "-fsanitize=address", "-o"])
        .arg(dir.join("probe"))
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        Some(cxx)
    } else {
        eprintln!(
            "skipped: no C++20 compiler with AddressSanitizer ({cxx}) to build the kernel emulation"
        );
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    name: &str,
    batch: usize,
    spatial: &[usize],
    heads: usize,
    d: usize,
    dv: usize,
    k: &[usize],
    s: &[usize],
    dil: &[usize],
    causal: &[bool],
    rpb: bool,
) -> Case {
    let params = Params::new(k)
        .and_then(|p| p.with_stride(s))
        .and_then(|p| p.with_dilation(dil))
        .and_then(|p| p.with_causal(causal))
        .unwrap();
    Case {
        name: name.into(),
        p: Problem::new(batch, spatial, heads, d, dv, params).unwrap(),
        rpb,
    }
}

/// Small problems covering every feature, several tiles per dilation group
/// (1d_k5) and key spans of several staged chunks (1d_k56: 71 keys per tile).
fn cases() -> Vec<Case> {
    let (f, t) = (false, true);
    vec![
        case(
            "1d_k5_s2_d2_rpb_tiles",
            2,
            &[75],
            2,
            8,
            12,
            &[5],
            &[2],
            &[2],
            &[f],
            t,
        ),
        case(
            "1d_k6_s3_causal_rpb",
            1,
            &[24],
            1,
            4,
            4,
            &[6],
            &[3],
            &[1],
            &[t],
            t,
        ),
        case(
            "1d_k56_chunks_hd40",
            1,
            &[80],
            1,
            40,
            24,
            &[56],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "2d_k3x4_s1x2_d2x1_causal_rpb",
            1,
            &[7, 9],
            2,
            8,
            8,
            &[3, 4],
            &[1, 2],
            &[2, 1],
            &[f, t],
            t,
        ),
        case(
            "2d_full_window_rpb",
            1,
            &[5, 6],
            1,
            8,
            8,
            &[5, 6],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "3d_k2x3x3_causal_rpb",
            1,
            &[4, 7, 6],
            1,
            8,
            4,
            &[2, 3, 3],
            &[1, 1, 2],
            &[1, 2, 1],
            &[t, f, f],
            t,
        ),
        case(
            "2d_k3_no_rpb",
            2,
            &[10, 7],
            1,
            16,
            16,
            &[3, 3],
            &[1],
            &[3, 1],
            &[f],
            f,
        ),
    ]
}

fn write<T: Copy>(path: &Path, v: &[T], bytes: impl Fn(T) -> Vec<u8>) {
    let data: Vec<u8> = v.iter().flat_map(|&x| bytes(x)).collect();
    std::fs::write(path, data).unwrap();
}

fn elem_bytes<T: Element>(x: T) -> Vec<u8> {
    match T::DTYPE {
        DType::F32 => x.to_f32().to_le_bytes().to_vec(),
        DType::F16 => f16::from_f32(x.to_f32()).to_bits().to_le_bytes().to_vec(),
        DType::BF16 => bf16::from_f32(x.to_f32()).to_bits().to_le_bytes().to_vec(),
    }
}

fn read_elems<T: Element>(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match T::DTYPE {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
            .collect(),
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn params_bytes(p: &NaParams) -> Vec<u8> {
    let mut b = vec![];
    for a in [p.len, p.dil, p.stride, p.tiles_per_group] {
        for x in a {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    for x in [p.batch, p.heads, p.tokens] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b.extend_from_slice(&p.scale.to_le_bytes());
    b
}

fn build(cxx: &str, spec: &KernelSpec, dir: &Path) -> PathBuf {
    let src = dir.join(spec.name().replace(".cu", ".cpp"));
    std::fs::write(&src, format!("{PRELUDE}\n{}\n{HARNESS}", spec.source())).unwrap();
    let exe = src.with_extension("bin");
    let out = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=address"])
        .args(["-fno-omit-frame-pointer", "-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("running the C++ compiler");
    assert!(
        out.status.success(),
        "{} does not compile as C++:\n{}",
        spec.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run_with_timeout(exe: &Path, dir: &Path, limit: Duration) {
    let mut child = Command::new(exe)
        .arg(dir)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("{} failed ({status}):\n{err}", exe.display());
            }
            return;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{} ran past {limit:?} (a barrier mismatch?)", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_finite() {
                (x - y).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0.0, f32::max)
}

/// One problem's inputs, in storage type `T`.
struct Data<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    rpb: Option<Vec<T>>,
    d_out: Vec<T>,
}

impl<T: Element> Data<T> {
    /// Standard normal inputs (a bias table when `c.rpb`).
    fn normal(c: &Case, seed: u64) -> Self {
        let p = &c.p;
        let mut n = Normal::new(seed);
        let conv = |x: Vec<f32>| x.into_iter().map(T::from_f32).collect::<Vec<T>>();
        let (q, k, v) = (
            conv(n.vec(p.qk_len())),
            conv(n.vec(p.qk_len())),
            conv(n.vec(p.v_len())),
        );
        let rpb = c.rpb.then(|| conv(n.vec(p.rpb_len())));
        let d_out = conv(n.vec(p.v_len()));
        Data {
            q,
            k,
            v,
            rpb,
            d_out,
        }
    }

    fn inputs(&self) -> Inputs<'_, T> {
        Inputs {
            query: &self.q,
            key: &self.k,
            value: &self.v,
            rpb: self.rpb.as_deref(),
        }
    }
}

/// Everything one run produces, widened to f32.
struct Outputs {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drpb: Vec<f32>,
}

/// na-core's reference forward and backward (the backward from the
/// reference's own `out` and `lse`); `saved` are those two in storage type.
fn reference_run<T: Element>(c: &Case, d: &Data<T>) -> (Outputs, (Vec<T>, Vec<f32>)) {
    let p = &c.p;
    let x = d.inputs();
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
            d_out: &d.d_out,
        },
        Grads {
            d_query: &mut dq,
            d_key: &mut dk,
            d_value: &mut dv,
            d_rpb: c.rpb.then_some(&mut drpb[..]),
        },
        Par::Seq,
    )
    .unwrap();
    let back = |x: &[T]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
    let o = Outputs {
        out: back(&out),
        lse: lse.clone(),
        dq: back(&dq),
        dk: back(&dk),
        dv: back(&dv),
        drpb: if c.rpb { back(&drpb) } else { vec![] },
    };
    (o, (out, lse))
}

/// Runs the emulated kernels (`exe`, built by [`build`] for `c`) on `d`,
/// with `saved` (`out`, `lse`) as the forward's results for the backward,
/// in `dir`.
fn emulate<T: Element>(
    c: &Case,
    exe: &Path,
    dir: &Path,
    d: &Data<T>,
    saved: &(Vec<T>, Vec<f32>),
) -> Outputs {
    let p = &c.p;
    let spec = KernelSpec::new(p, T::DTYPE, c.rpb).unwrap();
    let g = geometry(p, &spec).unwrap();
    let params = NaParams::new(p, &g).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("params.bin"), params_bytes(&params)).unwrap();
    std::fs::write(
        dir.join("sizes.txt"),
        format!(
            "{} {} {} {} {} {} {} {} {}",
            g.blocks,
            g.tiles,
            g.threads,
            p.qk_len(),
            p.v_len(),
            p.lse_len(),
            p.rpb_len(),
            u8::from(c.rpb),
            u8::from(c.rpb)
        ),
    )
    .unwrap();
    write(&dir.join("q.bin"), &d.q, elem_bytes);
    write(&dir.join("k.bin"), &d.k, elem_bytes);
    write(&dir.join("v.bin"), &d.v, elem_bytes);
    if let Some(r) = &d.rpb {
        write(&dir.join("rpb.bin"), r, elem_bytes);
    }
    write(&dir.join("dout.bin"), &d.d_out, elem_bytes);
    write(&dir.join("out_saved.bin"), &saved.0, elem_bytes);
    write(&dir.join("lse_saved.bin"), &saved.1, |x: f32| {
        x.to_le_bytes().to_vec()
    });
    run_with_timeout(exe, dir, Duration::from_secs(300));
    Outputs {
        out: read_elems::<T>(&dir.join("out.bin")),
        lse: read_f32(&dir.join("lse.bin")),
        dq: read_elems::<T>(&dir.join("dq.bin")),
        dk: read_elems::<T>(&dir.join("dk.bin")),
        dv: read_elems::<T>(&dir.join("dv.bin")),
        drpb: if c.rpb {
            read_elems::<T>(&dir.join("drpb.bin"))
        } else {
            vec![]
        },
    }
}

fn check<T: Element>(cxx: &str, c: &Case, root: &Path, seed: u64) {
    let p = &c.p;
    let data = Data::<T>::normal(c, seed);
    let (want, saved) = reference_run(c, &data);
    let spec = KernelSpec::new(p, T::DTYPE, c.rpb).unwrap();
    let exe = build(cxx, &spec, root);
    let dir = root.join(format!("{}_{}", c.name, T::DTYPE));
    let got = emulate(c, &exe, &dir, &data, &saved);
    let g = geometry(p, &spec).unwrap();

    let tol = match T::DTYPE {
        DType::F32 => (1e-4, 1e-3),
        DType::F16 => (1e-2, 2e-2),
        DType::BF16 => (5e-2, 5e-2),
    };
    let mut checks = vec![
        ("out", &got.out, &want.out, tol.0),
        ("lse", &got.lse, &want.lse, tol.0),
        ("d_query", &got.dq, &want.dq, tol.1),
        ("d_key", &got.dk, &want.dk, tol.1),
        ("d_value", &got.dv, &want.dv, tol.1),
    ];
    if c.rpb {
        checks.push(("d_rpb", &got.drpb, &want.drpb, tol.1));
    }
    for (what, got, want, tol) in checks {
        let mag = if T::DTYPE == DType::F32 {
            1.0
        } else {
            want.iter().fold(1.0f32, |m, v| m.max(v.abs()))
        };
        let err = max_err(got, want);
        assert!(
            err <= tol * mag,
            "{} ({}): {what} max abs error {err:e} > {:e}",
            c.name,
            T::DTYPE,
            tol * mag
        );
    }
    eprintln!(
        "{} ({}): emulated kernels match the reference ({} blocks of {} threads, {WARPS} warps)",
        c.name,
        T::DTYPE,
        g.blocks,
        g.threads
    );
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// SPEC.md, "Non-finite values", on the emulated kernels (issue 16, items 4
/// and 5): 1-D, 24 positions, kernel 3, stride 2, with a bias table, in
/// storage type `T`. Each poisoned run is compared with the clean emulated
/// run (bit for bit where the poison is outside a query's window) and, for
/// the bias `-inf`, with the reference.
fn check_nonfinite<T: Element>(cxx: &str, root: &Path) {
    let c = case(
        "1d_k3_s2_nonfinite",
        1,
        &[24],
        1,
        4,
        4,
        &[3],
        &[2],
        &[1],
        &[false],
        true,
    );
    let p = &c.p;
    let spec = KernelSpec::new(p, T::DTYPE, true).unwrap();
    let exe = build(cxx, &spec, root);
    let clean = Data::<T>::normal(&c, 31);
    let (_, saved) = reference_run(&c, &clean);
    let base = emulate(
        &c,
        &exe,
        &root.join(format!("clean_{}", T::DTYPE)),
        &clean,
        &saved,
    );
    let (d, dv) = (p.head_dim(), p.head_dim_v());
    // Key (or value) token `t` is in query `i`'s window: [2 (i div 2), + 3),
    // clamped to end at 24.
    let sees = |i: usize, t: usize| {
        let start = (2 * (i / 2)).min(21);
        (start..start + 3).contains(&t)
    };
    let tag = T::DTYPE;

    // 1. The repro: v[0, 0, 0, :] = inf. Only queries 0 and 1 see
    //    key 0: the others are bit-identical to the clean run.
    let mut bad = Data::<T>::normal(&c, 31);
    bad.v[..dv].fill(T::from_f32(f32::INFINITY));
    let (_, sv) = reference_run(&c, &bad);
    let r = emulate(&c, &exe, &root.join(format!("inf_v_{tag}")), &bad, &sv);
    for i in 0..24 {
        let (o, q) = (i * dv..(i + 1) * dv, i * d..(i + 1) * d);
        if sees(i, 0) {
            assert!(r.out[o].iter().all(|x| !x.is_finite()), "{tag}: query {i}");
        } else {
            assert!(
                same_bits(&r.out[o.clone()], &base.out[o]),
                "{tag}: out of query {i}"
            );
            assert!(
                same_bits(&r.lse[i..=i], &base.lse[i..=i]),
                "{tag}: lse of query {i}"
            );
            assert!(
                same_bits(&r.dq[q.clone()], &base.dq[q]),
                "{tag}: d_query of query {i}"
            );
        }
    }

    // 2. NaN in key 5 (channel 2): queries 4 and 5 see it and are NaN (out,
    //    lse, d_query); every other query is bit-identical.
    let mut bad = Data::<T>::normal(&c, 31);
    bad.k[5 * d + 2] = T::from_f32(f32::NAN);
    let (_, sv) = reference_run(&c, &bad);
    let r = emulate(&c, &exe, &root.join(format!("nan_k_{tag}")), &bad, &sv);
    for i in 0..24 {
        let (o, q) = (i * dv..(i + 1) * dv, i * d..(i + 1) * d);
        if sees(i, 5) {
            let nan = |x: &[f32]| x.iter().all(|y| y.is_nan());
            assert!(
                nan(&r.out[o]) && r.lse[i].is_nan() && nan(&r.dq[q]),
                "{tag}: query {i}"
            );
        } else {
            assert!(
                same_bits(&r.out[o.clone()], &base.out[o]),
                "{tag}: out of query {i}"
            );
            assert!(
                same_bits(&r.lse[i..=i], &base.lse[i..=i]),
                "{tag}: lse of query {i}"
            );
            assert!(
                same_bits(&r.dq[q.clone()], &base.dq[q]),
                "{tag}: d_query of query {i}"
            );
        }
    }

    // 3. A -inf bias on the diagonal (entry k - 1): the first key of every
    //    even query's window has a -inf logit. Dense attention gives that key
    //    weight 0 and everything stays finite, as in the reference (the
    //    running maximum must not start at -inf: -inf - -inf is NaN).
    let mut bad = Data::<T>::normal(&c, 31);
    bad.rpb.as_mut().unwrap()[2] = T::from_f32(f32::NEG_INFINITY);
    let (want, sv) = reference_run(&c, &bad);
    let r = emulate(&c, &exe, &root.join(format!("ninf_b_{tag}")), &bad, &sv);
    let tol = if T::DTYPE == DType::F32 { 1e-4 } else { 5e-2 };
    for (what, got, want) in [("out", &r.out, &want.out), ("lse", &r.lse, &want.lse)] {
        assert!(got.iter().all(|x| x.is_finite()), "{tag}: {what} {got:?}");
        let err = max_err(got, want);
        assert!(err <= tol, "{tag}: {what} max abs error {err:e}");
    }
    eprintln!("non-finite inputs ({tag}): isolation, NaN propagation and -inf logits hold");
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("na-cuda-emulate-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn emulated_kernels_match_the_reference_f32() {
    let Some(cxx) = compiler() else {
        return;
    };
    let root = scratch();
    for (i, c) in cases().iter().enumerate() {
        check::<f32>(&cxx, c, &root, 50 + i as u64);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn emulated_kernels_match_the_reference_bf16_and_f16() {
    let Some(cxx) = compiler() else {
        return;
    };
    let root = scratch().join("half");
    std::fs::create_dir_all(&root).unwrap();
    // A few cases each (the emulation is slow): the storage conversions and
    // the tolerance scaling are what differs from f32.
    let cs = cases();
    for i in [0, 3] {
        check::<bf16>(&cxx, &cs[i], &root, 90 + i as u64);
    }
    for i in [1, 5] {
        check::<f16>(&cxx, &cs[i], &root, 70 + i as u64);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn emulated_kernels_follow_the_non_finite_contract() {
    let Some(cxx) = compiler() else {
        return;
    };
    let root = scratch().join("nonfinite");
    std::fs::create_dir_all(&root).unwrap();
    check_nonfinite::<f32>(&cxx, &root);
    check_nonfinite::<bf16>(&cxx, &root);
    let _ = std::fs::remove_dir_all(&root);
}
