//! Non-finite inputs (SPEC.md, "Non-finite values"), on every backend this
//! CPU has (the reference and the fused kernels on each ISA), in every
//! storage type.
//!
//! One value of a key, a value or the bias table is replaced by a poison
//! (`inf`, `-inf`, `NaN` or the finite `3e38`) and each backend's forward
//! and backward are compared with its own clean run:
//!
//! - **isolation**: every query whose window does not hold the poisoned
//!   position (or, for the bias, does not use the poisoned entry) has
//!   bit-identical `out`, `lse` and `d_query`; every key none of whose
//!   attending queries sees the poison has bit-identical `d_key` and
//!   `d_value` (a query only contributes to the keys of its own window);
//! - **propagation**: a `NaN` inside a query's window does what dense
//!   attention over the window does: in a key or the bias entry it makes the
//!   query's `out`, `lse` and `d_query` NaN (and `d_key` of every key of its
//!   window); in a value it makes that channel of `out` and all of `d_query`
//!   NaN and leaves `lse` unchanged;
//! - **agreement**: with `inf`, `-inf` or `NaN` in the window, every element
//!   of `out` and `lse` has the reference's class (NaN, +inf, -inf, finite).
//!
//! Window membership comes from the crate's own window math
//! ([`na_core::window::Axis`]), which `window.rs` checks against
//! SPEC.md's pseudocode.

use crate::common::Normal;
use na_core::fused::{self, Isa};
use na_core::window::Axis;
use na_core::{bf16, f16, reference, Element, Grads, Inputs, Par, Params, Problem, Saved};

/// Where the poison goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Site {
    /// `key[b, tok, h, c]`.
    Key {
        b: usize,
        tok: usize,
        h: usize,
        c: usize,
    },
    /// `value[b, tok, h, c]`.
    Value {
        b: usize,
        tok: usize,
        h: usize,
        c: usize,
    },
    /// `rpb[h, r]` (`r`: flat offset inside the head's table).
    Bias { h: usize, r: usize },
}

/// The poisons of the isolation sweeps.
const POISONS: [f32; 4] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3e38];

#[derive(Clone, Copy, Debug)]
enum Backend {
    Reference,
    Fused(Isa),
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Reference];
    v.extend(Isa::available().map(Backend::Fused));
    v
}

#[derive(Clone)]
struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rpb: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

impl Data {
    fn new(p: &Problem, rpb: bool, seed: u64) -> Self {
        let mut r = Normal::new(seed);
        Data {
            q: r.vec(p.qk_len()),
            k: r.vec(p.qk_len()),
            v: r.vec(p.v_len()),
            rpb: rpb.then(|| r.vec(p.rpb_len())),
            d_out: r.vec(p.v_len()),
        }
    }

    fn poisoned(&self, p: &Problem, site: Site, x: f32) -> Self {
        let mut d = self.clone();
        let (hn, dk, dv) = (p.heads(), p.head_dim(), p.head_dim_v());
        match site {
            Site::Key { b, tok, h, c } => d.k[((b * p.tokens() + tok) * hn + h) * dk + c] = x,
            Site::Value { b, tok, h, c } => d.v[((b * p.tokens() + tok) * hn + h) * dv + c] = x,
            Site::Bias { h, r } => {
                d.rpb.as_mut().expect("a bias table")[h * p.rpb_per_head() + r] = x
            }
        }
        d
    }
}

/// Everything one backend produces, widened to f32 (exactly).
struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn conv<T: Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn back<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn run<T: Element>(p: &Problem, d: &Data, be: Backend) -> Run {
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
    match be {
        Backend::Reference => reference::forward(p, x, &mut out, Some(&mut lse), Par::Seq),
        Backend::Fused(isa) => fused::forward_on(isa, p, x, &mut out, Some(&mut lse), Par::Seq),
    }
    .unwrap();
    let (mut dq, mut dk, mut dv) = (
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.qk_len()],
        vec![T::default(); p.v_len()],
    );
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
    match be {
        Backend::Reference => reference::backward(p, x, s, g, Par::Seq),
        Backend::Fused(isa) => fused::backward_on(isa, p, x, s, g, Par::Seq),
    }
    .unwrap();
    Run {
        out: back(&out),
        lse,
        dq: back(&dq),
        dk: back(&dk),
        dv: back(&dv),
    }
}

/// Window membership of one problem, from [`Axis`]: for every query token,
/// the key tokens of its window with their flat bias offsets.
struct Windows {
    tokens: usize,
    /// `win[q]`: `(key token, bias offset)` of query token `q`'s window.
    win: Vec<Vec<(usize, usize)>>,
}

impl Windows {
    fn new(p: &Problem) -> Self {
        let axes: Vec<Axis> = p.axes().to_vec();
        let ext: Vec<usize> = axes.iter().map(Axis::len).collect();
        let coords = |mut t: usize| {
            let mut c = vec![0; ext.len()];
            for a in (0..ext.len()).rev() {
                c[a] = t % ext[a];
                t /= ext[a];
            }
            c
        };
        let n = p.tokens();
        let win = (0..n)
            .map(|qt| {
                let qc = coords(qt);
                (0..n)
                    .filter_map(|kt| {
                        let kc = coords(kt);
                        let mut off = 0;
                        for (a, ax) in axes.iter().enumerate() {
                            off = off * ax.rpb_len() + ax.rpb_index(qc[a], kc[a])?;
                        }
                        Some((kt, off))
                    })
                    .collect()
            })
            .collect();
        Windows { tokens: n, win }
    }

    fn sees(&self, q: usize, k: usize) -> bool {
        self.win[q].iter().any(|&(t, _)| t == k)
    }

    fn uses_bias(&self, q: usize, r: usize) -> bool {
        self.win[q].iter().any(|&(_, o)| o == r)
    }
}

/// Which rows a poison at `site` may change, per `(batch, token, head)` row.
struct Reach {
    /// The query sees the poison.
    affected: Vec<bool>,
    /// The key is in the window of an affected query.
    near: Vec<bool>,
    /// The key's gradients may change: `near`, or the poisoned key itself.
    tainted: Vec<bool>,
}

fn reach(p: &Problem, w: &Windows, site: Site) -> Reach {
    let (n, hn) = (w.tokens, p.heads());
    let mut affected = vec![false; p.lse_len()];
    let mut near = vec![false; p.lse_len()];
    let mut tainted = vec![false; p.lse_len()];
    for b in 0..p.batch() {
        for h in 0..hn {
            let row = |t: usize| (b * n + t) * hn + h;
            let sees = |q: usize| match site {
                Site::Key {
                    b: b0, tok, h: h0, ..
                }
                | Site::Value {
                    b: b0, tok, h: h0, ..
                } => b == b0 && h == h0 && w.sees(q, tok),
                Site::Bias { h: h0, r } => h == h0 && w.uses_bias(q, r),
            };
            for q in 0..n {
                if sees(q) {
                    affected[row(q)] = true;
                    for &(t, _) in &w.win[q] {
                        near[row(t)] = true;
                    }
                }
            }
            if let Site::Key {
                b: b0, tok, h: h0, ..
            }
            | Site::Value {
                b: b0, tok, h: h0, ..
            } = site
            {
                if b == b0 && h == h0 {
                    tainted[row(tok)] = true;
                }
            }
        }
    }
    for (t, n) in tainted.iter_mut().zip(&near) {
        *t |= n;
    }
    Reach {
        affected,
        near,
        tainted,
    }
}

/// Failures found by [`check`]: failing elements by kind, poisoned runs
/// with a failure per backend, and the first few messages.
#[derive(Default)]
struct Report {
    plants: usize,
    isolation: usize,
    propagation: usize,
    agreement: usize,
    bad_runs: std::collections::BTreeMap<String, usize>,
    first: Vec<String>,
}

impl Report {
    fn fail(&mut self, kind: &str, msg: String) {
        match kind {
            "isolation" => self.isolation += 1,
            "propagation" => self.propagation += 1,
            _ => self.agreement += 1,
        }
        if self.first.len() < 12 {
            self.first.push(format!("[{kind}] {msg}"));
        }
    }

    fn assert_clean(&self, what: &str) {
        assert!(
            self.isolation + self.propagation + self.agreement == 0,
            "{what}: {} isolation, {} propagation and {} agreement failures; \
             poisoned runs with a failure, per backend (of {} runs each): {:?}; first:\n{}",
            self.isolation,
            self.propagation,
            self.agreement,
            self.plants,
            self.bad_runs,
            self.first.join("\n")
        );
        eprintln!(
            "{what}: {} poisoned runs per backend, no failure",
            self.plants
        );
    }
}

/// A short description of a problem for messages.
fn describe(p: &Problem) -> String {
    let r = p.rank();
    let a = p.params();
    format!(
        "[b {}, L {:?}, h {}, dims {}/{}] k {:?} s {:?} d {:?} causal {:?}",
        p.batch(),
        p.axes().iter().map(Axis::len).collect::<Vec<_>>(),
        p.heads(),
        p.head_dim(),
        p.head_dim_v(),
        &a.kernel_size()[..r],
        &a.stride()[..r],
        &a.dilation()[..r],
        &a.causal()[..r],
    )
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn class(x: f32) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x == f32::INFINITY {
        "+inf"
    } else if x == f32::NEG_INFINITY {
        "-inf"
    } else {
        "finite"
    }
}

/// Poisons each of `sites` with each of `poisons` and checks every backend
/// (in storage type `T`) against its own clean run and against the
/// reference (see the module doc).
fn check<T: Element>(
    p: &Problem,
    data: &Data,
    sites: &[Site],
    poisons: &[f32],
    bes: &[Backend],
    rep: &mut Report,
) {
    let w = Windows::new(p);
    let (dk, dv) = (p.head_dim(), p.head_dim_v());
    let clean: Vec<Run> = bes.iter().map(|&be| run::<T>(p, data, be)).collect();
    for &site in sites {
        let Reach {
            affected,
            near,
            tainted,
        } = reach(p, &w, site);
        for &x in poisons {
            let d = data.poisoned(p, site, x);
            let want = run::<T>(p, &d, Backend::Reference);
            rep.plants += 1;
            for (&be, c) in bes.iter().zip(&clean) {
                let before = rep.isolation + rep.propagation + rep.agreement;
                let r = run::<T>(p, &d, be);
                let tag = |row: usize| {
                    let (n, hn) = (p.tokens(), p.heads());
                    format!(
                        "{be:?} {} {site:?}={x:e}: (b {}, tok {}, h {}) of {}",
                        T::DTYPE,
                        row / (n * hn),
                        row / hn % n,
                        row % hn,
                        describe(p)
                    )
                };
                for row in 0..p.lse_len() {
                    let (o, q) = (row * dv..(row + 1) * dv, row * dk..(row + 1) * dk);
                    if !affected[row] {
                        for (name, ok) in [
                            ("out", same_bits(&r.out[o.clone()], &c.out[o.clone()])),
                            ("lse", same_bits(&r.lse[row..=row], &c.lse[row..=row])),
                            ("d_query", same_bits(&r.dq[q.clone()], &c.dq[q.clone()])),
                        ] {
                            if !ok {
                                rep.fail("isolation", format!("{name} changed at {}", tag(row)));
                            }
                        }
                    }
                    if !tainted[row] {
                        for (name, ok) in [
                            ("d_key", same_bits(&r.dk[q.clone()], &c.dk[q.clone()])),
                            ("d_value", same_bits(&r.dv[o.clone()], &c.dv[o.clone()])),
                        ] {
                            if !ok {
                                rep.fail("isolation", format!("{name} changed at {}", tag(row)));
                            }
                        }
                    }
                    if x.is_nan() && affected[row] {
                        let all_nan = |v: &[f32]| v.iter().all(|y| y.is_nan());
                        let mut bad = vec![];
                        match site {
                            Site::Value { c: ch, .. } => {
                                if !r.out[row * dv + ch].is_nan() {
                                    bad.push("out (poisoned channel)");
                                }
                                if !same_bits(&r.lse[row..=row], &c.lse[row..=row]) {
                                    bad.push("lse (should not change)");
                                }
                            }
                            _ => {
                                if !all_nan(&r.out[o.clone()]) {
                                    bad.push("out");
                                }
                                if !r.lse[row].is_nan() {
                                    bad.push("lse");
                                }
                            }
                        }
                        if !all_nan(&r.dq[q.clone()]) {
                            bad.push("d_query");
                        }
                        if !bad.is_empty() {
                            rep.fail("propagation", format!("{bad:?} not NaN at {}", tag(row)));
                        }
                    }
                    if x.is_nan() && near[row] {
                        // A key in the window of a query whose lse or delta is NaN.
                        if !r.dk[q.clone()].iter().all(|y| y.is_nan()) {
                            rep.fail("propagation", format!("d_key not NaN at {}", tag(row)));
                        }
                    }
                    if !x.is_finite() {
                        for (name, got, want) in [
                            ("out", &r.out[o.clone()], &want.out[o.clone()]),
                            ("lse", &r.lse[row..=row], &want.lse[row..=row]),
                        ] {
                            for (g, w) in got.iter().zip(want) {
                                if class(*g) != class(*w) {
                                    rep.fail(
                                        "agreement",
                                        format!(
                                            "{name} is {} where the reference has {} at {}",
                                            class(*g),
                                            class(*w),
                                            tag(row)
                                        ),
                                    );
                                    break;
                                }
                            }
                        }
                    }
                }
                if rep.isolation + rep.propagation + rep.agreement > before {
                    *rep.bad_runs.entry(format!("{be:?}")).or_default() += 1;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn problem(
    batch: usize,
    spatial: &[usize],
    heads: usize,
    dims: (usize, usize),
    k: &[usize],
    s: &[usize],
    d: &[usize],
    causal: &[bool],
) -> Problem {
    let params = Params::new(k)
        .and_then(|p| p.with_stride(s))
        .and_then(|p| p.with_dilation(d))
        .and_then(|p| p.with_causal(causal))
        .unwrap();
    Problem::new(batch, spatial, heads, dims.0, dims.1, params).unwrap()
}

/// Every key and value position of head 1 (channel 0 or the last), and
/// every bias entry of head 1 when there is a table.
fn every_site(p: &Problem, rpb: bool) -> Vec<Site> {
    let mut v = vec![];
    for tok in 0..p.tokens() {
        let (c, cv) = (tok % p.head_dim(), (tok * 3) % p.head_dim_v());
        v.push(Site::Key { b: 0, tok, h: 1, c });
        v.push(Site::Value {
            b: 0,
            tok,
            h: 1,
            c: cv,
        });
    }
    if rpb {
        v.extend((0..p.rpb_per_head()).map(|r| Site::Bias { h: 1, r }));
    }
    v
}

/// The 1-D sweep: stride 1..4, kernel 3..7, dilation 1..3, causal or not,
/// on an axis of 23 (dilation groups of unequal length, several tiles).
fn sweep_1d() -> Vec<(Problem, bool)> {
    let mut v = vec![];
    let dims = [(4, 4), (8, 5), (16, 8)];
    for k in 3..=7 {
        for s in 1..=4usize.min(k) {
            for d in 1..=3 {
                for causal in [false, true] {
                    let i = v.len();
                    let p = problem(1, &[23], 2, dims[i % 3], &[k], &[s], &[d], &[causal]);
                    v.push((p, i % 2 == 0));
                }
            }
        }
    }
    v
}

#[test]
fn poison_outside_the_window_never_reaches_a_query_1d_sweep() {
    let bes = backends();
    let mut rep = Report::default();
    for (i, (p, rpb)) in sweep_1d().into_iter().enumerate() {
        let data = Data::new(&p, rpb, 1000 + i as u64);
        let sites = every_site(&p, rpb);
        check::<f32>(&p, &data, &sites, &POISONS, &bes, &mut rep);
    }
    rep.assert_clean("1-D sweep, f32");
}

#[test]
fn nan_inside_the_window_propagates_1d_sweep() {
    let bes = backends();
    let mut rep = Report::default();
    for (i, (p, _)) in sweep_1d().into_iter().enumerate() {
        let data = Data::new(&p, true, 2000 + i as u64);
        let sites = every_site(&p, true);
        check::<f32>(&p, &data, &sites, &[f32::NAN], &bes, &mut rep);
    }
    rep.assert_clean("1-D sweep, NaN, f32");
}

/// A small deterministic generator of indices (SplitMix64).
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// A random 2-D or 3-D problem (every parameter of SPEC.md) with up to 120
/// positions, and random poison sites in it.
fn random_case(r: &mut Pick) -> (Problem, bool, Vec<Site>) {
    let rank = r.range(2, 3);
    let (mut spatial, mut k, mut s, mut d, mut c) = (vec![], vec![], vec![], vec![], vec![]);
    let cap = if rank == 2 { 11 } else { 5 };
    for _ in 0..rank {
        let l = r.range(2, cap);
        let kk = r.range(2, l.min(5));
        spatial.push(l);
        k.push(kk);
        s.push(r.range(1, kk));
        d.push(r.range(1, l / kk));
        c.push(r.below(3) == 0);
    }
    let dims = [(4, 4), (8, 8), (3, 16), (16, 5)][r.below(4)];
    let (batch, heads) = (r.range(1, 2), r.range(1, 2));
    let p = problem(batch, &spatial, heads, dims, &k, &s, &d, &c);
    let rpb = r.below(2) == 0;
    let mut sites = vec![];
    for _ in 0..6 {
        let (b, tok, h) = (r.below(batch), r.below(p.tokens()), r.below(heads));
        sites.push(Site::Key {
            b,
            tok,
            h,
            c: r.below(dims.0),
        });
        let (b, tok, h) = (r.below(batch), r.below(p.tokens()), r.below(heads));
        sites.push(Site::Value {
            b,
            tok,
            h,
            c: r.below(dims.1),
        });
    }
    if rpb {
        sites.push(Site::Bias {
            h: r.below(heads),
            r: r.below(p.rpb_per_head()),
        });
    }
    (p, rpb, sites)
}

#[test]
fn poison_outside_the_window_never_reaches_a_query_random_2d_3d() {
    let bes = backends();
    let mut rep = Report::default();
    let mut r = Pick(0x5EED);
    for i in 0..60 {
        let (p, rpb, sites) = random_case(&mut r);
        let data = Data::new(&p, rpb, 3000 + i);
        check::<f32>(&p, &data, &sites, &POISONS, &bes, &mut rep);
    }
    rep.assert_clean("random 2-D/3-D, f32");
}

#[test]
fn poison_isolation_and_nan_propagation_in_half_precision() {
    let bes = backends();
    let mut rep16 = Report::default();
    let mut rep_b = Report::default();
    // Every fourth case of the 1-D sweep, every site.
    for (i, (p, rpb)) in sweep_1d().into_iter().enumerate().step_by(4) {
        let data = Data::new(&p, rpb, 4000 + i as u64);
        let sites = every_site(&p, rpb);
        check::<f16>(&p, &data, &sites, &POISONS, &bes, &mut rep16);
        check::<bf16>(&p, &data, &sites, &POISONS, &bes, &mut rep_b);
    }
    let mut r = Pick(0xF16);
    for i in 0..20 {
        let (p, rpb, sites) = random_case(&mut r);
        let data = Data::new(&p, rpb, 5000 + i);
        check::<f16>(&p, &data, &sites, &POISONS, &bes, &mut rep16);
        check::<bf16>(&p, &data, &sites, &POISONS, &bes, &mut rep_b);
    }
    rep16.assert_clean("f16");
    rep_b.assert_clean("bf16");
}

#[test]
fn reported_repro_stride_2_value_inf() {
    // The repro: [1, 24, 1, 4], kernel 3, stride 2, v[0, 0, 0, :] = inf.
    // Only queries 0 and 1 see key 0; queries 2.. must be finite and unchanged.
    let p = problem(1, &[24], 1, (4, 4), &[3], &[2], &[1], &[false]);
    let w = Windows::new(&p);
    assert_eq!(
        (0..24).filter(|&q| w.sees(q, 0)).collect::<Vec<_>>(),
        [0, 1]
    );
    let data = Data::new(&p, false, 7);
    let mut bad = data.clone();
    bad.v[..4].fill(f32::INFINITY);
    for be in backends() {
        let (c, r) = (run::<f32>(&p, &data, be), run::<f32>(&p, &bad, be));
        for q in 2..24 {
            let o = q * 4..q * 4 + 4;
            assert!(
                same_bits(&r.out[o.clone()], &c.out[o.clone()]),
                "{be:?}: query {q} out {:?}, clean {:?}",
                &r.out[o.clone()],
                &c.out[o]
            );
            assert!(same_bits(&r.dq[q * 4..q * 4 + 4], &c.dq[q * 4..q * 4 + 4]));
        }
        assert!(
            r.out[..8].iter().all(|x| !x.is_finite()),
            "{be:?}: {:?}",
            &r.out[..8]
        );
    }
}
