//! The Rust models against the PyTorch implementation under
//! `tools/model_parity/` (NATTEN 0.17.5's CPU ops for attention with RPB):
//! small random-weight models of every architecture, logits (or backbone
//! features) within 1e-3 absolute. See `tests/fixtures/models/README.md`.

use std::path::{Path, PathBuf};

use na_core::npy::{read_npy, DEFAULT_MAX_ELEMENTS};
use na_model::{Backend, Config, Cpu, Head, Model, Naming, WeightMap};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(dir().join(name), DEFAULT_MAX_ELEMENTS).unwrap();
    (a.shape, a.data)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs one manifest case from `weights` and returns the worst difference.
fn run_case(case: &Value, weights: &str, threads: usize) -> f32 {
    let name = case["name"].as_str().unwrap();
    let cfg: Config = serde_json::from_value(case["config"].clone()).unwrap();
    cfg.validate().unwrap();
    let backbone = case["backbone"].as_bool().unwrap_or(false);
    let w = WeightMap::load(dir().join(weights)).unwrap();
    let want_naming = match case["naming"].as_str().unwrap() {
        "hf" => Naming::HuggingFace,
        _ => Naming::Authors,
    };
    if weights.ends_with(".safetensors") {
        assert_eq!(w.naming(), Some(want_naming), "{name}: naming detection");
    }
    let cpu = Cpu::new(threads);
    let head = if backbone {
        Head::Backbone
    } else {
        Head::Classifier
    };
    let model = Model::load(cpu.clone(), &cfg, w, head).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (shape, data) = npy(case["input"].as_str().unwrap());
    let x = cpu.upload(&shape, &data).unwrap();
    let mut worst = 0.0f32;
    if backbone {
        let feats = model.features(&x).unwrap();
        let files = case["features"].as_array().unwrap();
        assert_eq!(feats.len(), files.len());
        for (f, file) in feats.iter().zip(files) {
            let (s, want) = npy(file.as_str().unwrap());
            assert_eq!(f.shape, s, "{name}: feature shape");
            worst = worst.max(max_abs_diff(&cpu.download(f).unwrap(), &want));
        }
    } else {
        let y = model.forward(&x).unwrap();
        let (s, want) = npy(case["logits"].as_str().unwrap());
        assert_eq!(y.shape, s, "{name}: logits shape");
        worst = max_abs_diff(&cpu.download(&y).unwrap(), &want);
    }
    worst
}

#[test]
fn every_fixture_model_matches_pytorch() {
    let m = manifest();
    let tol = m["tolerance_abs"].as_f64().unwrap_or(1e-3) as f32;
    let mut report = Vec::new();
    let mut failed = false;
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut files = vec![case["weights"].as_str().unwrap().to_string()];
        if let Some(p) = case["pth"].as_str() {
            files.push(p.to_string());
        }
        for f in files {
            for threads in [1, 2] {
                let d = run_case(case, &f, threads);
                failed |= d.is_nan() || d > tol;
                report.push(format!(
                    "{name} ({f}, {threads} thread(s)): max |diff| {d:.2e}"
                ));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        !failed,
        "tolerance {tol:e} exceeded:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_fixtures_cover_what_the_issue_asks() {
    let m = manifest();
    let cases = m["cases"].as_array().unwrap();
    let has = |f: &dyn Fn(&Value) -> bool| cases.iter().any(f);
    let arch = |c: &Value| c["config"]["arch"].as_str().unwrap().to_string();
    for a in ["nat", "dinat", "dinat_s", "isotropic"] {
        assert!(has(&|c| arch(c) == a), "no {a} case");
    }
    assert!(has(&|c| c["config"]["kernel_size"] == 5));
    assert!(has(&|c| c["config"]["kernel_size"] == 7));
    assert!(has(&|c| !c["config"]["layer_scale"].is_null()));
    assert!(has(&|c| c["naming"] == "hf"));
    assert!(has(&|c| c["pth"].is_string()));
    assert!(has(&|c| c["backbone"] == true));
    // Non-square inputs.
    assert!(has(&|c| {
        let (s, _) = npy(c["input"].as_str().unwrap());
        s[2] != s[3]
    }));
}

#[test]
fn wrong_weights_are_one_error_listing_every_problem() {
    let m = manifest();
    let case = &m["cases"][0];
    let cfg: Config = serde_json::from_value(case["config"].clone()).unwrap();
    let mut w = WeightMap::load(dir().join(case["weights"].as_str().unwrap())).unwrap();
    let head = w.take("head.weight").unwrap();
    w.insert(
        "head.weight",
        na_model::HostTensor {
            shape: vec![head.shape[0] + 1, head.shape[1]],
            data: vec![0.0; (head.shape[0] + 1) * head.shape[1]],
        },
    );
    w.take("norm.bias").unwrap();
    w.insert(
        "extra.tensor",
        na_model::HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let err = Model::load(Cpu::new(1), &cfg, w, Head::Classifier)
        .err()
        .expect("must fail")
        .to_string();
    for needle in [
        "norm.bias",
        "extra.tensor",
        "head.weight",
        "missing",
        "unexpected",
        "mis-shaped",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}
