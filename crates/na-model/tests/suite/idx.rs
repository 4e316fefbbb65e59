//! The IDX reader on small hand-made files (good, truncated, bad magic,
//! mismatched counts, hostile sizes, gzip) and, when Debian's
//! `dataset-fashion-mnist` package is installed, on the real data.

use std::path::{Path, PathBuf};
use std::process::Command;

use na_model::train::idx::{
    find_fashion_mnist, read_idx, DataError, Dataset, DEBIAN_FASHION_MNIST_DIR, FILE_NAMES,
};

/// A fresh folder under the system's temporary directory.
fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("na-idx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An IDX file of unsigned bytes: magic, big-endian sizes, body.
fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Three 2×3 images and their labels.
fn small_set(dir: &Path) -> (PathBuf, PathBuf) {
    let px: Vec<u8> = (0..18).collect();
    (
        write(dir, "img", &idx_bytes(&[3, 2, 3], &px)),
        write(dir, "lbl", &idx_bytes(&[3], &[7, 0, 9])),
    )
}

#[test]
fn reads_a_good_pair() {
    let d = scratch_dir("good");
    let (i, l) = small_set(&d);
    let ds = Dataset::load(&i, &l).unwrap();
    assert_eq!((ds.len(), ds.rows, ds.cols), (3, 2, 3));
    assert_eq!(ds.labels, [7, 0, 9]);
    assert_eq!(ds.image(1), &[6, 7, 8, 9, 10, 11]);
    let (body, dims) = read_idx(&i, 3).unwrap();
    assert_eq!((body.len(), dims), (18, vec![3, 2, 3]));
}

#[test]
fn refuses_truncated_and_padded_files() {
    let d = scratch_dir("trunc");
    let full = idx_bytes(&[3, 2, 3], &[1; 18]);
    for cut in [0, 2, 3, 7, 15, 16, 33] {
        let p = write(&d, "img", &full[..cut]);
        let e = read_idx(&p, 3).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(e.to_string().contains("img"), "names the file: {e}");
    }
    let mut long = full.clone();
    long.push(0);
    let p = write(&d, "img", &long);
    let e = read_idx(&p, 3).unwrap_err();
    assert!(
        matches!(e, DataError::TrailingBytes { extra: 1, .. }),
        "{e}"
    );
}

#[test]
fn refuses_a_bad_magic() {
    let d = scratch_dir("magic");
    for magic in [[0, 0, 8, 1], [0, 0, 9, 3], [1, 0, 8, 3], [b'P', b'K', 3, 4]] {
        let mut v = idx_bytes(&[3, 2, 3], &[1; 18]);
        v[..4].copy_from_slice(&magic);
        let p = write(&d, "img", &v);
        let e = read_idx(&p, 3).unwrap_err();
        assert!(matches!(e, DataError::BadMagic { .. }), "{magic:?}: {e}");
        assert!(e.to_string().contains("magic"), "{e}");
    }
    // Images given as labels and the other way round.
    let (i, l) = small_set(&d);
    assert!(matches!(
        Dataset::load(&l, &i),
        Err(DataError::BadMagic { .. })
    ));
}

#[test]
fn refuses_mismatched_counts_and_bad_labels() {
    let d = scratch_dir("counts");
    let (i, _) = small_set(&d);
    let l = write(&d, "lbl2", &idx_bytes(&[2], &[1, 2]));
    let e = Dataset::load(&i, &l).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("3 images") && e.to_string().contains("2 labels"));
    let l = write(&d, "lbl3", &idx_bytes(&[3], &[1, 10, 2]));
    let e = Dataset::load(&i, &l).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadLabel {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn refuses_hostile_sizes_without_allocating() {
    let d = scratch_dir("hostile");
    // Sizes whose product is 2^96 (overflow), 2^64-ish, 0, or a few GB
    // against a tiny file: all refused from the header and the file length.
    let cases: [&[u32]; 5] = [
        &[u32::MAX, u32::MAX, u32::MAX],
        &[1 << 31, 1 << 16, 2],
        &[0, 28, 28],
        &[3, 0, 3],
        &[1_000_000, 28, 28],
    ];
    for dims in cases {
        let p = write(&d, "img", &idx_bytes(dims, &[0; 18]));
        let e = read_idx(&p, 3).unwrap_err();
        assert!(
            matches!(e, DataError::BadDims { .. } | DataError::Truncated { .. }),
            "{dims:?}: {e}"
        );
    }
    // Sides above MAX_SIDE are refused even when the file is consistent.
    let p = write(&d, "img", &idx_bytes(&[1, 1, 5000], &[0; 5000]));
    let l = write(&d, "lbl", &idx_bytes(&[1], &[0]));
    assert!(matches!(
        Dataset::load(&p, &l),
        Err(DataError::BadDims { .. })
    ));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

#[test]
fn reads_gzip_and_refuses_damaged_streams() {
    let d = scratch_dir("gz");
    let px: Vec<u8> = (0..18).collect();
    let good = idx_bytes(&[3, 2, 3], &px);
    let p = write(&d, "img.gz", &gzip(&good));
    let (data, dims) = read_idx(&p, 3).unwrap();
    assert_eq!((data, dims), (px.clone(), vec![3, 2, 3]));
    // Truncated content inside a valid stream.
    let p = write(&d, "short.gz", &gzip(&good[..good.len() - 1]));
    assert!(matches!(read_idx(&p, 3), Err(DataError::Truncated { .. })));
    // Trailing content.
    let mut long = good.clone();
    long.extend_from_slice(&[1, 2, 3]);
    let p = write(&d, "long.gz", &gzip(&long));
    assert!(matches!(
        read_idx(&p, 3),
        Err(DataError::TrailingBytes { extra: 3, .. })
    ));
    // A cut stream and a corrupted one.
    let z = gzip(&good);
    let p = write(&d, "cut.gz", &z[..z.len() / 2]);
    assert!(read_idx(&p, 3).is_err());
    let mut bad = z.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff; // the CRC
    let p = write(&d, "crc.gz", &bad);
    let e = read_idx(&p, 3).unwrap_err();
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    // A hostile header: sizes far beyond the gzip bound, nothing allocated.
    let p = write(&d, "huge.gz", &gzip(&idx_bytes(&[65535, 4096, 4096], &[])));
    assert!(matches!(read_idx(&p, 3), Err(DataError::BadDims { .. })));
    // Only the gzip magic.
    let p = write(&d, "magic.gz", &[0x1f, 0x8b]);
    assert!(read_idx(&p, 3).is_err());
}

#[test]
fn finds_gzip_files_and_reports_a_missing_data_set() {
    let d = scratch_dir("findgz");
    let px: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 251) as u8).collect();
    write(
        &d,
        &format!("{}.gz", FILE_NAMES[0]),
        &gzip(&idx_bytes(&[2, 28, 28], &px)),
    );
    write(
        &d,
        &format!("{}.gz", FILE_NAMES[1]),
        &gzip(&idx_bytes(&[2], &[3, 4])),
    );
    write(&d, FILE_NAMES[2], &idx_bytes(&[1, 28, 28], &px[..784]));
    write(
        &d,
        &format!("{}.gz", FILE_NAMES[3]),
        &gzip(&idx_bytes(&[1], &[5])),
    );
    let (train, test) = find_fashion_mnist(Some(&d)).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.labels.clone()),
        (2, 1, vec![3, 4])
    );
    assert_eq!(train.images, px);
    // An empty folder.
    let e = find_fashion_mnist(Some(&scratch_dir("empty"))).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("apt-get install dataset-fashion-mnist"),
        "{e}"
    );
}

#[test]
fn finds_a_folder_of_idx_files() {
    let d = scratch_dir("find");
    let px: Vec<u8> = (0..4 * 28 * 28).map(|i| i as u8).collect();
    write(&d, FILE_NAMES[0], &idx_bytes(&[4, 28, 28], &px));
    write(&d, FILE_NAMES[1], &idx_bytes(&[4], &[0, 1, 2, 3]));
    write(&d, FILE_NAMES[2], &idx_bytes(&[1, 28, 28], &px[..784]));
    write(&d, FILE_NAMES[3], &idx_bytes(&[1], &[9]));
    let (train, test) = find_fashion_mnist(Some(&d)).unwrap();
    assert_eq!((train.len(), test.len(), test.labels[0]), (4, 1, 9));
}

/// The real (gzip) files of Debian's package, read in place, and the same
/// files decompressed by the system's `gzip` give the same data.
#[test]
fn loads_the_debian_package_when_installed() {
    let src = Path::new(DEBIAN_FASHION_MNIST_DIR);
    let gz: Vec<PathBuf> = FILE_NAMES
        .iter()
        .map(|n| src.join(format!("{n}.gz")))
        .collect();
    if !gz.iter().all(|p| p.is_file()) {
        eprintln!("skipped: dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST_DIR})");
        return;
    }
    let (train, test) = find_fashion_mnist(None).unwrap();
    assert_eq!((train.len(), train.rows, train.cols), (60000, 28, 28));
    assert_eq!((test.len(), test.rows, test.cols), (10000, 28, 28));
    // Balanced classes: 6000 and 1000 of each.
    for (set, per) in [(&train, 6000), (&test, 1000)] {
        let mut hist = [0usize; 10];
        for &l in &set.labels {
            hist[l as usize] += 1;
        }
        assert_eq!(hist, [per; 10]);
    }
    let d = scratch_dir("debian");
    for (n, g) in FILE_NAMES.iter().zip(&gz).skip(2) {
        let out = match Command::new("gzip").arg("-dc").arg(g).output() {
            Ok(o) if o.status.success() => o.stdout,
            _ => {
                eprintln!(
                    "no working `gzip` to compare with; {} unchecked",
                    g.display()
                );
                return;
            }
        };
        write(&d, n, &out);
    }
    let plain = Dataset::load(d.join(FILE_NAMES[2]), d.join(FILE_NAMES[3])).unwrap();
    assert_eq!(plain, test);
    let _ = std::fs::remove_dir_all(&d);
}
