//! Neighborhood attention with caller-owned buffers and no allocation:
//! what a `no_std` build (`default-features = false`) runs. The scratch
//! length is stated per problem by `forward_scratch_len`; the same buffers
//! serve every call of that problem.
//!
//! ```sh
//! cargo run --release -p na-core --example no_alloc
//! ```

use na_core::{fused, Inputs, Params, Problem};

/// Buffers of a fixed-size problem, as firmware would hold them statically.
const H: usize = 14;
const W: usize = 14;
const HEADS: usize = 2;
const D: usize = 16;
const LEN: usize = H * W * HEADS * D;

fn main() -> Result<(), na_core::Error> {
    let p = Problem::new(1, &[H, W], HEADS, D, D, Params::new(&[5, 5])?)?;
    assert_eq!(p.qk_len(), LEN);
    // The caller owns everything: inputs, output and scratch.
    let mut q = [0.0f32; LEN];
    let mut k = [0.0f32; LEN];
    let mut v = [0.0f32; LEN];
    for i in 0..LEN {
        q[i] = ((i * 7 % 13) as f32 - 6.0) / 6.0;
        k[i] = ((i * 5 % 11) as f32 - 5.0) / 5.0;
        v[i] = (i % 17) as f32 / 17.0;
    }
    let mut out = [0.0f32; LEN];
    // Its length depends on the problem and the ISA the call runs on: taken
    // once here (firmware would size a static buffer with it).
    let mut scratch = vec![0.0f32; fused::forward_scratch_len(&p)];
    println!(
        "scratch: {} floats ({} bytes) for a {H}x{W} map, {HEADS} heads of {D}, 5x5 window",
        scratch.len(),
        4 * scratch.len()
    );
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: None,
    };
    for _ in 0..3 {
        // No allocation inside: the same buffers serve every call.
        fused::forward_with_scratch(&p, x, &mut out, None, &mut scratch)?;
    }
    let mean = out.iter().sum::<f32>() / LEN as f32;
    println!("mean output {mean:.6}");
    // Values are averages of values in [0, 1).
    assert!(out.iter().all(|o| (0.0..1.0).contains(o)));
    Ok(())
}
