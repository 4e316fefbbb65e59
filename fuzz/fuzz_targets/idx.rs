//! The IDX (MNIST) reader, `na_model::train::idx::parse_idx_bytes`, on
//! arbitrary bytes, plain or gzip: never a panic, and an accepted file's
//! elements match its sizes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use na_model::train::idx::{parse_idx_bytes, MAX_GZ_BODY};

fuzz_target!(|data: &[u8]| {
    // The rank asked for comes from the file's own magic when it has one
    // (so that valid files are reached), else 1 or 3.
    let rank = match data {
        [0, 0, 8, r, ..] => *r,
        [b, ..] if b & 1 == 1 => 3,
        _ => 1,
    };
    let Ok((body, dims)) = parse_idx_bytes(data, Path::new("fuzz.idx"), rank) else {
        return;
    };
    assert_eq!(dims.len(), usize::from(rank));
    assert!(dims.iter().all(|&d| d >= 1), "sizes are positive: {dims:?}");
    let n = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .expect("accepted sizes do not overflow");
    assert_eq!(body.len() as u64, n, "elements match the sizes");
    assert!(n <= MAX_GZ_BODY);
    if !data.starts_with(&[0x1f, 0x8b]) {
        assert_eq!(
            4 + 4 * rank as u64 + n,
            data.len() as u64,
            "plain: exactly header + body"
        );
    }
});
