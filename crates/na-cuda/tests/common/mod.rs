//! The cases the GPU tests run, shared with the NVRTC compile check so that
//! every instantiation the GPU tests use is compiled in CI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use na_core::{DType, Params, Problem};
use na_cuda::KernelSpec;
use serde_json::Value;

/// Every storage type.
pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// One problem of the sweep or of the golden fixtures.
#[derive(Clone, Debug)]
pub struct Case {
    /// A name for messages (the fixture name for fixtures).
    pub name: String,
    /// The problem.
    pub p: Problem,
    /// Whether the case has a bias (and checks its gradient).
    pub rpb: bool,
}

#[allow(clippy::too_many_arguments)]
fn case(
    name: &str,
    batch: usize,
    spatial: &[usize],
    heads: usize,
    d: usize,
    dv: usize,
    k: &[usize],
    s: &[usize],
    dil: &[usize],
    causal: &[bool],
    rpb: bool,
) -> Case {
    let params = Params::new(k)
        .unwrap()
        .with_stride(s)
        .unwrap()
        .with_dilation(dil)
        .unwrap()
        .with_causal(causal)
        .unwrap();
    Case {
        name: name.to_string(),
        p: Problem::new(batch, spatial, heads, d, dv, params)
            .unwrap_or_else(|e| panic!("{name}: {e}")),
        rpb,
    }
}

/// SPEC.md's sweep: every rank, odd and even kernels, stride (blocked
/// included), dilation with lengths it does not divide, causal axes, bias,
/// `head_dim_v != head_dim`, batch and heads above 1, head dims up to the
/// 256 limit, windows larger than one staged chunk.
pub fn sweep() -> Vec<Case> {
    let f = false;
    let t = true;
    vec![
        case("1d_k7", 2, &[37], 3, 16, 16, &[7], &[1], &[1], &[f], f),
        case(
            "1d_k8_s3_d2_rpb_dv12",
            2,
            &[33],
            2,
            8,
            12,
            &[8],
            &[3],
            &[2],
            &[f],
            t,
        ),
        case(
            "1d_k5_s2_causal_rpb",
            1,
            &[40],
            2,
            16,
            16,
            &[5],
            &[2],
            &[1],
            &[t],
            t,
        ),
        case(
            "1d_k16_blocked_d32",
            2,
            &[64],
            2,
            32,
            32,
            &[16],
            &[16],
            &[1],
            &[f],
            f,
        ),
        case(
            "1d_k9_d3_hd128",
            1,
            &[50],
            2,
            128,
            128,
            &[9],
            &[1],
            &[3],
            &[f],
            f,
        ),
        case(
            "1d_k33_rpb_hd4_long",
            2,
            &[300],
            2,
            4,
            4,
            &[33],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "2d_k3x5_rpb",
            2,
            &[13, 15],
            2,
            16,
            16,
            &[3, 5],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "2d_k4_s2x3_d2x3_rpb_dv24",
            2,
            &[17, 14],
            2,
            8,
            24,
            &[4, 4],
            &[2, 3],
            &[2, 3],
            &[f],
            t,
        ),
        case(
            "2d_k5_d2_causal_rpb",
            1,
            &[12, 12],
            3,
            16,
            8,
            &[5, 5],
            &[1],
            &[2],
            &[t, f],
            t,
        ),
        case(
            "2d_k7_hd64_dv32",
            2,
            &[20, 20],
            2,
            64,
            32,
            &[7, 7],
            &[1],
            &[1],
            &[f],
            f,
        ),
        case(
            "2d_full_window",
            1,
            &[10, 9],
            2,
            8,
            8,
            &[10, 9],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "2d_k3_hd256",
            1,
            &[9, 9],
            1,
            256,
            256,
            &[3, 3],
            &[1],
            &[1],
            &[f],
            f,
        ),
        case(
            "2d_k13_d2_rpb_chunks",
            1,
            &[30, 30],
            2,
            16,
            16,
            &[13, 13],
            &[1],
            &[2],
            &[f],
            t,
        ),
        case(
            "3d_k3_rpb",
            2,
            &[6, 7, 8],
            2,
            8,
            8,
            &[3, 3, 3],
            &[1],
            &[1],
            &[f],
            t,
        ),
        case(
            "3d_k2x3x4_s1x2x3_d2x1x2_causal_rpb",
            1,
            &[8, 9, 10],
            2,
            12,
            20,
            &[2, 3, 4],
            &[1, 2, 3],
            &[2, 1, 2],
            &[t, f, f],
            t,
        ),
        case(
            "3d_k5x3x4_causal",
            2,
            &[5, 6, 7],
            2,
            16,
            16,
            &[5, 3, 4],
            &[1],
            &[1],
            &[t],
            f,
        ),
    ]
}

/// The directory of na-core's golden fixtures: `$NA_CORE_FIXTURES`, else
/// the build-time path, else `crates/na-core/tests/fixtures` under the
/// current directory (test binaries carried to another machine and run from
/// the repository root).
pub fn fixtures_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NA_CORE_FIXTURES") {
        return PathBuf::from(d);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../na-core/tests/fixtures");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("crates/na-core/tests/fixtures")
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// Every case of every `manifest_*.json` of na-core's fixtures.
pub fn fixtures() -> Vec<Case> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("na-core fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("manifest_") && n.ends_with(".json")
        })
        .collect();
    manifests.sort();
    let mut out = vec![];
    for m in manifests {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
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
            out.push(Case {
                name: c["name"].as_str().unwrap().to_string(),
                p: Problem::new(
                    n("batch"),
                    &usizes(&c["spatial"]),
                    n("heads"),
                    n("head_dim"),
                    n("head_dim_v"),
                    params,
                )
                .unwrap(),
                rpb: c["rpb"].as_bool().unwrap(),
            });
        }
    }
    out
}

/// Every distinct specialisation the GPU tests instantiate.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = vec![];
    for c in sweep().iter().chain(&fixtures()) {
        for dt in DTYPES {
            let s = KernelSpec::new(&c.p, dt, c.rpb).unwrap();
            if !specs.contains(&s) {
                specs.push(s);
            }
        }
    }
    specs
}

/// SplitMix64 + Box-Muller: deterministic standard normal samples (the
/// generator of na-core's tests).
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Normal(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn sample(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sample()).collect()
    }
}
