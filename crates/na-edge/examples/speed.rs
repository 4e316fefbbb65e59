//! Host-side speed of the no_std path beside the std model, one image at a
//! time on one thread (the edge path has no threads):
//!
//! ```sh
//! cargo run --release -p na-edge --example speed -- [ROUNDS]
//! ```
//!
//! Both run the built-in Fashion-MNIST DiNAT on the same 28×28 input,
//! interleaved round by round; the minimum and median per image of each are
//! printed (milliseconds), with the edge path's blob in f32 and f16.

use std::time::Instant;

/// The std-to-edge configuration shared with the tests.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{blob, edge_config};
use na_edge::{AlignedBlob, DType, EdgeModel};
use na_model::{fashion, Cpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(20), |a| a.parse())?;
    let (cfg, weights) = fashion::builtin()?;
    let std_model = fashion::builtin_model(Cpu::new(1))?;
    let ecfg = edge_config(&cfg)?;
    let blobs = [DType::F32, DType::F16].map(|d| blob(&ecfg, &weights, d));
    let [b32, b16] = blobs;
    let (a32, a16) = (AlignedBlob::new(&b32), AlignedBlob::new(&b16));
    let edges = [EdgeModel::new(&a32)?, EdgeModel::new(&a16)?];
    let plan = edges[0].plan(fashion::SIDE, fashion::SIDE)?;
    let x: Vec<f32> = (0..plan.input_len())
        .map(|i| fashion::normalize((i * 37 % 256) as u8))
        .collect();
    let mut arena = vec![0.0f32; plan.arena_len()];
    let mut logits = [0.0f32; 10];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let t = Instant::now();
        std_model.infer(&[1, 1, fashion::SIDE, fashion::SIDE], &x)?;
        times[0].push(t.elapsed().as_secs_f64() * 1e3);
        for (k, e) in edges.iter().enumerate() {
            let t = Instant::now();
            e.logits(&plan, &x, &mut arena, &mut logits)?;
            times[k + 1].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "Fashion DiNAT, 28x28, batch 1, 1 thread, {rounds} rounds; arena {} bytes, {} MACs",
        plan.arena_bytes(),
        plan.macs()
    );
    for (name, t) in ["na-model (std)", "na-edge f32 blob", "na-edge f16 blob"]
        .iter()
        .zip(&mut times)
    {
        t.sort_by(f64::total_cmp);
        println!(
            "{name:>18}: min {:.3} ms, median {:.3} ms",
            t[0],
            t[t.len() / 2]
        );
    }
    Ok(())
}
