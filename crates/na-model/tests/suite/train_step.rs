//! One full training step of a tiny DiNAT (stride-[1, 2] stem, layer
//! scale, dilated and padded blocks, conv downsampler) against PyTorch:
//! the loss, every parameter's gradient, and the parameters after one AdamW
//! step. The fixture comes from `tools/train_check/one_step.py` (PyTorch in
//! float64, its own gather-based neighborhood attention written from
//! SPEC.md; the version is in `step.json`).
//!
//! Bounds: the Rust step runs in f32 from the same f32 starting values.
//! Loss: 1e-5 relative. Gradients: per tensor, `max |g - g_ref| /
//! max |g_ref|` ≤ 1e-4 (f32 rounding through a dozen layers; measured
//! 9.2e-7). Parameters after the step: the first AdamW step moves each
//! coordinate by `lr · g / (|g| + ε)` — `±lr` wherever `|g| ≫ ε` — so the
//! difference is the f32 rounding of the values, ≤ 2e-6 absolute (measured
//! 6e-8), except
//! where the gradient is so small (`|g_ref| < 1e-6`) that the f32 and f64
//! gradients' signs may differ: there only `≤ 2·lr` is required.

use std::path::PathBuf;

use na_model::ops::CrossEntropy;
use na_model::train::AdamW;
use na_model::{Backend, Backward, Config, Cpu, CpuParams, Net, ParamSet, Tape, WeightMap};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train_step")
        .join(name)
}

#[test]
fn one_step_matches_pytorch() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("step.json")).unwrap()).unwrap();
    let cfg: Config = serde_json::from_value(meta["config"].clone()).unwrap();
    let mut before = WeightMap::load(fixture("before.safetensors")).unwrap();
    let x = before.take("input").unwrap();
    let labels: Vec<usize> = before
        .take("labels")
        .unwrap()
        .data
        .iter()
        .map(|&l| l as usize)
        .collect();
    let mut params = ParamSet::from_weights(&cfg, &before).unwrap();
    let grads_ref = ParamSet::from_weights(
        &cfg,
        &WeightMap::load(fixture("grads.safetensors")).unwrap(),
    )
    .unwrap();
    let after_ref = ParamSet::from_weights(
        &cfg,
        &WeightMap::load(fixture("after.safetensors")).unwrap(),
    )
    .unwrap();

    let net = Net::new(&params).unwrap();
    let cpu = Cpu::current();
    let pt = CpuParams::flat(params.data.clone());
    // The fixture's input is [B, 1, H, W]: with one channel, also NHWC.
    let xt = cpu
        .upload(&[x.shape[0], x.shape[2], x.shape[3], 1], &x.data)
        .unwrap();
    let mut tape = Tape::new();
    let logits = net.forward(&cpu, &pt, xt, Some(&mut tape), None).unwrap();
    let ce = CrossEntropy {
        classes: cfg.num_classes,
        smoothing: meta["label_smoothing"].as_f64().unwrap() as f32,
    };
    let out = ce.forward_backward(&logits.buf, &labels).unwrap();
    let want_loss = meta["loss"].as_f64().unwrap();
    let rel = (out.loss - want_loss).abs() / want_loss;
    println!("loss {} vs {want_loss} (relative {rel:.1e})", out.loss);
    assert!(rel < 1e-5);

    let dl = cpu.upload(&logits.shape, &out.dlogits).unwrap();
    let mut g = cpu.zeros(&[params.len()]).unwrap();
    net.backward(&cpu, &pt, &tape, &dl, &mut g).unwrap();
    let grad = g.buf;
    let mut worst = (0.0f32, String::new());
    for e in &params.entries {
        let (g, r) = (&grad[e.range.clone()], &grads_ref.data[e.range.clone()]);
        let scale = r.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let err = g
            .iter()
            .zip(r)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()))
            / scale.max(1e-12);
        if err > worst.0 {
            worst = (err, e.name.clone());
        }
        assert!(err <= 1e-4, "{}: gradient error {err:.2e}", e.name);
    }
    println!("worst gradient error {:.2e} ({})", worst.0, worst.1);

    let lr = meta["lr"].as_f64().unwrap() as f32;
    let mut opt = AdamW::new(params.len(), meta["weight_decay"].as_f64().unwrap() as f32);
    opt.update(&mut params, &grad, lr).unwrap();
    let mut worst = 0.0f32;
    for (i, (p, q)) in params.data.iter().zip(&after_ref.data).enumerate() {
        let d = (p - q).abs();
        if grads_ref.data[i].abs() < 1e-6 {
            assert!(d <= 2.0 * lr, "parameter {i}: {p} vs {q}");
        } else {
            worst = worst.max(d);
            assert!(d <= 2e-6, "parameter {i}: {p} vs {q}");
        }
    }
    println!("worst parameter difference after the step {worst:.2e}");
}
