//! The edge path against the std model (`na-model`): the built-in Fashion
//! DiNAT (f32 and f16 blobs) and small random NAT/DiNAT configurations.

mod common;

use common::{argmax, blob, edge_config, max_abs_diff, max_rel_diff, random_weights, signed, Rng};
use na_edge::{AlignedBlob, DType, EdgeModel};
use na_model::{fashion, Config, Cpu, Head, Model};

/// Tolerance of the f32 blob: `|edge - std| <= 1e-4 · max(1, |std|)`.
const TOL_F32: f32 = 1e-4;
/// Tolerance of the f16 blob against the f32 std model (weights rounded to
/// f16): `|edge - std| <= 1e-2 · max(1, |std|)`.
const TOL_F16: f32 = 1e-2;

/// Up to `n` Fashion-MNIST test images (normalised), or deterministic
/// pseudo-random ones when the data set is not installed.
fn fashion_images(n: usize) -> (Vec<Vec<f32>>, &'static str) {
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    let (img, lab) = (
        dir.join("t10k-images-idx3-ubyte.gz"),
        dir.join("t10k-labels-idx1-ubyte.gz"),
    );
    if let Ok(ds) = na_model::train::Dataset::load(&img, &lab) {
        let v = (0..n.min(ds.len()))
            .map(|i| ds.image(i).iter().map(|&p| fashion::normalize(p)).collect())
            .collect();
        return (v, "Fashion-MNIST t10k");
    }
    let mut rng = Rng::new(42);
    let v = (0..n)
        .map(|_| {
            (0..fashion::SIDE * fashion::SIDE)
                .map(|_| fashion::normalize((rng.next_u64() >> 56) as u8))
                .collect()
        })
        .collect();
    (v, "pseudo-random")
}

fn run_edge(model: &EdgeModel<'_>, h: usize, w: usize, x: &[f32]) -> Vec<f32> {
    let plan = model.plan(h, w).unwrap();
    let mut arena = vec![f32::NAN; plan.arena_len()];
    let mut out = vec![0.0; plan.output_len()];
    model.logits(&plan, x, &mut arena, &mut out).unwrap();
    out
}

#[test]
fn fashion_f32_and_f16_match_the_std_model() {
    let std_model = fashion::builtin_model(Cpu::new(1)).unwrap();
    let (cfg, wm) = fashion::builtin().unwrap();
    let ecfg = edge_config(&cfg).unwrap();
    let b32 = AlignedBlob::new(&blob(&ecfg, &wm, DType::F32));
    let b16 = AlignedBlob::new(&blob(&ecfg, &wm, DType::F16));
    let (m32, m16) = (EdgeModel::new(&b32).unwrap(), EdgeModel::new(&b16).unwrap());
    let plan = m32.plan(28, 28).unwrap();
    let info = na_model::analyze(&cfg, 28, 28).unwrap();
    assert_eq!(plan.macs(), info.macs);
    eprintln!(
        "fashion 28x28: arena {} f32 = {} bytes, {} MACs, blob f32 {} bytes, f16 {} bytes",
        plan.arena_len(),
        plan.arena_bytes(),
        plan.macs(),
        b32.len(),
        b16.len()
    );
    let (images, source) = fashion_images(16);
    let (mut d32, mut d16, mut r32, mut r16) = (0f32, 0f32, 0f32, 0f32);
    for x in &images {
        let want = std_model.infer(&[1, 1, 28, 28], x).unwrap().data;
        let got32 = run_edge(&m32, 28, 28, x);
        let got16 = run_edge(&m16, 28, 28, x);
        assert!(
            max_rel_diff(&got32, &want) <= TOL_F32,
            "{got32:?} vs {want:?}"
        );
        assert!(
            max_rel_diff(&got16, &want) <= TOL_F16,
            "{got16:?} vs {want:?}"
        );
        assert_eq!(argmax(&got32), argmax(&want));
        assert_eq!(argmax(&got16), argmax(&want));
        d32 = d32.max(max_abs_diff(&got32, &want));
        d16 = d16.max(max_abs_diff(&got16, &want));
        r32 = r32.max(max_rel_diff(&got32, &want));
        r16 = r16.max(max_rel_diff(&got16, &want));
    }
    eprintln!(
        "{} {source} images: max |diff| f32 {d32:e} (rel {r32:e}), f16 {d16:e} (rel {r16:e})",
        images.len()
    );
}

/// int8 linear layers (per output channel) on the built-in model: the
/// weights read back within half a quantisation step of the originals, and
/// the logits stay near the std model's (the full test set's accuracy is in
/// `bench/results/edge/`, from the `accuracy` example).
#[test]
fn fashion_int8_linear_layers_stay_close_to_the_std_model() {
    let std_model = fashion::builtin_model(Cpu::new(1)).unwrap();
    let (cfg, wm) = fashion::builtin().unwrap();
    let ecfg = edge_config(&cfg).unwrap();
    let b8 = AlignedBlob::new(&blob(&ecfg, &wm, DType::I8));
    let b16 = blob(&ecfg, &wm, DType::F16);
    // The stem and downsampler convolutions stay f16.
    assert!(
        b8.len() * 100 < b16.len() * 65,
        "{} vs {}",
        b8.len(),
        b16.len()
    );
    let m8 = EdgeModel::new(&b8).unwrap();
    let mut linear = 0;
    for i in 0..m8.blob().len() {
        let t = m8.blob().tensor(i).unwrap();
        let w = wm.get(t.name).unwrap();
        match t.data {
            na_edge::TensorData::I8 { scales, q } => {
                linear += 1;
                assert_eq!(t.shape.dims().len(), 2, "{}", t.name);
                let row = q.len() / scales.len();
                for (k, &v) in w.data.iter().enumerate() {
                    let step = scales[k / row];
                    assert!((t.data.get(k) - v).abs() <= 0.5 * step + 1e-7, "{}", t.name);
                }
            }
            _ => assert!(!(t.shape.dims().len() == 2 && t.name.ends_with(".weight"))),
        }
    }
    assert_eq!(linear, 4 * cfg.depths.iter().sum::<usize>() + 1);
    let (images, source) = fashion_images(16);
    let (mut d8, mut same) = (0f32, 0);
    for x in &images {
        let want = std_model.infer(&[1, 1, 28, 28], x).unwrap().data;
        let got = run_edge(&m8, 28, 28, x);
        d8 = d8.max(max_abs_diff(&got, &want));
        same += usize::from(argmax(&got) == argmax(&want));
    }
    eprintln!(
        "{} {source} images, int8: max |diff| {d8:e}, same class on {same}",
        images.len()
    );
    assert!(d8 < 0.05, "{d8}");
    assert_eq!(same, images.len());
}

fn small(arch: na_model::Arch, dilations: Vec<Vec<usize>>, ls: bool, classes: usize) -> Config {
    Config {
        arch,
        embed_dim: 16,
        mlp_ratio: 2.0,
        depths: dilations.iter().map(Vec::len).collect(),
        num_heads: vec![1, 2, 4][..dilations.len()].to_vec(),
        kernel_size: 3,
        dilations: Some(dilations),
        layer_scale: ls.then_some(0.5),
        num_classes: classes,
        in_chans: 3,
        stem_strides: None,
    }
}

#[test]
fn small_random_configs_match_the_std_model() {
    use na_model::Arch::{Dinat, Nat};
    let cases = [
        // The brief's config: embed 16, depths [1, 1], heads [1, 2], kernel 3,
        // dilation 2 on the first level, layer scale.
        (
            small(Nat, vec![vec![2], vec![1]], true, 5),
            [(16, 16), (20, 12)],
        ),
        (
            small(Dinat, vec![vec![1, 2], vec![1]], false, 7),
            [(32, 32), (9, 27)],
        ),
        (
            small(Nat, vec![vec![1], vec![1], vec![1]], true, 3),
            [(40, 36), (7, 7)],
        ),
        // No head: the output is the pooled features.
        (
            small(Dinat, vec![vec![2], vec![1]], false, 0),
            [(24, 24), (13, 17)],
        ),
    ];
    for (seed, (cfg, sizes)) in cases.into_iter().enumerate() {
        cfg.validate().unwrap();
        let wm = random_weights(&cfg, seed as u64 + 1);
        let std_model = Model::load(Cpu::new(1), &cfg, wm.clone(), Head::Classifier).unwrap();
        let ecfg = edge_config(&cfg).unwrap();
        let bytes = AlignedBlob::new(&blob(&ecfg, &wm, DType::F32));
        let model = EdgeModel::new(&bytes).unwrap();
        let mut rng = Rng::new(100 + seed as u64);
        for (h, w) in sizes {
            let x: Vec<f32> = (0..3 * h * w).map(|_| signed(&mut rng)).collect();
            let want = std_model.infer(&[1, 3, h, w], &x).unwrap().data;
            let got = run_edge(&model, h, w, &x);
            let d = max_rel_diff(&got, &want);
            assert!(
                d <= TOL_F32,
                "case {seed} {h}x{w}: {d:e}\n{got:?}\n{want:?}"
            );
            let plan = model.plan(h, w).unwrap();
            assert_eq!(plan.macs(), na_model::analyze(&cfg, h, w).unwrap().macs);
        }
    }
}
