//! The reference kernels against golden fixtures computed by NATTEN itself
//! (see `tests/fixtures/README.md` for the peer versions and the scripts).
//!
//! Every case of every `manifest_*.json` is run in f32 (sequential and
//! threaded) and compared within SPEC.md's tolerances; in f16 and bf16 within
//! theirs.

use std::path::{Path, PathBuf};

use na_core::fused::{self, Isa};
use na_core::npy::{read_npy, DEFAULT_MAX_ELEMENTS};
use na_core::reference::{self, Grads, Inputs, Saved};
use na_core::{bf16, f16, Element, Par, Params, Problem};

/// Which implementation runs a case.
#[derive(Clone, Copy, Debug)]
enum Impl {
    Reference(Par),
    Fused(Isa, Par),
}
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture case: the problem and the directory-relative tensor prefix.
struct Case {
    name: String,
    peer: String,
    p: Problem,
    rpb: bool,
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

fn cases() -> Vec<Case> {
    let mut out = vec![];
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("manifest_")
        })
        .collect();
    manifests.sort();
    for m in manifests {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        let peer = doc["peer"].as_str().unwrap().to_string();
        for c in doc["cases"].as_array().unwrap() {
            let causal: Vec<bool> = c["causal"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_bool().unwrap())
                .collect();
            let params = Params::new(&usizes(&c["kernel_size"]))
                .unwrap()
                .with_stride(&usizes(&c["stride"]))
                .unwrap()
                .with_dilation(&usizes(&c["dilation"]))
                .unwrap()
                .with_causal(&causal)
                .unwrap()
                .with_scale(c["scale"].as_f64().unwrap() as f32)
                .unwrap();
            let n = |k: &str| c[k].as_u64().unwrap() as usize;
            let p = Problem::new(
                n("batch"),
                &usizes(&c["spatial"]),
                n("heads"),
                n("head_dim"),
                n("head_dim_v"),
                params,
            )
            .unwrap();
            out.push(Case {
                name: c["name"].as_str().unwrap().to_string(),
                peer: peer.clone(),
                p,
                rpb: c["rpb"].as_bool().unwrap(),
            });
        }
    }
    out
}

fn tensor(case: &str, name: &str) -> Vec<f32> {
    let path = fixtures().join(format!("{case}.{name}.npy"));
    read_npy(&path, DEFAULT_MAX_ELEMENTS)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .data
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// Runs one case in storage type `T` and checks every output within `tol`.
///
/// For f16/bf16 the tolerance is scaled by the tensor's largest magnitude
/// when that exceeds 1: storing a gradient of size 10 in bf16 alone rounds
/// it by up to 0.03, whatever the kernel does. f32 is held to SPEC.md's
/// absolute tolerances.
fn check<T: Element>(c: &Case, imp: Impl, tol: (f32, f32)) {
    let p = &c.p;
    let get = |n: &str| tensor(&c.name, n);
    let (q, k, v, d_out) = (
        conv::<T>(&get("query")),
        conv::<T>(&get("key")),
        conv::<T>(&get("value")),
        conv::<T>(&get("grad_out")),
    );
    let rpb = c.rpb.then(|| conv::<T>(&get("rpb")));
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    match imp {
        Impl::Reference(par) => reference::forward(p, x, &mut out, Some(&mut lse), par),
        Impl::Fused(isa, par) => fused::forward_on(isa, p, x, &mut out, Some(&mut lse), par),
    }
    .unwrap();
    let (mut dq, mut dk, mut dv) = (
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.v_len()],
    );
    let mut drpb = vec![T::default(); p.rpb_len()];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: c.rpb.then_some(&mut drpb[..]),
    };
    let sv = Saved {
        out: &out,
        lse: &lse,
        d_out: &d_out,
    };
    match imp {
        Impl::Reference(par) => reference::backward(p, x, sv, g, par),
        Impl::Fused(isa, par) => fused::backward_on(isa, p, x, sv, g, par),
    }
    .unwrap();
    let mut checks = vec![
        ("out", max_err(&back(&out), &get("out")), tol.0),
        ("lse", max_err(&lse, &get("lse")), tol.0),
        ("grad_query", max_err(&back(&dq), &get("grad_query")), tol.1),
        ("grad_key", max_err(&back(&dk), &get("grad_key")), tol.1),
        ("grad_value", max_err(&back(&dv), &get("grad_value")), tol.1),
    ];
    if c.rpb {
        checks.push(("grad_rpb", max_err(&back(&drpb), &get("grad_rpb")), tol.1));
    }
    for (name, err, tol) in checks {
        let mag = if T::DTYPE == na_core::DType::F32 {
            1.0
        } else {
            get(name).iter().fold(1.0f32, |m, v| m.max(v.abs()))
        };
        let tol = tol * mag;
        assert!(
            err <= tol,
            "{} ({}, {:?}, {imp:?}): {name} max abs error {err:e} > {tol:e}",
            c.name,
            c.peer,
            T::DTYPE
        );
    }
}

#[test]
fn fixtures_cover_every_feature() {
    let cs = cases();
    assert!(cs.len() >= 30, "only {} golden cases", cs.len());
    let has = |f: &dyn Fn(&Case) -> bool| cs.iter().any(f);
    for rank in 1..=3 {
        assert!(has(&|c| c.p.rank() == rank), "no {rank}D case");
        assert!(has(&|c| c.p.rank() == rank && c.rpb), "no {rank}D rpb case");
    }
    let params = |c: &Case| *c.p.params();
    assert!(
        has(&|c| params(c).kernel_size().iter().any(|k| k % 2 == 0)),
        "no even kernel"
    );
    assert!(
        has(&|c| params(c).stride().iter().any(|&s| s > 1)),
        "no stride"
    );
    assert!(
        has(&|c| params(c).dilation().iter().any(|&d| d > 1)),
        "no dilation"
    );
    assert!(has(&|c| params(c).causal().iter().any(|&x| x)), "no causal");
    assert!(
        has(&|c| c.p.axes().iter().any(|a| a.len() % a.dilation() != 0)),
        "no unequal dilation groups"
    );
}

#[test]
fn f32_matches_natten() {
    for c in cases() {
        check::<f32>(&c, Impl::Reference(Par::Seq), (1e-4, 1e-3));
    }
}

#[test]
fn f32_threaded_matches_natten() {
    for c in cases() {
        check::<f32>(&c, Impl::Reference(Par::rayon(3)), (1e-4, 1e-3));
    }
}

#[test]
fn f16_and_bf16_match_natten_within_their_tolerances() {
    for c in cases() {
        check::<f16>(&c, Impl::Reference(Par::Seq), (1e-2, 2e-2));
        check::<bf16>(&c, Impl::Reference(Par::Seq), (5e-2, 5e-2));
    }
}

#[test]
fn fused_matches_natten_on_every_isa() {
    for c in cases() {
        for isa in Isa::available() {
            check::<f32>(&c, Impl::Fused(isa, Par::Seq), (1e-4, 1e-3));
            check::<f16>(&c, Impl::Fused(isa, Par::Seq), (1e-2, 2e-2));
            check::<bf16>(&c, Impl::Fused(isa, Par::Seq), (5e-2, 5e-2));
        }
        check::<f32>(&c, Impl::Fused(Isa::best(), Par::rayon(3)), (1e-4, 1e-3));
    }
}
