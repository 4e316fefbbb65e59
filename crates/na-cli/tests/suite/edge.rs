//! `na export-edge`: the blob runs on na-edge's no_std path with the classes
//! of the std model, the prepared images are what `na classify` sees, and
//! bad arguments leave no file behind.

use std::path::Path;

use na_edge::{AlignedBlob, EdgeModel};
use na_model::{classify::Classifier, Cpu};

use crate::util::{na, s, stderr, tmp};

/// The example images of the repository (t10k images of Fashion-MNIST).
fn images() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fashion");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .filter(|p| p.ends_with(".png"))
        .collect();
    v.sort();
    v
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn export_edge_blob_and_inputs_classify_as_the_std_model() {
    let dir = tmp("edge", "builtin");
    let imgs = images();
    assert!(imgs.len() >= 5, "{imgs:?}");
    for dtype in ["f16", "f32", "i8"] {
        let (blob, inputs) = (dir.join(format!("m-{dtype}.naedge")), dir.join("in.f32"));
        let mut args = vec![
            "export-edge",
            s(&blob),
            "--dtype",
            dtype,
            "--inputs",
            s(&inputs),
        ];
        args.push("--images");
        args.extend(imgs.iter().map(String::as_str));
        let out = na(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let shown = if dtype == "i8" { "int8" } else { dtype };
        assert!(stdout.contains(&format!("{shown} weights")), "{stdout}");
        assert!(stdout.contains("35166720 multiply-adds"), "{stdout}");

        let bytes = std::fs::read(&blob).unwrap();
        let raw = std::fs::read(&inputs).unwrap();
        let x: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // The inputs are `na classify`'s preparation of the images.
        let cls = Classifier::builtin(Cpu::new(1)).unwrap();
        let n = 28 * 28;
        assert_eq!(x.len(), imgs.len() * n);
        for (i, p) in imgs.iter().enumerate() {
            assert_eq!(cls.load(p).unwrap(), x[i * n..(i + 1) * n], "{p}");
        }
        // The blob runs on the edge path with the std model's classes.
        let aligned = AlignedBlob::new(&bytes);
        let model = EdgeModel::new(&aligned).unwrap();
        let plan = model.plan(28, 28).unwrap();
        let mut arena = vec![f32::NAN; plan.arena_len()];
        let want = cls.logits(&x).unwrap();
        for i in 0..imgs.len() {
            let mut logits = [0.0f32; 10];
            model
                .logits(&plan, &x[i * n..(i + 1) * n], &mut arena, &mut logits)
                .unwrap();
            let w = &want[i * 10..(i + 1) * 10];
            assert_eq!(argmax(&logits), argmax(w), "{dtype} image {i}");
            let tol = match dtype {
                "f32" => 1e-4,
                "f16" => 1e-2,
                _ => 5e-2,
            };
            for (a, b) in logits.iter().zip(w) {
                assert!(
                    (a - b).abs() <= tol * b.abs().max(1.0),
                    "{dtype} {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn export_edge_refusals_leave_no_file() {
    let dir = tmp("edge", "refusals");
    let blob = dir.join("m.naedge");
    // --weights without --model or --config.
    let out = na(&["export-edge", s(&blob), "--model", "nat_mini"]);
    assert!(!out.status.success());
    let w = dir.join("w.safetensors");
    std::fs::write(&w, b"not safetensors").unwrap();
    let out = na(&[
        "export-edge",
        s(&blob),
        "--model",
        "nat_mini",
        "--weights",
        s(&w),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("w.safetensors"), "{}", stderr(&out));
    // An unreadable image names itself; neither output is written.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"\x89PNG broken").unwrap();
    let inputs = dir.join("in.f32");
    let out = na(&[
        "export-edge",
        s(&blob),
        "--inputs",
        s(&inputs),
        "--images",
        s(&bad),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.png"), "{}", stderr(&out));
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["bad.png", "w.safetensors"]);
}
