//! NVRTC compile check, without a GPU: every kernel instantiation the GPU
//! tests use (`tests/common`) compiles to a cubin for sm_80 and sm_90.
//!
//! Skips with a printed reason when NVRTC cannot be loaded, unless
//! `NA_CUDA_REQUIRE_NVRTC=1` (CI sets it after installing the pinned
//! `nvidia-cuda-nvrtc-cu12` wheel and putting its `lib/` on
//! `LD_LIBRARY_PATH`), in which case a missing NVRTC fails the test.

mod common;

use std::sync::Mutex;
use std::time::Instant;

use na_cuda::nvrtc::{self, ImageKind};
use na_cuda::CudaError;

/// The architectures CI compiles for: A100 and H100/H200.
const ARCHS: [u32; 2] = [80, 90];

fn nvrtc_or_skip() -> Option<(i32, i32)> {
    let required = std::env::var("NA_CUDA_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    match nvrtc::version() {
        Ok(v) => Some(v),
        Err(e) if required => panic!("NA_CUDA_REQUIRE_NVRTC=1 but NVRTC is unusable: {e}"),
        Err(e) => {
            eprintln!("skipped: {e} (set NA_CUDA_REQUIRE_NVRTC=1 to make this a failure)");
            None
        }
    }
}

#[test]
fn every_instantiation_compiles_to_cubin_for_sm80_and_sm90() {
    let Some(version) = nvrtc_or_skip() else {
        return;
    };
    let supported = nvrtc::supported_archs().unwrap();
    for a in ARCHS {
        assert!(
            supported.contains(&a),
            "NVRTC {version:?} lacks sm_{a}: {supported:?}"
        );
    }
    let specs = common::all_specs();
    let jobs: Vec<_> = specs.iter().flat_map(|s| ARCHS.map(|a| (*s, a))).collect();
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::<String>::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some((spec, arch)) = jobs.get(i) else {
                    return;
                };
                match nvrtc::compile_spec_for_arch(spec, *arch) {
                    Ok(img) if img.kind == ImageKind::Cubin && img.looks_valid() => {}
                    Ok(img) => failures.lock().unwrap().push(format!(
                        "{} sm_{arch}: got {:?} ({} bytes), not a cubin",
                        spec.name(),
                        img.kind,
                        img.bytes.len()
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} sm_{arch}: {e}", spec.name())),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "NVRTC {}.{}: {} specialisations x {} architectures compiled to cubin in {:.1} s on {threads} thread(s)",
        version.0,
        version.1,
        specs.len(),
        ARCHS.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn compile_errors_carry_nvrtc_log() {
    if nvrtc_or_skip().is_none() {
        return;
    }
    let opts = nvrtc::options_for(nvrtc::Target::Real(80));
    let e = nvrtc::compile(
        "extern \"C\" __global__ void broken() { undeclared_thing(); }",
        "broken.cu",
        &opts,
    )
    .unwrap_err();
    match e {
        CudaError::Nvrtc { name, options, log } => {
            assert_eq!(name, "broken.cu");
            assert!(options.contains("sm_80"), "{options}");
            assert!(log.contains("undeclared_thing"), "{log}");
        }
        e => panic!("expected an NVRTC error, got {e}"),
    }
    // A virtual target gives PTX.
    let img = nvrtc::compile(
        "extern \"C\" __global__ void ok(float* x) { x[threadIdx.x] = 1.0f; }",
        "ok.cu",
        &nvrtc::options_for(nvrtc::Target::Virtual(80)),
    )
    .unwrap();
    assert_eq!(img.kind, ImageKind::Ptx);
    assert!(img.looks_valid());
}

#[test]
fn the_specs_cover_every_feature() {
    let specs = common::all_specs();
    for rank in 1..=3u8 {
        assert!(specs.iter().any(|s| s.rank == rank && s.rpb));
    }
    assert!(specs.iter().any(|s| s.causal.iter().any(|&c| c)));
    assert!(specs.iter().any(|s| s.dilated.iter().any(|&d| d)));
    assert!(specs.iter().any(|s| s.head_dim != s.head_dim_v));
    assert!(specs.iter().any(|s| s.kernel.iter().any(|k| k % 2 == 0)));
    assert!(specs.iter().any(|s| s.head_dim == 256));
    eprintln!("{} distinct specialisations", specs.len());
}
