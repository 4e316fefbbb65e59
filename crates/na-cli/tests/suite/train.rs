//! `na train`, `na eval` and the built-in `na classify` from the command
//! line: on a small synthetic IDX data set (always), and on the real
//! Fashion-MNIST of Debian's `dataset-fashion-mnist` when it is installed
//! (required, not skipped, when `NA_REQUIRE_FASHION_MNIST=1`, as in CI):
//! a 100-step run lowers the loss, and the built-in model's test accuracy
//! is the one the README states (± 0.2 points).

use crate::util::{na, text, tmp};
use std::path::{Path, PathBuf};

fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// A synthetic data set in Fashion-MNIST's file layout: 28×28 images, class
/// `c` a bright 6×6 square at one of ten places on dim noise.
fn synthetic(dir: &Path, train: usize, test: usize) {
    let mut state = 12345u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (n, img, lbl) in [
        (train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        (test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let mut px = vec![0u8; n * 784];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let c = i % 10;
            labels[i] = c as u8;
            let im = &mut px[i * 784..][..784];
            for v in im.iter_mut() {
                *v = (rnd() % 40) as u8;
            }
            let (y0, x0) = ((c / 5) * 14 + 4, (c % 5) * 5 + 1);
            for y in y0..y0 + 6 {
                for x in x0..x0 + 4 {
                    im[y * 28 + x] = 220;
                }
            }
        }
        std::fs::write(dir.join(img), idx(&[n as u32, 28, 28], &px)).unwrap();
        std::fs::write(dir.join(lbl), idx(&[n as u32], &labels)).unwrap();
    }
}

const TINY: &str = r#"{"arch": "dinat", "embed_dim": 8, "mlp_ratio": 2.0, "depths": [1, 1],
  "num_heads": [1, 2], "kernel_size": 3, "dilations": [[2], [1]], "num_classes": 10,
  "in_chans": 1, "stem_strides": [2, 2]}"#;

#[test]
fn train_eval_resume_and_errors_on_synthetic_data() {
    let d = tmp("train_cli", "synthetic");
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic(&data, 120, 40);
    let cfg = d.join("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();
    let out = d.join("run");
    let (data_s, cfg_s, out_s) = (
        data.to_str().unwrap(),
        cfg.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let losses = d.join("losses.json");
    let o = na(&[
        "train",
        "--data",
        data_s,
        "--config",
        cfg_s,
        "--out",
        out_s,
        "--epochs",
        "2",
        "--val-images",
        "24",
        "--no-flip",
        "--losses-json",
        losses.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("done in") && stdout.contains("test accuracy"),
        "{stdout}"
    );
    assert!(text(&o.stderr).contains("epoch 2:"), "{}", text(&o.stderr));
    // The folder: the weights, the manifest, one checkpoint set and the
    // learning curves, nothing else.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names[0].starts_with("checkpoint-s"), "{names:?}");
    assert_eq!(
        names[1..],
        [
            "checkpoint.json",
            "curves.png",
            "curves.svg",
            "model.safetensors"
        ]
    );
    let png = image::open(out.join("curves.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1200, 480));
    // Not a blank picture: the curves' blue and green are drawn.
    let rgb = png.to_rgb8();
    let has = |c: [u8; 3]| rgb.pixels().any(|p| p.0 == c);
    assert!(
        has([31, 119, 180]) && has([44, 160, 44]),
        "curve colours missing"
    );
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    for want in [
        "<svg",
        "2 of 2 epochs",
        "validation",
        "test, measured once",
        "chosen: epoch",
    ] {
        assert!(svg.contains(want), "{want} not in the SVG");
    }
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "chosen.safetensors",
        "ema.safetensors",
    ] {
        assert!(out.join(&names[0]).join(f).is_file(), "{f}");
    }
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&losses).unwrap()).unwrap();
    // 2 epochs of 3 batches of 32 (96 images; 24 are held out).
    assert_eq!(l["losses"].as_array().unwrap().len(), 6);
    // The same folder again without --resume is refused.
    let o = na(&[
        "train",
        "--data",
        data_s,
        "--config",
        cfg_s,
        "--out",
        out_s,
        "--epochs",
        "2",
        "--val-images",
        "24",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--resume"), "{}", text(&o.stderr));
    // --resume with a longer run continues from epoch 2... but options differ: refused.
    let o = na(&[
        "train",
        "--data",
        data_s,
        "--config",
        cfg_s,
        "--out",
        out_s,
        "--epochs",
        "3",
        "--resume",
        "--val-images",
        "24",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("another run"),
        "{}",
        text(&o.stderr)
    );

    // na eval finds the configuration beside the weights.
    let w = out.join("model.safetensors");
    let o = na(&[
        "eval",
        "--data",
        data_s,
        "--weights",
        w.to_str().unwrap(),
        "--json",
        "-",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 40);
    let conf = v["confusion"].as_array().unwrap();
    assert_eq!(conf.len(), 10);
    let total: u64 = conf
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 40);
    let correct: u64 = (0..10).map(|i| conf[i][i].as_u64().unwrap()).sum();
    assert_eq!(v["correct"].as_u64().unwrap(), correct);
    // The text report, and the confusion matrix as a picture (PNG or SVG).
    let conf_png = d.join("confusion.png");
    let o = na(&[
        "eval",
        "--data",
        data_s,
        "--weights",
        w.to_str().unwrap(),
        "--confusion",
        conf_png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let img = image::open(&conf_png).unwrap().to_rgb8();
    assert!(
        img.width() > 600 && img.height() > 600,
        "{:?}",
        img.dimensions()
    );
    let conf_svg = d.join("confusion.svg");
    let o2 = na(&[
        "eval",
        "--data",
        data_s,
        "--weights",
        w.to_str().unwrap(),
        "--confusion",
        conf_svg.to_str().unwrap(),
    ]);
    assert!(o2.status.success(), "{}", text(&o2.stderr));
    let svg = std::fs::read_to_string(&conf_svg).unwrap();
    assert!(
        svg.contains("Ankle boot") && svg.contains("predicted class"),
        "{svg}"
    );
    // Another extension is refused before the model runs, and nothing is written.
    let bad_ext = d.join("confusion.txt");
    let o3 = na(&[
        "eval",
        "--data",
        data_s,
        "--weights",
        w.to_str().unwrap(),
        "--confusion",
        bad_ext.to_str().unwrap(),
    ]);
    assert_eq!(o3.status.code(), Some(1));
    assert!(
        text(&o3.stderr).contains("--confusion") && text(&o3.stderr).contains(".png or .svg"),
        "{}",
        text(&o3.stderr)
    );
    assert!(!bad_ext.exists());
    let s = text(&o.stdout);
    assert!(
        s.contains("accuracy") && s.contains("Ankle boot") && s.contains("confusion"),
        "{s}"
    );

    // A missing data set names the package; a damaged file is named.
    let o = na(&[
        "train",
        "--data",
        d.join("nowhere").to_str().unwrap(),
        "--out",
        d.join("fresh").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("apt-get install dataset-fashion-mnist"),
        "{}",
        text(&o.stderr)
    );
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    synthetic(&bad, 20, 10);
    let f = bad.join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let o = na(&[
        "eval",
        "--data",
        bad.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );
    // A configuration that is not grey 10-class is refused before any work.
    let rgb = d.join("rgb.json");
    std::fs::write(&rgb, TINY.replace("\"in_chans\": 1", "\"in_chans\": 3")).unwrap();
    let o = na(&[
        "train",
        "--data",
        data_s,
        "--config",
        rgb.to_str().unwrap(),
        "--out",
        d.join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("in_chans 1"),
        "{}",
        text(&o.stderr)
    );
}

/// The README's statement of the built-in model's accuracy, as a fraction.
fn readme_accuracy() -> f64 {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let key = "test accuracy of the built-in model: **";
    let at = readme
        .find(key)
        .expect("the README states the built-in model's accuracy")
        + key.len();
    let num: String = readme[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse::<f64>().unwrap() / 100.0
}

fn fashion_installed() -> bool {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    let ok = dir.join("t10k-images-idx3-ubyte.gz").is_file()
        || dir.join("t10k-images-idx3-ubyte").is_file();
    if !ok {
        assert!(
            std::env::var("NA_REQUIRE_FASHION_MNIST").as_deref() != Ok("1"),
            "NA_REQUIRE_FASHION_MNIST=1 but dataset-fashion-mnist is not installed"
        );
        eprintln!("skipped: dataset-fashion-mnist is not installed");
    }
    ok
}

#[test]
fn the_built_in_model_has_the_stated_accuracy() {
    if !fashion_installed() {
        return;
    }
    let o = na(&["eval", "--json", "-"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    let stated = readme_accuracy();
    println!("built-in model: test accuracy {acc} (README: {stated})");
    assert_eq!(v["images"], 10000);
    assert!(
        (acc - stated).abs() <= 0.002,
        "measured {acc}, README {stated}"
    );
}

#[test]
fn a_hundred_steps_lower_the_loss_on_fashion_mnist() {
    if !fashion_installed() {
        return;
    }
    let d = tmp("train_cli", "hundred");
    let losses = d.join("losses.json");
    let o = na(&[
        "train",
        "--out",
        d.join("run").to_str().unwrap(),
        "--max-steps",
        "100",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0.02",
        "--losses-json",
        losses.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&losses).unwrap()).unwrap();
    let l: Vec<f64> = l["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(l.len(), 100);
    let first = l[..10].iter().sum::<f64>() / 10.0;
    let last = l[90..].iter().sum::<f64>() / 10.0;
    println!("mean loss of steps 1-10: {first:.4}; of steps 91-100: {last:.4}");
    assert!(last < first - 0.3, "{first} -> {last}");
}

/// The sample images in examples/fashion/ are classified as their names say.
#[test]
fn the_built_in_model_classifies_the_samples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fashion");
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    imgs.sort();
    assert!(imgs.len() >= 5, "sample images in {}", dir.display());
    let args: Vec<&str> = std::iter::once("classify")
        .chain(imgs.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let o = na(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), imgs.len(), "{out}");
    for (p, line) in imgs.iter().zip(&lines) {
        // Sample names are `<index>_<class>.png`, class with '-' for ' ' and '/'.
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let class = stem.split_once('_').unwrap().1;
        // "<path>: <class> <p>%, <class> <p>%, ..."
        let first = line
            .rsplit_once(": ")
            .unwrap()
            .1
            .split(", ")
            .next()
            .unwrap();
        let predicted = first.rsplit_once(' ').unwrap().0.replace(['/', ' '], "-");
        assert_eq!(predicted, class, "{line}");
    }
    // --json says the same, with the class indices and probabilities.
    let mut json_args = args.clone();
    json_args.insert(1, "--json");
    let o = na(&json_args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), imgs.len());
    for ((item, line), p) in items.iter().zip(&lines).zip(&imgs) {
        assert_eq!(item["image"], p.to_str().unwrap());
        let top = item["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let label = top[0]["label"].as_str().unwrap();
        let prob = top[0]["probability"].as_f64().unwrap();
        assert!(
            line.contains(&format!("{label} {:.1}%", 100.0 * prob)),
            "{line} vs {item}"
        );
        let class = top[0]["class"].as_u64().unwrap() as usize;
        assert_eq!(na_model::fashion::CLASSES[class], label);
    }
    // An unreadable image is a clear error.
    let d = tmp("train_cli", "classify");
    let bad = d.join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let o = na(&["classify", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("bad.png"), "{}", text(&o.stderr));
}

/// `na completions SHELL` prints a script that names the commands.
#[test]
fn completions_name_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = na(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        let script = text(&o.stdout);
        for cmd in [
            "classify", "train", "eval", "attn", "convert", "bench", "info",
        ] {
            assert!(script.contains(cmd), "{shell} script lacks {cmd}");
        }
    }
    let o = na(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
