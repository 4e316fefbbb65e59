//! `na attn` through the real binary: results equal the library's, and every
//! bad input exits non-zero with a one-line message and leaves no output file.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{na, s};
use na_core::fused;
use na_core::npy::{encode_npy_f32, read_npy, DEFAULT_MAX_ELEMENTS};
use na_core::{Grads, Inputs, Saved};
use na_core::{Par, Params, Problem};

/// A fresh, empty directory under cargo's per-target temp dir.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("attn_cli")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, shape: &[usize], data: &[f32]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, encode_npy_f32(shape, data).unwrap()).unwrap();
        p
    }
    fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// Every file in the directory whose name starts with `out_` or is hidden.
    fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("out_") || n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // Deterministic, roughly unit-scale values.
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// A standard 2D setup: q/k/v [2, 7, 6, 2, 4] (v with head_dim_v 3), rpb for k=3.
struct Setup {
    dir: TestDir,
    q: PathBuf,
    k: PathBuf,
    v: PathBuf,
    rpb: PathBuf,
    dout: PathBuf,
}

const QS: [usize; 5] = [2, 7, 6, 2, 4];
const VS: [usize; 5] = [2, 7, 6, 2, 3];

fn setup(name: &str) -> Setup {
    let dir = TestDir::new(name);
    let n: usize = QS.iter().product();
    let nv: usize = VS.iter().product();
    Setup {
        q: dir.write("q.npy", &QS, &values(n, 1)),
        k: dir.write("k.npy", &QS, &values(n, 2)),
        v: dir.write("v.npy", &VS, &values(nv, 3)),
        rpb: dir.write("rpb.npy", &[2, 5, 5], &values(50, 4)),
        dout: dir.write("dout.npy", &VS, &values(nv, 5)),
        dir,
    }
}

impl Setup {
    /// The standard argument list (forward only) plus `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "attn",
            "--query",
            s(&self.q),
            "--key",
            s(&self.k),
            "--value",
            s(&self.v),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }
    fn out(&self, name: &str) -> String {
        s(&self.dir.path(name)).to_string()
    }
}

fn run_args(a: &[String]) -> Output {
    let v: Vec<&str> = a.iter().map(String::as_str).collect();
    na(&v)
}

fn load(p: &str) -> Vec<f32> {
    read_npy(Path::new(p), DEFAULT_MAX_ELEMENTS).unwrap().data
}

#[test]
fn forward_and_backward_match_the_library() {
    let st = setup("ok");
    let (o, l, dq, dk, dv, dr) = (
        st.out("out_o.npy"),
        st.out("out_l.npy"),
        st.out("out_dq.npy"),
        st.out("out_dk.npy"),
        st.out("out_dv.npy"),
        st.out("out_dr.npy"),
    );
    let a = st.args(&[
        "--kernel-size",
        "3",
        "--dilation",
        "2,1",
        "--stride",
        "1,2",
        "--causal",
        "false,1",
        "--scale",
        "0.7",
        "--rpb",
        s(&st.rpb),
        "--out",
        &o,
        "--lse",
        &l,
        "--grad-out",
        s(&st.dout),
        "--grad-query",
        &dq,
        "--grad-key",
        &dk,
        "--grad-value",
        &dv,
        "--grad-rpb",
        &dr,
        "--threads",
        "2",
    ]);
    let res = run_args(&a);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let params = Params::new(&[3, 3])
        .unwrap()
        .with_dilation(&[2, 1])
        .unwrap()
        .with_stride(&[1, 2])
        .unwrap();
    let params = params
        .with_causal(&[false, true])
        .unwrap()
        .with_scale(0.7)
        .unwrap();
    let p = Problem::new(2, &[7, 6], 2, 4, 3, params).unwrap();
    let ld = |x: &PathBuf| load(s(x));
    let (q, k, v, rpb, d_out) = (ld(&st.q), ld(&st.k), ld(&st.v), ld(&st.rpb), ld(&st.dout));
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: Some(&rpb),
    };
    let (mut out, mut lse) = (vec![0.0; p.v_len()], vec![0.0; p.lse_len()]);
    fused::forward(&p, x, &mut out, Some(&mut lse), Par::Seq).unwrap();
    let (mut gq, mut gk, mut gv, mut gr) = (
        vec![0.0; p.qk_len()],
        vec![0.0; p.qk_len()],
        vec![0.0; p.v_len()],
        vec![0.0; p.rpb_len()],
    );
    let g = Grads {
        d_query: &mut gq,
        d_key: &mut gk,
        d_value: &mut gv,
        d_rpb: Some(&mut gr),
    };
    fused::backward(
        &p,
        x,
        Saved {
            out: &out,
            lse: &lse,
            d_out: &d_out,
        },
        g,
        Par::Seq,
    )
    .unwrap();
    assert_eq!(load(&o), out);
    assert_eq!(load(&l), lse);
    assert_eq!(load(&dq), gq);
    assert_eq!(load(&dk), gk);
    assert_eq!(load(&dv), gv);
    assert_eq!(load(&dr), gr);
    assert_eq!(
        read_npy(Path::new(&l), DEFAULT_MAX_ELEMENTS).unwrap().shape,
        [2, 7, 6, 2]
    );
    assert_eq!(
        read_npy(Path::new(&dr), DEFAULT_MAX_ELEMENTS)
            .unwrap()
            .shape,
        [2, 5, 5]
    );
    // No temporary files left behind.
    assert!(st.dir.outputs().iter().all(|n| !n.starts_with('.')));
}

#[test]
fn half_precision_storage_runs_and_stays_close() {
    let st = setup("half");
    let base = st.out("out_f32.npy");
    assert!(run_args(&st.args(&["--kernel-size", "3", "--out", &base]))
        .status
        .success());
    let want = load(&base);
    for (dtype, tol) in [("f16", 1e-2), ("bf16", 5e-2)] {
        let o = st.out(&format!("out_{dtype}.npy"));
        let res = run_args(&st.args(&["--kernel-size", "3", "--dtype", dtype, "--out", &o]));
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let got = load(&o);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < tol, "{dtype}: max abs error {err}");
    }
}

/// Asserts failure, a one-line message containing `needle`, and no output.
fn assert_fails(st: &Setup, args: &[String], needle: &str) {
    let res = run_args(args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "expected failure for {args:?}");
    assert!(
        err.contains(needle),
        "stderr {err:?} does not mention {needle:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "message is not one line: {err:?}"
    );
    assert_eq!(
        st.dir.outputs(),
        Vec::<String>::new(),
        "output files left by {args:?}"
    );
}

/// Like [`assert_fails`] for clap usage errors, whose message spans lines.
fn assert_usage_error(st: &Setup, args: &[String], needle: &str) {
    let res = run_args(args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        res.status.code(),
        Some(2),
        "expected a usage error for {args:?}: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} does not mention {needle:?}"
    );
    assert_eq!(st.dir.outputs(), Vec::<String>::new());
}

#[test]
fn invalid_parameters_are_refused_with_the_axis_and_values() {
    let st = setup("params");
    let o = st.out("out_o.npy");
    let l = st.out("out_l.npy");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--kernel-size", "8"],
            "axis 0: kernel size 8 is larger than the axis length 7",
        ),
        (
            &["--kernel-size", "3,7"],
            "axis 1: kernel size 7 is larger than the axis length 6",
        ),
        (
            &["--kernel-size", "1"],
            "axis 0: kernel size 1 is below the minimum of 2",
        ),
        (
            &["--kernel-size", "3", "--stride", "4"],
            "axis 0: stride 4 is outside 1..=3",
        ),
        (
            &["--kernel-size", "3", "--stride", "1,0"],
            "axis 1: stride 0 is outside 1..=3",
        ),
        (
            &["--kernel-size", "3", "--dilation", "1,0"],
            "axis 1: dilation must be at least 1, got 0",
        ),
        (
            &["--kernel-size", "3", "--dilation", "3"],
            "axis 0: kernel size 3 x dilation 3 exceeds the axis length 7",
        ),
        (
            &["--kernel-size", "3,3,3"],
            "--kernel-size has 3 values but the arrays have 2 spatial axes",
        ),
        (
            &["--kernel-size", "3", "--stride", "1,1,1"],
            "stride has 3 values for 2 spatial axes",
        ),
        (
            &["--kernel-size", "3", "--causal", "1,0,1"],
            "causal has 3 values for 2 spatial axes",
        ),
        (
            &["--kernel-size", "3", "--scale", "nan"],
            "scale must be a finite number, got NaN",
        ),
        (
            &["--kernel-size", "3", "--scale", "inf"],
            "scale must be a finite number, got inf",
        ),
    ];
    for (extra, needle) in cases {
        let mut a = st.args(extra);
        a.extend(["--out".into(), o.clone(), "--lse".into(), l.clone()]);
        assert_fails(&st, &a, needle);
    }
    let mut a = st.args(&["--kernel-size", "3", "--causal", "maybe"]);
    a.extend(["--out".into(), o.clone()]);
    assert_usage_error(&st, &a, "'maybe' is not a causal flag");
    let mut a = st.args(&["--kernel-size", "3", "--dtype", "f64"]);
    a.extend(["--out".into(), o.clone()]);
    assert_usage_error(&st, &a, "f64");
}

#[test]
fn mismatched_shapes_are_refused() {
    let st = setup("shapes");
    let o = st.out("out_o.npy");
    let n: usize = QS.iter().product();
    let bad_k = st
        .dir
        .write("k_bad.npy", &[2, 7, 6, 2, 5], &vec![0.0; n / 4 * 5]);
    let bad_v = st
        .dir
        .write("v_bad.npy", &[2, 7, 6, 1, 3], &vec![0.0; 2 * 42 * 3]);
    let rank3 = st.dir.write("r3.npy", &[2, 2, 4], &[0.0; 16]);
    let rank7 = st.dir.write("r7.npy", &[1, 2, 2, 2, 2, 1, 1], &[0.0; 16]);
    let bad_rpb = st.dir.write("rpb_bad.npy", &[2, 5, 3], &[0.0; 30]);
    let bad_dout = st.dir.write("dout_bad.npy", &QS, &vec![0.0; n]);
    let common = |mut a: Vec<String>| {
        a.extend([
            "--kernel-size".into(),
            "3".into(),
            "--out".into(),
            o.clone(),
        ]);
        a
    };
    let with = |flag: &str, p: &Path| {
        let mut a = st.args(&[]);
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = s(p).to_string();
        common(a)
    };
    assert_fails(
        &st,
        &with("--key", &bad_k),
        "key has shape [2, 7, 6, 2, 5] but query has shape [2, 7, 6, 2, 4]",
    );
    assert_fails(
        &st,
        &with("--value", &bad_v),
        "value has shape [2, 7, 6, 1, 3]",
    );
    assert_fails(
        &st,
        &with("--query", &rank3),
        "query has shape [2, 2, 4] (rank 3)",
    );
    assert_fails(&st, &with("--query", &rank7), "(rank 7)");
    assert_fails(
        &st,
        &common(st.args(&["--rpb", s(&bad_rpb)])),
        "rpb has shape [2, 5, 3]",
    );
    let mut a = common(st.args(&["--grad-out", s(&bad_dout)]));
    a.extend(
        [
            "--grad-query",
            "out_a",
            "--grad-key",
            "out_b",
            "--grad-value",
            "out_c",
        ]
        .map(String::from),
    );
    assert_fails(
        &st,
        &a,
        "grad-out has shape [2, 7, 6, 2, 4] but the output has shape [2, 7, 6, 2, 3]",
    );
}

#[test]
fn hostile_npy_files_are_refused() {
    let st = setup("hostile");
    let o = st.out("out_o.npy");
    let good = encode_npy_f32(&QS, &values(QS.iter().product(), 9)).unwrap();
    let header = |dict: &str, data_len: usize| {
        let mut h = dict.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(vec![0u8; data_len]);
        b
    };
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.npy", vec![], "npy"),
        ("magic.npy", b"PK\x03\x04 definitely not numpy".to_vec(), "magic"),
        ("truncated.npy", good[..good.len() - 7].to_vec(), "truncated"),
        ("trailing.npy", [good.clone(), vec![0; 4]].concat(), "trailing"),
        ("huge.npy", header("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000, 4, 4), }", 16), "shape"),
        ("overflow.npy", header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296, 1, 1), }", 16), "overflow"),
        ("fortran.npy", header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 7, 6, 2, 4), }", 2688), "fortran"),
        ("bigendian.npy", header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 7, 6, 2, 4), }", 2688), ">f4"),
        ("int.npy", header("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 7, 6, 2, 4), }", 2688), "<i4"),
        ("garbage.npy", header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 7, 6, 2, 4), 'evil': 1}", 2688), "evil"),
    ];
    let missing = st.dir.path("does_not_exist.npy");
    let mut a = st.args(&["--kernel-size", "3", "--out", &o]);
    a[2] = s(&missing).to_string();
    assert_fails(&st, &a, "does_not_exist.npy");
    for (name, bytes, needle) in files {
        let p = st.dir.write_bytes(name, &bytes);
        for slot in [2, 4, 6] {
            let mut a = st.args(&["--kernel-size", "3", "--out", &o]);
            a[slot] = s(&p).to_string();
            let res = run_args(&a);
            let err = String::from_utf8_lossy(&res.stderr).to_lowercase();
            assert!(!res.status.success(), "{name} accepted");
            assert!(
                err.contains(&needle.to_lowercase()),
                "{name}: {err:?} lacks {needle:?}"
            );
            assert!(
                err.contains(name),
                "{name}: message does not name the file: {err:?}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
            assert_eq!(st.dir.outputs(), Vec::<String>::new());
        }
    }
}

#[test]
fn output_problems_leave_no_file() {
    let st = setup("outputs");
    let o = st.out("out_o.npy");
    // Two outputs naming one file.
    assert_fails(
        &st,
        &st.args(&["--kernel-size", "3", "--out", &o, "--lse", &o]),
        "is the same file as the output --out",
    );
    // The second output cannot be written: the first must not appear either.
    let nowhere = st.dir.path("no_such_dir").join("lse.npy");
    assert_fails(
        &st,
        &st.args(&["--kernel-size", "3", "--out", &o, "--lse", s(&nowhere)]),
        "no_such_dir",
    );
    // Backward flags that need each other.
    let a = st.args(&["--kernel-size", "3", "--out", &o, "--grad-out", s(&st.dout)]);
    assert_usage_error(&st, &a, "--grad-query");
    let a = st.args(&[
        "--kernel-size",
        "3",
        "--out",
        &o,
        "--grad-query",
        &st.out("out_dq.npy"),
    ]);
    assert_usage_error(&st, &a, "--grad-out");
    let (dq, dk, dv, dr) = (
        st.out("out_dq.npy"),
        st.out("out_dk.npy"),
        st.out("out_dv.npy"),
        st.out("out_dr.npy"),
    );
    let a = st.args(&[
        "--kernel-size",
        "3",
        "--out",
        &o,
        "--grad-out",
        s(&st.dout),
        "--grad-query",
        &dq,
        "--grad-key",
        &dk,
        "--grad-value",
        &dv,
        "--grad-rpb",
        &dr,
    ]);
    assert_usage_error(&st, &a, "--rpb");
    // Missing required arguments.
    assert_usage_error(&st, &st.args(&["--out", &o]), "--kernel-size");
    assert_usage_error(&st, &st.args(&["--kernel-size", "3"]), "--out");
}

/// Issue 16 (items 4 and 5), through the binary: a 1-D problem `[1, 24, 1, 4]`
/// with kernel 3 and stride `stride`, written as `.npy` with `encode_npy_f32`;
/// runs forward and backward into `dir` and returns `(out, lse, d_query)`.
fn run_1d(
    dir: &TestDir,
    tag: &str,
    stride: &str,
    dtype: &str,
    q_k_v: [&[f32]; 3],
) -> [Vec<f32>; 3] {
    const SHAPE: [usize; 4] = [1, 24, 1, 4];
    let input = |name: &str, data: &[f32]| {
        let bytes = encode_npy_f32(&SHAPE, data).unwrap();
        s(&dir.write_bytes(&format!("{tag}_{name}.npy"), &bytes)).to_string()
    };
    let (q, k, v) = (
        input("q", q_k_v[0]),
        input("k", q_k_v[1]),
        input("v", q_k_v[2]),
    );
    let dout = input("dout", &values(96, 14));
    let outs = ["o", "l", "dq", "dk", "dv"]
        .map(|n| s(&dir.path(&format!("out_{tag}_{n}.npy"))).to_string());
    let a: Vec<&str> = vec![
        "attn",
        "--query",
        &q,
        "--key",
        &k,
        "--value",
        &v,
        "--kernel-size",
        "3",
        "--stride",
        stride,
        "--dtype",
        dtype,
        "--out",
        &outs[0],
        "--lse",
        &outs[1],
        "--grad-out",
        &dout,
        "--grad-query",
        &outs[2],
        "--grad-key",
        &outs[3],
        "--grad-value",
        &outs[4],
    ];
    let res = na(&a);
    assert!(
        res.status.success(),
        "{tag}: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    [load(&outs[0]), load(&outs[1]), load(&outs[2])]
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn inf_in_a_value_outside_a_window_leaves_that_query_unchanged() {
    // The repro: random q/k/v [1, 24, 1, 4], kernel 3, stride 2,
    // v[0, 0, 0, :] = inf. Only queries 0 and 1 have key 0 in their window;
    // the whole first tile (queries 0..=7) used to come out non-finite.
    let dir = TestDir::new("nonfinite_repro");
    let (q, k, v) = (values(96, 11), values(96, 12), values(96, 13));
    let mut bad_v = v.clone();
    bad_v[..4].fill(f32::INFINITY);
    for dtype in ["f32", "f16", "bf16"] {
        let clean = run_1d(&dir, &format!("clean_{dtype}"), "2", dtype, [&q, &k, &v]);
        let bad = run_1d(&dir, &format!("bad_{dtype}"), "2", dtype, [&q, &k, &bad_v]);
        let [(o, oc), (l, lc), (dq, dqc)] = [0, 1, 2].map(|i| (&bad[i], &clean[i]));
        for qi in 2..24 {
            let (r4, r1) = (qi * 4..qi * 4 + 4, qi..qi + 1);
            assert!(
                o[r4.clone()]
                    .iter()
                    .chain(&l[r1.clone()])
                    .chain(&dq[r4.clone()])
                    .all(|x| x.is_finite()),
                "{dtype}: query {qi}: out {:?}, lse {:?}, d_query {:?}",
                &o[r4.clone()],
                &l[r1.clone()],
                &dq[r4.clone()]
            );
            assert_eq!(
                bits(&o[r4.clone()]),
                bits(&oc[r4.clone()]),
                "{dtype}: out of query {qi}"
            );
            assert_eq!(
                bits(&l[r1.clone()]),
                bits(&lc[r1]),
                "{dtype}: lse of query {qi}"
            );
            assert_eq!(
                bits(&dq[r4.clone()]),
                bits(&dqc[r4]),
                "{dtype}: d_query of query {qi}"
            );
        }
        // Queries 0 and 1 do see the infinite value.
        assert!(
            o[..8].iter().all(|x| !x.is_finite()),
            "{dtype}: {:?}",
            &o[..8]
        );
    }
}

#[test]
fn nan_in_a_key_inside_a_window_propagates() {
    // Kernel 3, stride 1: key 5 is in the windows of queries 4, 5 and 6.
    // Their out, lse and d_query are NaN, as dense attention over the window
    // gives; every other query is bit-identical to the clean run.
    let dir = TestDir::new("nonfinite_nan");
    let (q, k, v) = (values(96, 21), values(96, 22), values(96, 23));
    let mut bad_k = k.clone();
    bad_k[5 * 4 + 2] = f32::NAN;
    for dtype in ["f32", "f16", "bf16"] {
        let clean = run_1d(&dir, &format!("clean_{dtype}"), "1", dtype, [&q, &k, &v]);
        let bad = run_1d(&dir, &format!("bad_{dtype}"), "1", dtype, [&q, &bad_k, &v]);
        for qi in 0..24 {
            let rows = [qi * 4..qi * 4 + 4, qi..qi + 1, qi * 4..qi * 4 + 4];
            for ((name, r), (b, c)) in ["out", "lse", "d_query"]
                .iter()
                .zip(&rows)
                .zip(bad.iter().zip(&clean))
            {
                if (4..=6).contains(&qi) {
                    assert!(
                        b[r.clone()].iter().all(|x| x.is_nan()),
                        "{dtype}: {name} of query {qi}: {:?}",
                        &b[r.clone()]
                    );
                } else {
                    assert_eq!(
                        bits(&b[r.clone()]),
                        bits(&c[r.clone()]),
                        "{dtype}: {name} of query {qi}"
                    );
                }
            }
        }
    }
}
