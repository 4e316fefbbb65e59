//! The per-axis window math against a literal transcription of SPEC.md, over
//! every small configuration (exhaustively) and random larger ones (proptest).

use crate::common::spec_window;
use na_core::window::Axis;
use proptest::prelude::*;

/// Checks every query of one axis configuration: the window, the bias index
/// bound, and the inverse neighbourhood against a brute-force scan.
fn check_axis(l: usize, k: usize, s: usize, d: usize, causal: bool) {
    let a = Axis::new(0, l, k, s, d, causal).unwrap();
    let mut inverse: Vec<Vec<usize>> = vec![vec![]; l];
    for i in 0..l {
        let want = spec_window(l, k, s, d, causal, i);
        let got: Vec<usize> = a.window(i).iter().collect();
        assert_eq!(got, want, "L={l} k={k} s={s} d={d} causal={causal} i={i}");
        if causal {
            assert!(!got.is_empty() && got.len() <= k);
            assert!(got.iter().all(|&t| t <= i), "causal key after query");
        } else {
            assert_eq!(got.len(), k, "non-causal windows hold exactly k keys");
        }
        assert!(got.contains(&i), "a query always attends itself");
        for &t in &got {
            assert_eq!(t % d, i % d, "keys stay in the query's dilation group");
            let r = a.rpb_index(i, t).unwrap();
            assert!(r < 2 * k - 1, "rpb index {r} out of [0, 2k-2]");
            assert_eq!(r as i64, (t / d) as i64 - (i / d) as i64 + k as i64 - 1);
            inverse[t].push(i);
        }
        for t in 0..l {
            assert_eq!(a.attends(i, t), got.contains(&t));
        }
    }
    for (t, want) in inverse.iter().enumerate() {
        let got: Vec<usize> = a.inverse(t).collect();
        assert_eq!(
            &got, want,
            "inverse of key {t}: L={l} k={k} s={s} d={d} causal={causal}"
        );
    }
}

#[test]
fn every_small_configuration_matches_spec() {
    let mut n = 0;
    for l in 2..=32 {
        for k in 2..=l {
            for s in 1..=k {
                for d in 1..=l / k {
                    for causal in [false, true] {
                        check_axis(l, k, s, d, causal);
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(n > 15_000, "sweep covered only {n} configurations");
}

fn config() -> impl Strategy<Value = (usize, usize, usize, usize, bool)> {
    (2usize..200)
        .prop_flat_map(|l| (Just(l), 2..=l.min(40)))
        .prop_flat_map(|(l, k)| (Just(l), Just(k), 1..=k, 1..=l / k, any::<bool>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_configurations_match_spec((l, k, s, d, causal) in config()) {
        check_axis(l, k, s, d, causal);
    }
}

#[test]
fn non_causal_odd_kernel_centres_on_query_away_from_borders() {
    for (l, k, d) in [(31, 7, 1), (40, 5, 3), (50, 9, 2)] {
        let a = Axis::new(0, l, k, 1, d, false).unwrap();
        for i in 0..l {
            let w: Vec<usize> = a.window(i).iter().collect();
            let (first, last) = (w[0] as i64, *w.last().unwrap() as i64);
            let half = (k / 2 * d) as i64;
            let ii = i as i64;
            if ii - half >= 0 && ii + half < l as i64 && (ii + half) % d as i64 == ii % d as i64 {
                // Far enough from both borders of its group.
                let lg = (l - i % d).div_ceil(d) as i64;
                if ii / d as i64 - (k / 2) as i64 >= 0 && ii / d as i64 + ((k / 2) as i64) < lg {
                    assert_eq!(
                        (first, last),
                        (ii - half, ii + half),
                        "L={l} k={k} d={d} i={i}"
                    );
                }
            }
        }
    }
}

#[test]
fn blocked_when_stride_equals_kernel() {
    for (l, k) in [(12, 3), (12, 4), (10, 5), (16, 2)] {
        let a = Axis::new(0, l, k, k, 1, false).unwrap();
        for i in 0..l {
            let b = i / k * k;
            assert_eq!(
                a.window(i).iter().collect::<Vec<_>>(),
                (b..b + k).collect::<Vec<_>>()
            );
        }
    }
}
