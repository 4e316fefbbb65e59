//! Cross-implementation tests of `na_model::preprocess` against Pillow and
//! torchvision (fixtures and their generator in `tests/fixtures/preprocess/`).
//!
//! Run with `--nocapture` to see the agreement statistics.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use na_model::preprocess::{load_rgb, resize_bicubic, PreprocessError, Transform, MAX_PIXELS};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

/// A C-order `.npy` array: shape and little-endian data (`|u1` or `<f4` only).
struct Npy {
    shape: Vec<usize>,
    descr: String,
    data: Vec<u8>,
}

impl Npy {
    fn read(path: &Path) -> Npy {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert_eq!(
            &bytes[..6],
            b"\x93NUMPY",
            "{}: not an .npy file",
            path.display()
        );
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            _ => (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            ),
        };
        let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
        let field = |key: &str| {
            let at = header
                .find(key)
                .unwrap_or_else(|| panic!("{key} in {header}"))
                + key.len();
            header[at..].trim_start_matches([':', ' ', '\'', '"'])
        };
        let descr = field("'descr'").split('\'').next().unwrap().to_owned();
        assert!(
            field("'fortran_order'").starts_with("False"),
            "{}: Fortran order",
            path.display()
        );
        let shape_text = field("'shape'");
        let shape = shape_text[1..shape_text.find(')').unwrap()]
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        Npy {
            shape,
            descr,
            data: bytes[start + header_len..].to_vec(),
        }
    }

    fn u8(&self) -> &[u8] {
        assert_eq!(self.descr, "|u1");
        &self.data
    }

    fn f32(&self) -> Vec<f32> {
        assert_eq!(self.descr, "<f4");
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// An `[H, W, 3]` uint8 array as an image.
    fn rgb_image(&self) -> RgbImage {
        assert_eq!(self.shape.len(), 3);
        assert_eq!(self.shape[2], 3);
        RgbImage::from_raw(
            self.shape[1] as u32,
            self.shape[0] as u32,
            self.u8().to_vec(),
        )
        .unwrap()
    }
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Counts of compared and differing samples, and the largest difference.
#[derive(Default, Debug)]
struct Agreement {
    samples: usize,
    differing: usize,
    max_diff: u8,
}

impl Agreement {
    fn add(&mut self, ours: &[u8], theirs: &[u8]) {
        assert_eq!(ours.len(), theirs.len());
        for (&a, &b) in ours.iter().zip(theirs) {
            let d = a.abs_diff(b);
            self.samples += 1;
            self.differing += usize::from(d != 0);
            self.max_diff = self.max_diff.max(d);
        }
    }
}

/// Largest |ours - theirs| in units of one 8-bit step after normalisation
/// (`1 / 255 / std`), and the number of values further apart than float rounding.
fn tensor_diff(ours: &[f32], theirs: &[f32], t: &Transform) -> (f32, usize) {
    assert_eq!(ours.len(), theirs.len());
    let plane = t.crop * t.crop;
    let mut worst = 0f32;
    let mut differing = 0;
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        let step = 1.0 / 255.0 / t.std[i / plane];
        let d = (a - b).abs();
        worst = worst.max(d / step);
        differing += usize::from(d > 1e-5);
    }
    (worst, differing)
}

fn reduced(resize: usize, crop: usize) -> Transform {
    Transform {
        resize,
        crop,
        ..Transform::imagenet()
    }
}

#[test]
fn resize_matches_pillow() {
    let mut total = Agreement::default();
    for case in cases() {
        let name = case["case"].as_str().unwrap();
        let src = case["source"].as_str().unwrap();
        let (w, h) = match case["kind"].as_str().unwrap() {
            "resize" => (case["size_wh"][0].as_u64(), case["size_wh"][1].as_u64()),
            _ if case["has_resized"].as_bool().unwrap() => (
                case["resized_wh"][0].as_u64(),
                case["resized_wh"][1].as_u64(),
            ),
            _ => continue,
        };
        let (w, h) = (w.unwrap() as u32, h.unwrap() as u32);
        // Resample Pillow's own decoded pixels for the JPEG (decoders differ).
        let img = if src.ends_with(".jpg") {
            Npy::read(&fixtures().join("photo_200x150.decoded.npy")).rgb_image()
        } else {
            load_rgb(fixtures().join(src)).unwrap()
        };
        let want = Npy::read(&fixtures().join(format!("{name}.resized.npy")));
        assert_eq!(want.shape, [h as usize, w as usize, 3], "{name}");
        let ours = resize_bicubic(&img, w, h);
        let mut a = Agreement::default();
        a.add(ours.as_raw(), want.u8());
        eprintln!(
            "{name:28} {w:3}x{h:<3} differing {}/{} max {}",
            a.differing, a.samples, a.max_diff
        );
        assert!(a.max_diff <= 1, "{name}: {a:?}");
        total.samples += a.samples;
        total.differing += a.differing;
        total.max_diff = total.max_diff.max(a.max_diff);
    }
    eprintln!(
        "resize vs Pillow: {} of {} samples differ ({:.4}%), max |diff| {}",
        total.differing,
        total.samples,
        100.0 * total.differing as f64 / total.samples as f64,
        total.max_diff
    );
    // The resampler is Pillow's integer arithmetic: agreement is exact in practice.
    assert_eq!(total.differing, 0, "{total:?}");
}

#[test]
fn transform_matches_torchvision() {
    for case in cases() {
        if case["kind"] != "transform" {
            continue;
        }
        let name = case["case"].as_str().unwrap();
        let src = case["source"].as_str().unwrap();
        let t = reduced(
            case["resize"].as_u64().unwrap() as usize,
            case["crop"].as_u64().unwrap() as usize,
        );
        let want = Npy::read(&fixtures().join(format!("{name}.tensor.npy")));
        assert_eq!(want.shape, [3, t.crop, t.crop], "{name}");
        let want = want.f32();

        let img = if src.ends_with(".jpg") {
            Npy::read(&fixtures().join("photo_200x150.decoded.npy")).rgb_image()
        } else {
            load_rgb(fixtures().join(src)).unwrap()
        };
        let rw = case["resized_wh"][0].as_u64().unwrap() as usize;
        let rh = case["resized_wh"][1].as_u64().unwrap() as usize;
        assert_eq!(
            t.resized_size(img.width() as usize, img.height() as usize),
            (rw, rh),
            "{name}"
        );
        let ours = t.apply(&img);
        let (worst, differing) = tensor_diff(&ours, &want, &t);
        eprintln!(
            "{name:28} max |diff| {worst:.4} steps, {differing}/{} values differ",
            ours.len()
        );
        assert!(worst <= 1.0 + 1e-3, "{name}: {worst} steps");
        assert_eq!(differing, 0, "{name}");
    }
}

#[test]
fn imagenet_transform_full_size() {
    let t = Transform::imagenet();
    assert_eq!(t, reduced(256, 224));
    assert_eq!(t.output_len(), 3 * 224 * 224);
    let img = load_rgb(fixtures().join("rgb_300x257.png")).unwrap();
    let want = Npy::read(&fixtures().join("rgb_300x257_imagenet.tensor.npy"));
    assert_eq!(want.shape, [3, 224, 224]);
    let mut ours = vec![f32::NAN; t.output_len()];
    t.apply_into(&img, &mut ours);
    let (worst, differing) = tensor_diff(&ours, &want.f32(), &t);
    eprintln!("imagenet 256/224: max |diff| {worst:.4} steps, {differing} values differ");
    assert!(worst <= 1.0 + 1e-3);
    assert_eq!(differing, 0);
}

#[test]
fn pixel_formats_convert_like_pillow() {
    // The decoded RGB pixels before resizing: check sizes and a few exact rules.
    for (file, w, h) in [
        ("grey_97x131.png", 97, 131),
        ("la_61x90.png", 61, 90),
        ("rgba_150x131.png", 150, 131),
        ("palette_50x40.png", 50, 40),
        ("grey16_70x50.png", 70, 50),
        ("rgb16_45x80.png", 45, 80),
    ] {
        let img = load_rgb(fixtures().join(file)).unwrap();
        assert_eq!(img.dimensions(), (w, h), "{file}");
        if file.starts_with("grey") || file.starts_with("la") {
            assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "{file}");
        }
    }
    // Pillow's "I;16" -> "RGB" clips at 255 instead of rescaling: the fixture's
    // values go up to 1020, so many pixels are exactly 255.
    let g16 = load_rgb(fixtures().join("grey16_70x50.png")).unwrap();
    assert!(g16.pixels().filter(|p| p[0] == 255).count() > 100);
}

#[test]
fn jpeg_decoding_is_close_to_pillow() {
    let path = fixtures().join("photo_200x150.jpg");
    let ours = load_rgb(&path).unwrap();
    let pillow = Npy::read(&fixtures().join("photo_200x150.decoded.npy")).rgb_image();
    assert_eq!(ours.dimensions(), pillow.dimensions());
    let mut a = Agreement::default();
    a.add(ours.as_raw(), pillow.as_raw());
    let mean: f64 = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(&x, &y)| f64::from(x.abs_diff(y)))
        .sum::<f64>()
        / a.samples as f64;
    let over_2 = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .filter(|(&x, &y)| x.abs_diff(y) > 2)
        .count();
    eprintln!(
        "jpeg decode vs Pillow (libjpeg-turbo): {}/{} samples differ, {over_2} by more than 2, \
         max {}, mean {mean:.3}",
        a.differing, a.samples, a.max_diff
    );
    // Different IDCT and chroma upsampling (zune-jpeg vs libjpeg-turbo): small
    // differences, largest at sharp colour edges.
    assert!(a.max_diff <= 16 && mean < 1.0, "{a:?} mean {mean}");
    assert!(
        over_2 * 100 < a.samples,
        "{over_2} samples differ by more than 2"
    );

    // End to end from the file: within the decoders' difference.
    let t = reduced(64, 56);
    let want = Npy::read(&fixtures().join("photo_200x150_r64c56.tensor.npy")).f32();
    let (worst, differing) = tensor_diff(&t.apply(&ours), &want, &t);
    eprintln!("jpeg end to end: max |diff| {worst:.2} steps, {differing} values differ");
    assert!(worst <= f32::from(a.max_diff) + 1.0);
}

fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preprocess");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn invalid_files_are_typed_errors() {
    let err = load_rgb(fixtures().join("not_an_image.png")).unwrap_err();
    assert!(
        matches!(err, PreprocessError::UnknownFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not_an_image.png"), "{err}");

    let err = load_rgb(fixtures().join("huge_dims.png")).unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::TooLarge {
                width: 100_000,
                height: 100_000,
                max_pixels: MAX_PIXELS,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("huge_dims.png"), "{err}");

    let err = load_rgb(fixtures().join("no_such_file.png")).unwrap_err();
    assert!(matches!(err, PreprocessError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_file.png"), "{err}");
    let err = load_rgb(fixtures()).unwrap_err();
    assert!(matches!(err, PreprocessError::Io { .. }), "{err:?}");

    let err = load_rgb(tmp_file("empty.png", b"")).unwrap_err();
    assert!(
        matches!(err, PreprocessError::UnknownFormat { .. }),
        "{err:?}"
    );

    // A PNG signature followed by garbage.
    let err = load_rgb(tmp_file("garbage.png", b"\x89PNG\r\n\x1a\nnot really")).unwrap_err();
    assert!(matches!(err, PreprocessError::Corrupt { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn truncated_files_are_typed_errors() {
    for file in [
        "rgb_300x257.png",
        "grey16_70x50.png",
        "palette_50x40.png",
        "photo_200x150.jpg",
    ] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        for keep in [8, 20, 33, 100, bytes.len() / 2, bytes.len() - 20] {
            let path = tmp_file(&format!("trunc_{keep}_{file}"), &bytes[..keep]);
            match load_rgb(&path) {
                Err(PreprocessError::Corrupt { .. }) => {}
                other => panic!("{file} truncated to {keep} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn corrupted_files_never_panic() {
    // Deterministic byte flips in every fixture image; any result but a panic is fine.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut errors) = (0, 0);
    for file in [
        "rgb_40x23.png",
        "palette_50x40.png",
        "grey16_70x50.png",
        "photo_200x150.jpg",
    ] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        for round in 0..40 {
            let mut b = bytes.clone();
            for _ in 0..1 + round % 4 {
                let i = (next() as usize) % b.len().min(4096);
                b[i] ^= 1 << (next() % 8);
            }
            match load_rgb(tmp_file(&format!("flip_{round}_{file}"), &b)) {
                Ok(img) => {
                    ok += 1;
                    let _ = Transform::imagenet().apply(&img);
                }
                Err(_) => errors += 1,
            }
        }
    }
    eprintln!("byte flips: {ok} decoded, {errors} typed errors");
}

#[test]
fn throughput() {
    // Informational (no assertion: the machine may be busy).
    let img = load_rgb(fixtures().join("rgb_300x257.png")).unwrap();
    let t = Transform::imagenet();
    let mut out = vec![0.0; t.output_len()];
    let n = 50;
    let start = Instant::now();
    for _ in 0..n {
        t.apply_into(&img, &mut out);
    }
    let per = start.elapsed() / n;
    eprintln!("300x257 -> 256 -> 224 crop: {per:?} per image");

    let small = RgbImage::from_fn(28, 28, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 77]));
    let t = reduced(32, 28);
    let mut out = vec![0.0; t.output_len()];
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        t.apply_into(&small, &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "28x28 -> 32 -> 28 crop: {:.0} images/s",
        f64::from(n) / secs
    );
}
