//! na-core's fused kernels against the reference kernels, forward and
//! backward, on an ISA of this CPU chosen by the input (each input runs one,
//! so that an execution stays cheap), for small problems decoded from the
//! input. Invalid parameters must give typed errors (never a panic), and
//! buffers of the wrong length must be refused by both implementations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use na_core::fused::{self, Isa};
use na_core::{bf16, f16, reference, Element, Error, Grads, Inputs, Par, Params, Problem, Saved};

/// Reads bytes from the input, zeros past its end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn pick(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |a, _| a << 8 | u64::from(self.u8()))
    }
}

/// SplitMix64: deterministic values in `[-scale, scale)`.
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rpb: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

/// Everything one implementation produces, widened to f32.
struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    grads: [Vec<f32>; 4],
}

#[derive(Clone, Copy)]
enum Impl {
    Reference,
    Fused(Isa),
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn run<T: Element>(p: &Problem, d: &Data, imp: Impl) -> Run {
    let (q, k, v, d_out) = (
        conv::<T>(&d.q),
        conv::<T>(&d.k),
        conv::<T>(&d.v),
        conv::<T>(&d.d_out),
    );
    let rpb = d.rpb.as_deref().map(conv::<T>);
    let x = Inputs {
        query: &q,
        key: &k,
        value: &v,
        rpb: rpb.as_deref(),
    };
    let mut out = vec![T::default(); p.v_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    match imp {
        Impl::Reference => reference::forward(p, x, &mut out, Some(&mut lse), Par::Seq),
        Impl::Fused(isa) => fused::forward_on(isa, p, x, &mut out, Some(&mut lse), Par::Seq),
    }
    .expect("forward of a valid problem");
    let mut dq = vec![T::default(); p.qk_len()];
    let mut dk = vec![T::default(); p.qk_len()];
    let mut dv = vec![T::default(); p.v_len()];
    let mut drpb = vec![T::default(); if rpb.is_some() { p.rpb_len() } else { 0 }];
    let g = Grads {
        d_query: &mut dq,
        d_key: &mut dk,
        d_value: &mut dv,
        d_rpb: rpb.is_some().then_some(&mut drpb[..]),
    };
    let s = Saved {
        out: &out,
        lse: &lse,
        d_out: &d_out,
    };
    match imp {
        Impl::Reference => reference::backward(p, x, s, g, Par::Seq),
        Impl::Fused(isa) => fused::backward_on(isa, p, x, s, g, Par::Seq),
    }
    .expect("backward of a valid problem");
    Run {
        out: back(&out),
        lse,
        grads: [back(&dq), back(&dk), back(&dv), back(&drpb)],
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `a` within `tol` of `b`, scaled by the magnitude of `b` where it exceeds 1.
fn assert_close(a: &Run, b: &Run, tol: (f32, f32), what: impl Fn() -> String) {
    let mag = |v: &[f32]| v.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    assert!(
        a.out.iter().chain(&a.lse).all(|x| x.is_finite()),
        "{}: non-finite forward",
        what()
    );
    for (name, x, y, t) in [
        ("out", &a.out, &b.out, tol.0),
        ("lse", &a.lse, &b.lse, tol.0),
    ] {
        let e = max_diff(x, y);
        assert!(e <= t * mag(y), "{}: {name} differs by {e:e}", what());
    }
    for (i, name) in ["d_query", "d_key", "d_value", "d_rpb"].iter().enumerate() {
        let (x, y) = (&a.grads[i], &b.grads[i]);
        let e = max_diff(x, y);
        assert!(e <= tol.1 * mag(y), "{}: {name} differs by {e:e}", what());
    }
}

/// Wrong buffer lengths are errors, not panics, for both implementations.
fn wrong_lengths(p: &Problem, which: u8) {
    let (qk, v, l) = (p.qk_len(), p.v_len(), p.lse_len());
    let short = |n: usize, i: u8| {
        if which % 4 == i {
            n.saturating_sub(1)
        } else {
            n
        }
    };
    let (q, k, val) = (
        vec![0.0f32; short(qk, 0)],
        vec![0.0f32; short(qk, 1)],
        vec![0.0f32; short(v, 2)],
    );
    let mut out = vec![0.0f32; short(v, 3) + usize::from(which & 4 != 0)];
    let x = Inputs {
        query: &q,
        key: &k,
        value: &val,
        rpb: None,
    };
    let lens_ok = q.len() == qk && k.len() == qk && val.len() == v && out.len() == v;
    let mut lse = vec![0.0f32; l];
    let r = reference::forward(p, x, &mut out, Some(&mut lse), Par::Seq);
    let f = fused::forward(p, x, &mut out, Some(&mut lse), Par::Seq);
    if lens_ok {
        assert!(r.is_ok() && f.is_ok());
    } else {
        assert!(matches!(r, Err(Error::LengthMismatch { .. })), "{r:?}");
        assert!(matches!(f, Err(Error::LengthMismatch { .. })), "{f:?}");
    }
}

/// Head widths: below, at and past the f32 vector lengths (8 for AVX2, 16
/// for AVX-512) and their multiples, where the kernels' tails are.
const HEAD_DIMS: [usize; 12] = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 32, 33];

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let rank = 1 + b.pick(3);
    // Small problems (at most 16, 36 or 64 positions), so that one input
    // takes well under a millisecond under AddressSanitizer and a long run
    // reaches 10^7 executions; every code path is still reached: windows
    // clamped at both edges, strides and dilations that leave partial
    // groups, and (below) head widths around the 8- and 16-lane vectors.
    let max_len = [16, 6, 4][rank - 1];
    let mut spatial = Vec::new();
    let (mut ks, mut st, mut dil, mut causal) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rank {
        let len = 1 + b.pick(max_len);
        spatial.push(len);
        // Out-of-range values on purpose: kernel 0/1 or above the axis,
        // stride 0 or above the kernel, dilation 0 or too large.
        ks.push(b.pick(len + 3));
        st.push(b.pick(len + 2));
        dil.push(b.pick(5));
        causal.push(b.u8() & 1 == 1);
    }
    let batch = 1 + b.pick(2);
    let heads = 1 + b.pick(2);
    let head_dim = HEAD_DIMS[b.pick(HEAD_DIMS.len())];
    let head_dim_v = HEAD_DIMS[b.pick(HEAD_DIMS.len())];
    let flags = b.u8();
    let with_rpb = flags & 1 == 1;
    let scale = match (flags >> 1) & 3 {
        0 => None,
        1 => Some(f32::from_bits(b.u64() as u32)),
        _ => Some(0.05 + b.pick(64) as f32 / 16.0),
    };
    let dtype = (flags >> 3) & 3;
    let value_scale = 0.25 + b.pick(16) as f32 / 4.0;
    let mut seed = b.u64();
    let isas: Vec<Isa> = Isa::available().collect();
    let isa = isas[b.pick(isas.len())];

    let params = Params::new(&ks)
        .and_then(|p| p.with_stride(&st))
        .and_then(|p| p.with_dilation(&dil))
        .and_then(|p| p.with_causal(&causal));
    let params = match (params, scale) {
        (Ok(p), Some(s)) => p.with_scale(s),
        (p, _) => p,
    };
    // A typed error for invalid parameters is the expected outcome.
    let Ok(params) = params else { return };
    let Ok(p) = Problem::new(batch, &spatial, heads, head_dim, head_dim_v, params) else {
        return;
    };
    // Scales from raw bits: validated above; beyond moderate ones the
    // logits overflow f32 and the two implementations may legitimately
    // differ in how they saturate.
    if p.scale().abs() > 64.0 {
        return;
    }
    if flags & 0x20 != 0 {
        wrong_lengths(&p, flags >> 6);
        return;
    }
    let d = Data {
        q: values(&mut seed, p.qk_len(), value_scale),
        k: values(&mut seed, p.qk_len(), value_scale),
        v: values(&mut seed, p.v_len(), value_scale),
        rpb: with_rpb.then(|| values(&mut seed, p.rpb_len(), value_scale)),
        d_out: values(&mut seed, p.v_len(), 1.0),
    };
    // Logits reach |scale| * value_scale^2 * head_dim; the tolerance grows
    // with them (f32 rounding of exp and the sums).
    let logit = p.scale().abs() * value_scale * value_scale * head_dim as f32;
    let grow = 1.0 + logit;
    match dtype {
        1 => {
            let want = run::<f16>(&p, &d, Impl::Reference);
            let got = run::<f16>(&p, &d, Impl::Fused(isa));
            let what = || format!("f16 {isa} {p:?}");
            assert_close(&got, &want, (2e-2 * grow, 5e-2 * grow), what);
        }
        2 => {
            let want = run::<bf16>(&p, &d, Impl::Reference);
            let got = run::<bf16>(&p, &d, Impl::Fused(isa));
            let what = || format!("bf16 {isa} {p:?}");
            assert_close(&got, &want, (1e-1 * grow, 2e-1 * grow), what);
        }
        _ => {
            let want = run::<f32>(&p, &d, Impl::Reference);
            let got = run::<f32>(&p, &d, Impl::Fused(isa));
            let what = || format!("{isa} {p:?}");
            assert_close(&got, &want, (1e-5 * grow, 1e-4 * grow), what);
        }
    }
});
