//! `--device cuda` of `na attn` and `na bench`: on a machine without a CUDA
//! driver (CI) a one-line error that says so, and no output file; with a
//! driver and a device, the CUDA result equals the CPU one.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::na;
use na_core::npy::{read_npy, DEFAULT_MAX_ELEMENTS};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn attn(device: &str, out: &Path) -> Output {
    let ex = |n: &str| examples().join(n).display().to_string();
    na(&[
        "attn",
        "--query",
        &ex("query.npy"),
        "--key",
        &ex("key.npy"),
        "--value",
        &ex("value.npy"),
        "--kernel-size",
        "5",
        "--dilation",
        "2",
        "--rpb",
        &ex("rpb.npy"),
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
    ])
}

#[test]
fn cuda_device_is_a_clear_error_or_matches_the_cpu() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("device_cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cpu_out, gpu_out) = (dir.join("cpu.npy"), dir.join("gpu.npy"));
    assert!(attn("cpu", &cpu_out).status.success());
    let o = attn("cuda", &gpu_out);
    if o.status.success() {
        let a = read_npy(&cpu_out, DEFAULT_MAX_ELEMENTS).unwrap();
        let b = read_npy(&gpu_out, DEFAULT_MAX_ELEMENTS).unwrap();
        let worst = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "cuda vs cpu: {worst}");
        return;
    }
    let e = String::from_utf8_lossy(&o.stderr);
    eprintln!("no usable CUDA device here: {e}");
    assert_eq!(o.status.code(), Some(1));
    assert!(e.contains("--device cuda:0") && e.contains("CUDA"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!gpu_out.exists());
    let o = na(&[
        "bench", "--case", "nat-l0", "--device", "cuda:1", "--iters", "1",
    ]);
    if !o.status.success() {
        assert!(String::from_utf8_lossy(&o.stderr).contains("--device cuda:1"));
    }
    let o = attn("gpu", &gpu_out);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad --device value is a usage error"
    );
}

/// `--device cuda` chooses BENCHMARKS.md's GPU suite (listing it needs no GPU),
/// and a CPU-only case id is then unknown.
#[test]
fn bench_lists_the_gpu_suite_for_cuda() {
    let gpu = na(&["bench", "--list", "--device", "cuda"]);
    assert!(gpu.status.success());
    let out = String::from_utf8_lossy(&gpu.stdout);
    for id in ["nat-l0", "seq-1d", "vol-3d", "flux-2d", "flux-2d-s16"] {
        assert!(out.contains(id), "{id} missing from\n{out}");
    }
    assert!(out.contains("[32768]") && out.contains("[80, 80]"), "{out}");
    let cpu = na(&["bench", "--list"]);
    let cpu_out = String::from_utf8_lossy(&cpu.stdout);
    assert!(
        cpu_out.contains("[4096]") && !cpu_out.contains("flux-2d"),
        "{cpu_out}"
    );
}
