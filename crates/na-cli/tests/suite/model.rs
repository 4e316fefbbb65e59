//! `na run`, `na info` and `na bench --model` through the real binary, on
//! the PyTorch parity fixtures of `na-model`.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{na, stderr, tmp};
use na_core::npy::{encode_npy_f32, read_npy, DEFAULT_MAX_ELEMENTS};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../na-model/tests/fixtures/models")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// The manifest entry of a case, for its configuration.
fn config_file(dir: &Path, case: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    let c = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap();
    let p = dir.join(format!("{case}.json"));
    std::fs::write(&p, serde_json::to_string(&c["config"]).unwrap()).unwrap();
    p.display().to_string()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn run_writes_the_logits_pytorch_gives() {
    let d = tmp("model_cli", "run_logits");
    for (case, weights) in [
        ("nat_k5_layerscale_b2", "nat_k5_layerscale_b2.safetensors"),
        ("dinat_odd_hf", "dinat_odd_hf.safetensors"),
        ("isotropic_nat", "isotropic_nat.pth"),
    ] {
        let cfg = config_file(&d, case);
        let out = d.join(format!("{case}.logits.npy"));
        let o = na(&[
            "run",
            "--config",
            &cfg,
            "--weights",
            &fixture(weights),
            "--input",
            &fixture(&format!("{case}.input.npy")),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let got = read_npy(&out, DEFAULT_MAX_ELEMENTS).unwrap();
        let want = read_npy(
            fixtures().join(format!("{case}.logits.npy")),
            DEFAULT_MAX_ELEMENTS,
        )
        .unwrap();
        assert_eq!(got.shape, want.shape);
        assert!(max_diff(&got.data, &want.data) < 1e-3, "{case}");
    }
}

#[test]
fn run_features_writes_four_maps() {
    let d = tmp("model_cli", "run_features");
    let cfg = config_file(&d, "dinat_backbone");
    let out = d.join("feat.npy");
    let o = na(&[
        "run",
        "--config",
        &cfg,
        "--weights",
        &fixture("dinat_backbone.safetensors"),
        "--input",
        &fixture("dinat_backbone.input.npy"),
        "--out",
        out.to_str().unwrap(),
        "--features",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..4 {
        let got = read_npy(d.join(format!("feat.{i}.npy")), DEFAULT_MAX_ELEMENTS).unwrap();
        let want = read_npy(
            fixtures().join(format!("dinat_backbone.features{i}.npy")),
            DEFAULT_MAX_ELEMENTS,
        )
        .unwrap();
        assert_eq!(got.shape, want.shape);
        assert!(max_diff(&got.data, &want.data) < 1e-3);
    }
}

#[test]
fn bad_inputs_fail_cleanly_and_write_nothing() {
    let d = tmp("model_cli", "bad_inputs");
    let cfg = config_file(&d, "nat_k7");
    let out = d.join("out.npy");
    let outs = out.to_str().unwrap();
    let wrong_shape = d.join("wrong.npy");
    std::fs::write(
        &wrong_shape,
        encode_npy_f32(&[1, 4, 32, 32], &vec![0.0; 4 * 32 * 32]).unwrap(),
    )
    .unwrap();
    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let input = fixture("nat_k7.input.npy");
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Weights of another model: every difference is listed.
        (
            vec![
                "--weights".into(),
                fixture("dinat_dilated.safetensors"),
                "--input".into(),
                input.clone(),
            ],
            "unexpected tensor(s): levels.0.blocks.1",
        ),
        (
            vec![
                "--weights".into(),
                garbage.display().to_string(),
                "--input".into(),
                input.clone(),
            ],
            "garbage.safetensors",
        ),
        (
            vec![
                "--weights".into(),
                d.join("absent.pth").display().to_string(),
                "--input".into(),
                input.clone(),
            ],
            "absent.pth",
        ),
        (
            vec![
                "--weights".into(),
                fixture("nat_k7.safetensors"),
                "--input".into(),
                wrong_shape.display().to_string(),
            ],
            "input has shape [1, 4, 32, 32]",
        ),
        (
            vec![
                "--weights".into(),
                fixture("nat_k7.safetensors"),
                "--input".into(),
                fixture("nat_k7.safetensors"),
            ],
            "nat_k7.safetensors",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            cfg.clone(),
            "--out".into(),
            outs.into(),
        ];
        args.extend(extra);
        let o = na(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(needle), "`{needle}` not in: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(!out.exists(), "no output after a failure");
    }
    let o = na(&[
        "run",
        "--model",
        "nat_nonexistent",
        "--weights",
        "x",
        "--input",
        "y",
        "--out",
        outs,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nat_mini"), "lists the known presets");
}

#[test]
fn info_prints_parameters_and_shapes() {
    let o = na(&["info", "nat_mini"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("19984174"), "{s}");
    assert!(s.contains("5.390 GFLOP"), "{s}");
    assert!(s.contains("56x56"), "{s}");
    let o = na(&["info", "dinat_s_tiny", "--size", "300,200", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"], 28_288_354);
    assert_eq!(v["levels"][0]["height"], 75);
    assert_eq!(v["levels"][0]["width"], 50);
}

#[test]
fn bench_model_writes_json() {
    let d = tmp("model_cli", "bench");
    let cfg = config_file(&d, "nat_k7");
    let json = d.join("b.json");
    let o = na(&[
        "bench",
        "--config",
        &cfg,
        "--batch",
        "1,2",
        "--image-size",
        "64",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = v.as_array().unwrap();
    assert_eq!(r.len(), 2);
    for (e, b) in r.iter().zip([1, 2]) {
        assert_eq!(e["batch"], b);
        assert_eq!(e["image_size"], serde_json::json!([64, 64]));
        assert!(e["median_s"].as_f64().unwrap() > 0.0);
        for k in [
            "model",
            "gflops",
            "gemm_peak_gflops",
            "commit",
            "cpu",
            "threads",
            "times_s",
        ] {
            assert!(!e[k].is_null(), "{k}");
        }
    }
}

#[test]
fn classify_prints_top_k_with_names() {
    use na_model::{labels, preprocess, Backend, Config, Cpu, Head, Model, WeightMap};
    let d = tmp("model_cli", "classify");
    let cfg_path = config_file(&d, "nat_k7");
    let names: Vec<String> = (0..10).map(|i| format!("thing{i}")).collect();
    let labels_path = d.join("labels.txt");
    std::fs::write(&labels_path, names.join("\n") + "\n").unwrap();
    let img = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../na-model/tests/fixtures/preprocess/rgb_300x257.png");
    let o = na(&[
        "classify",
        img.to_str().unwrap(),
        img.to_str().unwrap(),
        "--config",
        &cfg_path,
        "--weights",
        &fixture("nat_k7.safetensors"),
        "--top-k",
        "3",
        "--labels",
        labels_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per image: {out}");
    // The same computation through the library.
    let cfg = Config::from_json(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let cpu = Cpu::new(1);
    let model = Model::load(
        cpu.clone(),
        &cfg,
        WeightMap::load(Path::new(&fixture("nat_k7.safetensors"))).unwrap(),
        Head::Classifier,
    )
    .unwrap();
    let tf = preprocess::Transform::imagenet();
    let x = tf.apply(&preprocess::load_rgb(&img).unwrap());
    let y = model
        .forward(&cpu.upload(&[1, 3, 224, 224], &x).unwrap())
        .unwrap();
    let top = labels::top_k(&cpu.download(&y).unwrap(), 3);
    let want: Vec<String> = top
        .iter()
        .map(|(i, p)| format!("{} {:.1}%", names[*i], 100.0 * p))
        .collect();
    for l in lines {
        assert_eq!(l, format!("{}: {}", img.display(), want.join(", ")));
    }
    // A broken image is named, and nothing is printed for the good one.
    let bad = d.join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = na(&[
        "classify",
        img.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--config",
        &cfg_path,
        "--weights",
        &fixture("nat_k7.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

/// A failure the way the CLI promises them: exit status 1 (never 101, a
/// panic), one line on stderr holding every needle.
fn assert_clean_failure(o: &Output, needles: &[&str], what: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {e}");
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert_eq!(e.trim().lines().count(), 1, "{what}: one line: {e}");
    for n in needles {
        assert!(e.contains(n), "{what}: `{n}` not in: {e}");
    }
}

/// The built-in model's configuration with some fields replaced, written
/// as `name`. The JSON is edited as text so that values beyond `u64` and
/// `f64` ranges reach the binary as written.
fn edited_config(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let base = na_model::Config::preset("fashion_dinat").unwrap();
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::to_value(base).unwrap()).unwrap();
    let mut raw = Vec::new();
    for (k, text) in edits {
        v.remove(*k);
        raw.push(format!("\"{k}\": {text}"));
    }
    let mut json = serde_json::Value::Object(v).to_string();
    json.pop(); // the closing brace
    for r in raw {
        json.push_str(", ");
        json.push_str(&r);
    }
    json.push('}');
    let p = dir.join(name);
    std::fs::write(&p, json).unwrap();
    p
}

#[test]
fn config_values_out_of_range_fail_cleanly_naming_field_and_value() {
    let d = tmp("model_cli", "config_ranges");
    let input = fixture("nat_k7.input.npy");
    let weights = fixture("nat_k7.safetensors");
    let out = d.join("out.npy");
    for (field, value, limit) in [
        ("kernel_size", "1099511627776", "MAX_KERNEL_SIZE"),
        // 2k - 1 wrapped to 1 here once, and pad_hw panicked.
        ("kernel_size", "9223372036854775809", "MAX_KERNEL_SIZE"),
        ("num_classes", "18446744073709551615", "MAX_NUM_CLASSES"),
        ("mlp_ratio", "1e300", "MAX_MLP_RATIO"),
        ("embed_dim", "4611686018427387904", "MAX_CHANNELS"),
        ("in_chans", "1099511627776", "MAX_IN_CHANS"),
    ] {
        let cfg = edited_config(&d, &format!("{field}.json"), &[(field, value)]);
        let cfg = cfg.to_str().unwrap();
        let needles = [&format!("{field} = {value}")[..], limit];
        // `na info` reported 65,866 parameters for num_classes 2^64 - 1.
        assert_clean_failure(&na(&["info", cfg]), &needles, &format!("info {field}"));
        let o = na(&[
            "run",
            "--config",
            cfg,
            "--weights",
            &weights,
            "--input",
            &input,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clean_failure(&o, &needles, &format!("run {field}"));
        let o = na(&[
            "bench",
            "--config",
            cfg,
            "--batch",
            "1",
            "--image-size",
            "28",
            "--iters",
            "1",
        ]);
        assert_clean_failure(&o, &needles, &format!("bench {field}"));
        assert!(!out.exists());
    }
}

#[test]
fn info_refuses_sizes_past_the_limit_instead_of_overflowing() {
    // 4294967296² used to wrap to a 0.001 G multiply-adds report.
    for size in ["4294967296", "28,4294967296", "0", "32769"] {
        let o = na(&["info", "fashion_dinat", "--size", size]);
        assert_clean_failure(&o, &["32768", "MAX_IMAGE_SIDE"], &format!("--size {size}"));
    }
    // The limit itself is fine, and its FLOPs are exact.
    let o = na(&["info", "dinat_large", "--size", "32768", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let macs = v["macs"].as_u64().unwrap();
    assert!(macs > 1 << 45, "{macs}");
    assert_eq!(v["flops"].as_u64().unwrap(), 2 * macs);
}

#[test]
fn huge_dilation_is_refused_before_allocating_activations() {
    use na_model::{Config, WeightMap};
    let d = tmp("model_cli", "huge_dilation");
    // fashion_dinat with dilation 4096 in level 0: the 14×14 map is padded
    // to (5·4096)² = 20480² tokens, over 50 GB in one tensor.
    let cfg_path = edited_config(
        &d,
        "dilated.json",
        &[("dilations", "[[1, 4096], [1, 1, 1, 1], [1, 1]]")],
    );
    let cfg = Config::from_json(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let weights = d.join("w.safetensors");
    WeightMap::random(&cfg, false, 3)
        .save_safetensors(&weights)
        .unwrap();
    let input = d.join("x.npy");
    std::fs::write(
        &input,
        encode_npy_f32(&[1, 1, 28, 28], &[0.0; 28 * 28]).unwrap(),
    )
    .unwrap();
    let out = d.join("out.npy");
    let t = std::time::Instant::now();
    let o = na(&[
        "run",
        "--config",
        cfg_path.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &o,
        &[
            "at 28x28, batch 1",
            "GiB of activations, over the 16.0 GiB limit (set NA_MAX_MEMORY_GIB",
        ],
        "run",
    );
    assert!(t.elapsed().as_secs() < 30, "refused before any work");
    assert!(!out.exists());
    // `na info` allocates nothing: it still reports the padded block.
    let o = na(&["info", cfg_path.to_str().unwrap(), "--size", "28"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("padded"));
}

#[test]
fn memoize_flood_in_a_pth_is_refused_with_the_limit() {
    use std::io::Write;
    let d = tmp("model_cli", "memoize_flood");
    // PROTO 2, NONE, 2^24 MEMOIZE, STOP: this took 833 MB before failing.
    let mut pkl = vec![0x80, 2, b'N'];
    pkl.extend(std::iter::repeat_n(0x94u8, 1 << 24));
    pkl.push(b'.');
    let path = d.join("memo.pth");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(&pkl).unwrap();
    w.finish().unwrap();
    let needles = [
        "memo.pth",
        "more than 1048576 memo entries",
        "16777220-byte pickle",
    ];
    let out = d.join("out.safetensors");
    let o = na(&["convert", path.to_str().unwrap(), out.to_str().unwrap()]);
    assert_clean_failure(&o, &needles, "convert");
    let o = na(&[
        "run",
        "--model",
        "fashion_dinat",
        "--weights",
        path.to_str().unwrap(),
        "--input",
        &fixture("nat_k7.input.npy"),
        "--out",
        d.join("y.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &needles, "run");
}
