//! The PyTorch checkpoint reader (`na_model::pth::read_pth_bytes` and
//! `WeightMap::from_pth`) on arbitrary input: never a panic, and every
//! tensor it returns is consistent.
//!
//! Two input forms, so that both the zip layer and the unpickler are reached:
//! - input starting with `PK`: a whole archive, as on disk;
//! - anything else: `[u32 LE pickle length][data.pkl][storages]`, where
//!   storages are `(key: u8, len: u16 LE, bytes)` records; the harness wraps
//!   them in a valid stored zip (`archive/data.pkl`, `archive/data/<key>`),
//!   so mutations of the pickle are not hidden behind CRC errors.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use na_model::pth::read_pth_bytes;
use na_model::WeightMap;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

fn wrap(data: &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    let (pkl, mut storages) = rest.split_at(len.min(rest.len()));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).ok()?;
    w.write_all(pkl).ok()?;
    w.start_file("archive/byteorder", opts).ok()?;
    w.write_all(b"little").ok()?;
    let mut seen = [false; 256];
    while let [key, a, b, more @ ..] = storages {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(more.len());
        let (bytes, next) = more.split_at(n);
        storages = next;
        if std::mem::replace(&mut seen[usize::from(*key)], true) {
            continue;
        }
        w.start_file(format!("archive/data/{key}"), opts).ok()?;
        w.write_all(bytes).ok()?;
    }
    Some(w.finish().ok()?.into_inner())
}

fn check(archive: &[u8]) {
    let Ok(tensors) = read_pth_bytes(archive) else {
        let _ = WeightMap::from_pth(archive);
        return;
    };
    for t in &tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("an accepted shape's product fits");
        assert_eq!(t.numel(), n, "{}: numel is the shape's product", t.name);
        if t.dtype.is_float() {
            let v = t.to_f32().expect("a float tensor converts");
            assert_eq!(v.len(), n);
        } else {
            assert!(t.to_f32().is_err(), "{}: {} is not float", t.name, t.dtype);
        }
        assert_eq!(
            t.data.len(),
            n * t.dtype.size(),
            "{}: bytes match the shape",
            t.name
        );
    }
    let map = WeightMap::from_pth(archive).expect("what read_pth_bytes reads, from_pth reads");
    assert!(map.len() <= tensors.len());
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        check(data);
    } else if let Some(archive) = wrap(data) {
        check(&archive);
    }
});
