//! The whole network's training walk ([`Net`] with a [`Tape`]) on tiny
//! models of every architecture: its forward gives the inference model's
//! logits, and its
//! backward matches central differences of the loss for a sample of every
//! parameter tensor.
//!
//! # Bounds
//! The loss is softmax cross-entropy (label smoothing 0.1) of the logits,
//! in f64; each parameter coordinate is moved by `h = 1e-2` (the step as
//! represented in f32 divides the difference). Through a dozen smooth
//! nonlinear layers in f32 the truncation error is `~h²` relative and the
//! rounding `~6e-8·|L|/h`; the error of a tensor is
//! `max |fd - g| / max(max |g|, 1e-2 · G)` over its sampled coordinates,
//! `G` the largest sampled gradient of the whole model (so tensors whose
//! gradient is nearly zero are judged on the model's scale): bound **2e-2**
//! (measured at most 4.9e-3; `--nocapture` prints them).

use na_model::ops::CrossEntropy;
use na_model::train::Rng;
use na_model::{
    Arch, Backend, Backward, Config, Cpu, CpuParams, Head, Model, Net, ParamSet, Tape, Tensor,
};

/// The logits of `x [B, side, side, 1]` and the forward's tape.
fn forward(net: &Net, p: &ParamSet, x: &[f32], [b, h, w]: [usize; 3]) -> (Vec<f32>, Tape<Cpu>) {
    let cpu = Cpu::current();
    let pt = CpuParams::flat(p.data.clone());
    let xt = cpu.upload(&[b, h, w, 1], x).unwrap();
    let mut tape = Tape::new();
    let y = net.forward(&cpu, &pt, xt, Some(&mut tape), None).unwrap();
    (y.buf, tape)
}

/// Adds the parameter gradient of `dlogits` into `grad`.
fn backward(net: &Net, p: &ParamSet, tape: &Tape<Cpu>, dlogits: &[f32], grad: &mut [f32]) {
    let cpu = Cpu::current();
    let pt = CpuParams::flat(p.data.clone());
    let d = cpu.upload(&[dlogits.len() / 5, 5], dlogits).unwrap();
    let mut g: Tensor<Cpu> = cpu.zeros(&[p.len()]).unwrap();
    net.backward(&cpu, &pt, tape, &d, &mut g).unwrap();
    grad.iter_mut().zip(&g.buf).for_each(|(a, b)| *a += b);
}

fn cfg(arch: Arch, depths: Vec<usize>, heads: Vec<usize>, dil: Vec<Vec<usize>>) -> Config {
    Config {
        arch,
        embed_dim: 8,
        mlp_ratio: 2.0,
        depths,
        num_heads: heads,
        kernel_size: 3,
        dilations: Some(dil),
        layer_scale: None,
        num_classes: 5,
        in_chans: 1,
        stem_strides: None,
    }
}

/// The tiny models and their input sizes: a DiNAT with a stride-[1, 2]
/// stem, layer scale and a padded dilated block; a DiNAT_s (patch merging,
/// padded last level); an isotropic model (padded tokens).
fn cases() -> Vec<(&'static str, Config, usize)> {
    let mut nat = cfg(
        Arch::Dinat,
        vec![1, 2],
        vec![2, 2],
        vec![vec![2], vec![1, 2]],
    );
    nat.stem_strides = Some([1, 2]);
    nat.layer_scale = Some(0.5);
    let s = cfg(
        Arch::DinatS,
        vec![1, 1, 1, 1],
        vec![2, 2, 4, 4],
        vec![vec![1]; 4],
    );
    let iso = cfg(Arch::Isotropic, vec![2], vec![2], vec![vec![1, 2]]);
    vec![
        ("dinat", nat, 12),
        ("dinat_s", s, 16),
        ("isotropic", iso, 33),
    ]
}

fn setup(c: &Config, side: usize, seed: u64) -> (ParamSet, Vec<f32>, Vec<usize>) {
    let mut p = ParamSet::init(c, seed).unwrap();
    // Move norms and biases off their initial 1/0 so every path is exercised.
    let mut rng = Rng::new(seed ^ 77);
    for v in p.data.iter_mut() {
        *v += 0.05 * rng.normal();
    }
    let b = 3;
    let x: Vec<f32> = (0..b * side * side).map(|_| rng.normal()).collect();
    let labels = (0..b).map(|i| i % c.num_classes).collect();
    (p, x, labels)
}

#[test]
fn forward_matches_the_inference_model() {
    let cpu = Cpu::new(0);
    for (name, c, side) in cases() {
        let (p, x, _) = setup(&c, side, 1);
        let net = Net::new(&p).unwrap();
        let (logits, _) = forward(&net, &p, &x, [3, side, side]);
        let model = Model::load(cpu.clone(), &c, p.to_weight_map(), Head::Classifier).unwrap();
        let xt = cpu.upload(&[3, 1, side, side], &x).unwrap();
        let want = cpu.download(&model.forward(&xt).unwrap()).unwrap();
        let err = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: forward max |diff| {err:.2e}");
        assert!(err <= 1e-5, "{name}: {err}");
    }
}

#[test]
fn backward_matches_central_differences() {
    let ce = CrossEntropy {
        classes: 5,
        smoothing: 0.1,
    };
    for (name, c, side) in cases() {
        let (mut p, x, labels) = setup(&c, side, 2);
        let net = Net::new(&p).unwrap();
        let dims = [3, side, side];
        let (logits, tape) = forward(&net, &p, &x, dims);
        let out = ce.forward_backward(&logits, &labels).unwrap();
        let mut grad = vec![0.0f32; p.len()];
        backward(&net, &p, &tape, &out.dlogits, &mut grad);
        let mut rng = Rng::new(5);
        let entries = p.entries.clone();
        let mut per = Vec::new();
        for e in &entries {
            let mut pairs = Vec::new();
            for _ in 0..3 {
                let i = e.range.start + rng.below(e.range.len());
                let t = p.data[i];
                let (tp, tm) = (t + 1e-2, t - 1e-2);
                p.data[i] = tp;
                let lp = ce
                    .forward_backward(&forward(&net, &p, &x, dims).0, &labels)
                    .unwrap()
                    .loss;
                p.data[i] = tm;
                let lm = ce
                    .forward_backward(&forward(&net, &p, &x, dims).0, &labels)
                    .unwrap()
                    .loss;
                p.data[i] = t;
                let fd = (lp - lm) / f64::from(tp - tm);
                pairs.push((fd, f64::from(grad[i])));
            }
            per.push((e.name.clone(), pairs));
        }
        let big = per
            .iter()
            .flat_map(|(_, v)| v.iter().map(|(_, g)| g.abs()))
            .fold(0.0f64, f64::max);
        assert!(big > 0.0, "{name}: all gradients are zero");
        let mut worst = (0.0f64, String::new());
        for (n, pairs) in &per {
            let scale = pairs
                .iter()
                .map(|(_, g)| g.abs())
                .fold(1e-2 * big, f64::max);
            let err = pairs
                .iter()
                .map(|(fd, g)| (fd - g).abs())
                .fold(0.0f64, f64::max)
                / scale;
            if err > worst.0 {
                worst = (err, n.clone());
            }
            assert!(err <= 2e-2, "{name}: {n}: error {err:.2e} ({pairs:?})");
        }
        println!("{name}: worst relative error {:.2e} ({})", worst.0, worst.1);
    }
}
