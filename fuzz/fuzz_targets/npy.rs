//! `na_core::npy::parse_npy` on arbitrary bytes: never a panic, never an
//! allocation beyond the input's warrant, and every accepted file is
//! consistent and survives a write/read round trip bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use na_core::npy::{encode_npy_f32, parse_npy, NpyDtype};

/// The element cap passed to the parser (small, so that the cap itself is
/// exercised; the default is 2^31).
const MAX_ELEMENTS: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(a) = parse_npy(data, MAX_ELEMENTS) else {
        return;
    };
    let n = a
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .expect("an accepted shape's product fits in usize");
    assert_eq!(a.data.len(), n, "data length is the shape's product");
    assert!(n <= MAX_ELEMENTS, "the element cap holds");
    // The data section of an accepted file is exactly the declared size.
    let item = a.dtype.item_size();
    assert!(
        n * item <= data.len(),
        "{n} items of {item} bytes from {} bytes",
        data.len()
    );
    // Re-encoded as f32 and parsed again: the same shape and bits.
    let bytes = encode_npy_f32(&a.shape, &a.data).expect("an accepted array re-encodes");
    let b = parse_npy(&bytes, MAX_ELEMENTS).expect("what we write, we read");
    assert_eq!(b.shape, a.shape);
    assert_eq!(b.dtype, NpyDtype::F32);
    assert!(
        a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "round trip changed values"
    );
});
