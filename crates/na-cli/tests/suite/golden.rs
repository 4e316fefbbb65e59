//! `na attn` (the real binary) against the NATTEN golden fixtures of
//! `crates/na-core/tests/fixtures`, forward and backward, with and without
//! RPB, within SPEC.md's f32 tolerances.

use std::path::{Path, PathBuf};
use std::process::Command;

use na_core::npy::{read_npy, DEFAULT_MAX_ELEMENTS};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../na-core/tests/fixtures")
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    items.join(",")
}

fn load(p: &Path) -> Vec<f32> {
    read_npy(p, DEFAULT_MAX_ELEMENTS)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .data
}

#[test]
fn na_attn_matches_natten_fixtures() {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden_cli");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut n = 0;
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
        for c in doc["cases"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let input = |t: &str| fixtures().join(format!("{name}.{t}.npy"));
            let output = |t: &str| out_dir.join(format!("{name}.{t}.npy"));
            let mut cmd = Command::new(crate::util::bin());
            cmd.arg("attn");
            for (flag, t) in [
                ("--query", "query"),
                ("--key", "key"),
                ("--value", "value"),
                ("--grad-out", "grad_out"),
            ] {
                cmd.arg(flag).arg(input(t));
            }
            cmd.args(["--kernel-size", &list(&c["kernel_size"])]);
            cmd.args([
                "--stride",
                &list(&c["stride"]),
                "--dilation",
                &list(&c["dilation"]),
            ]);
            cmd.args([
                "--causal",
                &list(&c["causal"]),
                "--scale",
                &c["scale"].to_string(),
            ]);
            let mut outs = vec![("--out", "out", 1e-4), ("--lse", "lse", 1e-4)];
            outs.extend([
                ("--grad-query", "grad_query", 1e-3),
                ("--grad-key", "grad_key", 1e-3),
            ]);
            outs.push(("--grad-value", "grad_value", 1e-3));
            if c["rpb"].as_bool().unwrap() {
                cmd.arg("--rpb").arg(input("rpb"));
                outs.push(("--grad-rpb", "grad_rpb", 1e-3));
            }
            for (flag, t, _) in &outs {
                cmd.arg(flag).arg(output(t));
            }
            let res = cmd.output().unwrap();
            assert!(
                res.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&res.stderr)
            );
            for (_, t, tol) in outs {
                let (got, want) = (load(&output(t)), load(&input(t)));
                assert_eq!(got.len(), want.len(), "{name}.{t}");
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    err <= tol,
                    "{name}.{t}: max abs error {err:e} > {tol:e} ({})",
                    doc["peer"]
                );
            }
            n += 1;
        }
    }
    assert!(n >= 30, "only {n} golden cases ran");
}
