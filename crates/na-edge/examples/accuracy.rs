//! Accuracy of the no_std path on the whole Fashion-MNIST test set, per
//! weight storage (f32, f16, int8 linear layers), beside the std model:
//!
//! ```sh
//! cargo run --release -p na-edge --example accuracy
//! ```
//!
//! Needs the data set (Debian's `dataset-fashion-mnist`). Two threads, each
//! with its own arena; prints one line per storage and the images on which
//! its class differs from the std model's.

/// The std-to-edge configuration shared with the tests.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{blob, edge_config};
use na_edge::{AlignedBlob, DType, EdgeModel};
use na_model::{fashion, train::find_fashion_mnist, Cpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_, test) = find_fashion_mnist(None)?;
    let n = test.len();
    let px = test.rows * test.cols;
    let x: Vec<f32> = test.images.iter().map(|&p| fashion::normalize(p)).collect();
    let (cfg, weights) = fashion::builtin()?;
    let model = fashion::builtin_model(Cpu::new(2))?;
    let mut want = Vec::with_capacity(n);
    for start in (0..n).step_by(500) {
        let m = (n - start).min(500);
        let l = model.infer(
            &[m, 1, test.rows, test.cols],
            &x[start * px..(start + m) * px],
        )?;
        want.extend(l.data.chunks(10).map(argmax));
    }
    let acc = |pred: &[usize]| {
        let right = pred
            .iter()
            .zip(&test.labels)
            .filter(|(p, l)| **p == usize::from(**l))
            .count();
        100.0 * right as f64 / n as f64
    };
    println!("na-model (std, f32): {:.2}% of {n}", acc(&want));
    let ecfg = edge_config(&cfg)?;
    for (name, dtype) in [
        ("f32", DType::F32),
        ("f16", DType::F16),
        ("int8", DType::I8),
    ] {
        let bytes = blob(&ecfg, &weights, dtype);
        let blob = AlignedBlob::new(&bytes);
        let edge = EdgeModel::new(&blob)?;
        let plan = edge.plan(test.rows, test.cols)?;
        let half = n.div_ceil(2);
        let pred: Vec<usize> = std::thread::scope(|s| {
            let parts: Vec<_> = [0..half, half..n]
                .into_iter()
                .map(|r| {
                    let (edge, plan, x) = (&edge, &plan, &x);
                    s.spawn(move || {
                        let mut arena = vec![0.0f32; plan.arena_len()];
                        let mut logits = [0.0f32; 10];
                        r.map(|i| {
                            edge.logits(plan, &x[i * px..(i + 1) * px], &mut arena, &mut logits)
                                .map(|()| argmax(&logits))
                        })
                        .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect::<Result<Vec<Vec<_>>, _>>()
        })?
        .concat();
        let differ = pred.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "na-edge, {name} blob ({} bytes): {:.2}% of {n}; class differs from the std model's on {differ} images",
            bytes.len(),
            acc(&pred)
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}
