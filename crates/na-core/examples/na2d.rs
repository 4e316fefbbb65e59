//! 2-D neighborhood attention in a few lines: a 7x7 window with dilation 2
//! on a 32x32 map, forward and backward, checked against the reference.
//!
//! ```sh
//! cargo run --release -p na-core --example na2d
//! ```

use na_core::{fused, reference, Grads, Inputs, Par, Params, Problem, Saved};

fn main() -> Result<(), na_core::Error> {
    // Batch 2, a 32x32 map, 4 heads of 16 channels.
    let params = Params::new(&[7, 7])?.with_dilation(&[2])?;
    let p = Problem::new(2, &[32, 32], 4, 16, 16, params)?;
    let fill = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * s).sin()).collect() };
    let (q, k, v) = (
        fill(p.qk_len(), 0.37),
        fill(p.qk_len(), 0.11),
        fill(p.v_len(), 0.53),
    );
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: None,
    };

    // Forward on every core; the log-sum-exp is kept for the backward pass.
    let mut out = vec![0.0f32; p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    fused::forward(&p, x, &mut out, Some(&mut lse), Par::rayon(0))?;

    // Backward of a loss whose gradient with respect to the output is 1.
    let d_out = vec![1.0f32; p.v_len()];
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; p.qk_len()],
        vec![0.0; p.qk_len()],
        vec![0.0; p.v_len()],
    );
    let saved = Saved {
        out: &out,
        lse: &lse,
        d_out: &d_out,
    };
    let grads = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: None,
    };
    fused::backward(&p, x, saved, grads, Par::rayon(0))?;

    // The reference kernels (the oracle) give the same output within rounding.
    let mut oracle = vec![0.0f32; p.v_len()];
    reference::forward(&p, x, &mut oracle, None, Par::Seq)?;
    let diff = out
        .iter()
        .zip(&oracle)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "output {:?} values, max |fused - reference| = {diff:.2e}; |d_query| sum = {:.4}",
        p.v_len(),
        dq.iter().map(|g| g.abs()).sum::<f32>()
    );
    assert!(diff < 1e-5);
    Ok(())
}
