//! ImageNet evaluation pre-processing, reproducing torchvision + Pillow.
//!
//! The published NAT/DiNAT checkpoints were evaluated with timm's transform
//! (`crop_pct = 0.875`), which on a PIL image is
//!
//! ```text
//! img.convert("RGB")
//! Resize(256, interpolation=BICUBIC)   # shorter side -> 256, Pillow bicubic
//! CenterCrop(224)
//! ToTensor()                           # uint8 -> f32 in [0, 1], HWC -> CHW
//! Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
//! ```
//!
//! This module does the same in Rust, step for step:
//!
//! * [`load_rgb`] decodes with the `image` crate and converts to 8-bit RGB the way
//!   Pillow's `convert("RGB")` does (grey replicated, alpha dropped — not
//!   composited —, 16-bit colour samples keep their high byte, 16-bit grey is
//!   clipped to 255 like Pillow's `I;16` mode);
//! * [`resize_bicubic`] is Pillow's `Image.resize(..., BICUBIC)` for 8-bit images:
//!   the `a = -0.5` cubic kernel with its support widened by the downscale factor
//!   (antialiasing), fixed-point coefficients with 22 fractional bits, and two
//!   separable passes with 8-bit rounding and clamping in between — horizontal
//!   first, except (as in Pillow 13) when the height shrinks by more than twice as
//!   many pixels as the width;
//! * [`Transform`] chooses the resized size and the crop offsets with torchvision's
//!   rounding (`int()` for the long side, Python's half-to-even `round()` for the
//!   offsets, zero padding when the crop is larger than the image) and normalises
//!   in `f32` in the same order of operations as torchvision.
//!
//! [`Transform::apply`] only resamples the pixels that survive the crop; since each
//! output pixel of Pillow's resampler depends on its own coefficients alone, the
//! result is identical to resizing the whole image and cropping afterwards.

use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use image::error::DecodingError;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

/// Largest number of pixels [`load_rgb`] decodes: Pillow's decompression-bomb
/// warning threshold (`Image.MAX_IMAGE_PIXELS`, 89 478 485 pixels).
pub const MAX_PIXELS: u64 = 89_478_485;

/// Fractional bits of Pillow's fixed-point filter coefficients for 8-bit images
/// (`PRECISION_BITS = 32 - 8 - 2` in `libImaging/Resample.c`).
const PRECISION_BITS: u32 = 22;

/// Rounding offset added to every fixed-point accumulator.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Errors from [`load_rgb`].
///
/// Every variant names the file. The underlying decoder error, where there is
/// one, is the [`std::error::Error::source`]; print the chain (e.g. `{:#}` with
/// `anyhow`) to see it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// The file could not be read: missing, a directory, no permission, ...
    #[error("cannot read image file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file's first bytes match no image format (it may be empty, or not an
    /// image at all).
    #[error(
        "{} is not an image in a supported format (png, jpeg, bmp, gif, webp, tiff)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The format was recognised, but this build cannot decode it, or not this
    /// variant of it (e.g. an unusual TIFF compression or a 12-bit JPEG).
    #[error("{} is a {format:?} image this build cannot decode", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The recognised format.
        format: ImageFormat,
        /// The decoder's error.
        #[source]
        source: ImageError,
    },
    /// The image data is corrupt or truncated.
    #[error("{} is a corrupt or truncated {format:?} image", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The recognised format.
        format: ImageFormat,
        /// The decoder's error.
        #[source]
        source: ImageError,
    },
    /// The image header announces more than [`MAX_PIXELS`] pixels, or a
    /// decoded buffer over the byte limit; nothing was decoded.
    #[error(
        "{} is {width}x{height} pixels ({} decoded), too large to decode (at most {max_pixels} pixels and {} decoded; na classify --max-image-mib raises the latter)",
        path.display(), crate::limits::human(u128::from(*bytes)), crate::limits::human(u128::from(*max_bytes))
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width from the image header.
        width: u32,
        /// Height from the image header.
        height: u32,
        /// The limit, [`MAX_PIXELS`].
        max_pixels: u64,
        /// The decoded size in bytes.
        bytes: u64,
        /// The limit on the decoded size in bytes.
        max_bytes: u64,
    },
    /// Decoding needed more memory than allowed although the pixel count
    /// is acceptable, e.g. because of abnormally large metadata.
    #[error("{} needs too much memory to decode as a {format:?} image", path.display())]
    MemoryLimit {
        /// The file.
        path: PathBuf,
        /// The recognised format.
        format: ImageFormat,
        /// The decoder's error.
        #[source]
        source: ImageError,
    },
    /// The image has a zero width or height.
    #[error("{} has no pixels ({width}x{height})", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Width from the image header.
        width: u32,
        /// Height from the image header.
        height: u32,
    },
}

/// Reads and decodes an image file into 8-bit RGB, like Pillow's
/// `Image.open(path).convert("RGB")`.
///
/// The format is recognised from the file's contents, not its extension. Alpha is
/// dropped, not composited; grey is replicated into the three channels; 16-bit
/// colour samples keep their high byte (`v >> 8`), and 16-bit grey is clipped to
/// 255 (Pillow opens it as mode `I;16`, whose RGB conversion clips). The EXIF
/// orientation is ignored, as it is by torchvision's loaders.
///
/// # Errors
///
/// A [`PreprocessError`] naming the file when it cannot be read, is not an image
/// in a supported format, is corrupt or truncated (including a JPEG without its
/// end-of-image marker, which the decoder alone would pad with grey), has more
/// than [`MAX_PIXELS`] pixels, or has no pixels.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, PreprocessError> {
    let path = path.as_ref();
    load_rgb_within(path, crate::limits::DEFAULT_MAX_IMAGE_BYTES)
}

/// [`load_rgb`] with a bound on the decoded image's bytes (the file itself is
/// bounded by [`crate::limits::MAX_IMAGE_FILE_BYTES`]).
pub fn load_rgb_within(
    path: impl AsRef<Path>,
    max_decode_bytes: u64,
) -> Result<RgbImage, PreprocessError> {
    let path = path.as_ref();
    let bytes =
        crate::limits::read_file(path, crate::limits::MAX_IMAGE_FILE_BYTES).map_err(|source| {
            PreprocessError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let mut reader = ImageReader::new(Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(|source| PreprocessError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let Some(format) = reader.format() else {
        return Err(PreprocessError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    let decode_error = |source: ImageError| match source {
        ImageError::Unsupported(_) => PreprocessError::Unsupported {
            path: path.to_path_buf(),
            format,
            source,
        },
        ImageError::Limits(_) => PreprocessError::MemoryLimit {
            path: path.to_path_buf(),
            format,
            source,
        },
        source => PreprocessError::Corrupt {
            path: path.to_path_buf(),
            format,
            source,
        },
    };

    let mut limits = Limits::default();
    // The decoder's own allocations, beyond the image buffer checked below.
    limits.max_alloc = Some(max_decode_bytes.saturating_mul(2));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::Empty {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS || decoder.total_bytes() > max_decode_bytes
    {
        return Err(PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max_pixels: MAX_PIXELS,
            bytes: decoder.total_bytes(),
            max_bytes: max_decode_bytes,
        });
    }
    let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    // The JPEG decoder fills a truncated scan with grey instead of failing; Pillow
    // refuses such files ("image file is truncated"), and so do we.
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(&bytes) {
        let reason = "no end-of-image marker after the scan data: the file is truncated";
        return Err(decode_error(ImageError::Decoding(DecodingError::new(
            format.into(),
            reason,
        ))));
    }
    Ok(to_rgb8_like_pillow(image))
}

/// Whether a JPEG stream has an end-of-image marker (`FF D9`) after its first
/// start-of-scan marker (`FF DA`). Inside entropy-coded data `FF` is always
/// followed by `00` or a restart marker, so the pair only appears as a marker.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Converts a decoded image to 8-bit RGB as Pillow's `convert("RGB")` would for
/// the mode Pillow opens the same file in.
fn to_rgb8_like_pillow(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let from_samples = |samples: Vec<u8>| {
        RgbImage::from_raw(w, h, samples).expect("three samples per pixel by construction")
    };
    match image {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageRgba8(img) => from_samples(
            img.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        DynamicImage::ImageLuma8(img) => {
            from_samples(img.as_raw().iter().flat_map(|&v| [v, v, v]).collect())
        }
        DynamicImage::ImageLumaA8(img) => from_samples(
            img.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0]])
                .collect(),
        ),
        // Pillow opens 16-bit grey as `I;16`; its RGB conversion clips, it does not rescale.
        DynamicImage::ImageLuma16(img) => from_samples(
            img.as_raw()
                .iter()
                .flat_map(|&v| {
                    let v = v.min(255) as u8;
                    [v, v, v]
                })
                .collect(),
        ),
        // Pillow unpacks 16-bit LA, RGB and RGBA samples to their high byte.
        DynamicImage::ImageLumaA16(img) => from_samples(
            img.as_raw()
                .chunks_exact(2)
                .flat_map(|p| {
                    let v = (p[0] >> 8) as u8;
                    [v, v, v]
                })
                .collect(),
        ),
        DynamicImage::ImageRgb16(img) => {
            from_samples(img.as_raw().iter().map(|&v| (v >> 8) as u8).collect())
        }
        DynamicImage::ImageRgba16(img) => from_samples(
            img.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        // Floating-point images (TIFF): no Pillow counterpart in RGB mode; use the
        // `image` crate's conversion (clamped to [0, 1], scaled and rounded).
        other => other.to_rgb8(),
    }
}

/// The evaluation transform: resize the shorter side, centre crop, scale to
/// [0, 1] and normalise per channel.
///
/// Equivalent to torchvision's
/// `Compose([Resize(resize, BICUBIC), CenterCrop(crop), ToTensor(), Normalize(mean, std)])`
/// on a PIL RGB image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Length the shorter side is resized to, keeping the aspect ratio
    /// (torchvision `Resize(int)`); 256 for the ImageNet checkpoints.
    pub resize: usize,
    /// Side of the square centre crop; 224 for the ImageNet checkpoints.
    pub crop: usize,
    /// Per-channel mean (R, G, B) subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) divided by after the mean.
    pub std: [f32; 3],
}

impl Transform {
    /// ImageNet channel means (R, G, B).
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet channel standard deviations (R, G, B).
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// The transform of the published NAT/DiNAT ImageNet checkpoints: resize to
    /// 256, crop 224, ImageNet mean and std.
    pub fn imagenet() -> Self {
        Self::from_crop_pct(224, 0.875)
    }

    /// A timm-style transform for input size `img_size` and crop fraction
    /// `crop_pct`: resize to `floor(img_size / crop_pct)`, crop `img_size`, with
    /// the ImageNet mean and std.
    ///
    /// # Panics
    ///
    /// If `crop_pct` is not in `(0, 1]`.
    pub fn from_crop_pct(img_size: usize, crop_pct: f64) -> Self {
        assert!(
            crop_pct > 0.0 && crop_pct <= 1.0,
            "crop_pct must be in (0, 1], got {crop_pct}"
        );
        Self {
            resize: (img_size as f64 / crop_pct).floor() as usize,
            crop: img_size,
            mean: Self::IMAGENET_MEAN,
            std: Self::IMAGENET_STD,
        }
    }

    /// Number of `f32`s [`apply`](Self::apply) produces: `3 * crop * crop`.
    pub fn output_len(&self) -> usize {
        3 * self.crop * self.crop
    }

    /// `(width, height)` of the resized image for an input of `width x height`,
    /// rounded as torchvision does: the shorter side becomes `resize`, the longer
    /// `int(resize * long / short)` (truncated); unchanged when already equal.
    ///
    /// # Panics
    ///
    /// If `width` or `height` is zero.
    pub fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        assert!(width > 0 && height > 0, "empty image ({width}x{height})");
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        // Python: int(size * long / short), a correctly rounded float division, truncated.
        let new_long = ((self.resize as f64 * long as f64) / short as f64) as usize;
        if width <= height {
            (self.resize, new_long)
        } else {
            (new_long, self.resize)
        }
    }

    /// Position of the crop's top-left corner in the resized image, per axis, as
    /// torchvision's `CenterCrop` places it: `round((size - crop) / 2)` with
    /// Python's half-to-even rounding, or minus the left/top zero padding
    /// `(crop - size) / 2` (floored) when the crop is larger than the image.
    pub fn crop_offset(&self, resized: usize) -> isize {
        crop_offset(resized, self.crop)
    }

    /// Applies the transform to an RGB image.
    ///
    /// Returns a `[3, crop, crop]` tensor (CHW, `f32`, row-major).
    ///
    /// # Panics
    ///
    /// If the image is empty or `resize` or `crop` is zero.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.output_len()];
        self.apply_into(img, &mut out);
        out
    }

    /// [`apply`](Self::apply) writing into `out`, a `[3, crop, crop]` buffer.
    ///
    /// # Panics
    ///
    /// If `out.len() != self.output_len()`, the image is empty, or `resize` or
    /// `crop` is zero.
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) {
        assert!(
            self.resize > 0 && self.crop > 0,
            "resize and crop must be > 0"
        );
        assert_eq!(
            out.len(),
            self.output_len(),
            "output buffer must hold 3 * crop * crop values"
        );
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (new_w, new_h) = self.resized_size(w, h);
        let (off_x, off_y) = (self.crop_offset(new_w), self.crop_offset(new_h));
        // The part of the resized image inside the crop window.
        let xs = clip_window(off_x, self.crop, new_w);
        let ys = clip_window(off_y, self.crop, new_h);
        let patch = resize_region(img, new_w, new_h, xs.clone(), ys.clone());
        let patch_w = xs.len();

        let crop = self.crop;
        for (c, plane) in out.chunks_exact_mut(crop * crop).enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            // ToTensor then Normalize, in f32: (v / 255 - mean) / std.
            let norm = |v: u8| (f32::from(v) / 255.0 - mean) / std;
            let pad = norm(0);
            for (y, row) in plane.chunks_exact_mut(crop).enumerate() {
                let ry = y as isize + off_y;
                if ry < ys.start as isize || ry >= ys.end as isize {
                    row.fill(pad);
                    continue;
                }
                let src = &patch[(ry as usize - ys.start) * patch_w * 3..][..patch_w * 3];
                for (x, o) in row.iter_mut().enumerate() {
                    let rx = x as isize + off_x;
                    *o = if rx < xs.start as isize || rx >= xs.end as isize {
                        pad
                    } else {
                        norm(src[(rx as usize - xs.start) * 3 + c])
                    };
                }
            }
        }
    }
}

impl Default for Transform {
    /// [`Transform::imagenet`].
    fn default() -> Self {
        Self::imagenet()
    }
}

/// torchvision's `CenterCrop` offset along one axis (see [`Transform::crop_offset`]).
fn crop_offset(size: usize, crop: usize) -> isize {
    if crop > size {
        -(((crop - size) / 2) as isize)
    } else {
        // round((size - crop) / 2.0), half to even.
        let d = size - crop;
        let half = d / 2;
        (if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        }) as isize
    }
}

/// Indices `[offset, offset + len)` intersected with `[0, size)`.
fn clip_window(offset: isize, len: usize, size: usize) -> Range<usize> {
    let start = offset.clamp(0, size as isize) as usize;
    let end = (offset + len as isize).clamp(0, size as isize) as usize;
    start..end.max(start)
}

/// Resizes `img` to exactly `width x height` with Pillow's bicubic filter,
/// like Pillow's `img.resize((width, height), Image.Resampling.BICUBIC)` on an
/// RGB image (see the [module documentation](self) for the algorithm).
///
/// # Panics
///
/// If `width`, `height` or a side of `img` is zero.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width as usize, height as usize);
    let samples = resize_region(img, w, h, 0..w, 0..h);
    RgbImage::from_raw(width, height, samples).expect("three samples per pixel by construction")
}

/// The pixels `[xs] x [ys]` of `img` resized to `out_w x out_h` with Pillow's
/// bicubic filter, as packed RGB rows (`[ys.len(), xs.len(), 3]`).
fn resize_region(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    xs: Range<usize>,
    ys: Range<usize>,
) -> Vec<u8> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    assert!(in_w > 0 && in_h > 0, "cannot resize an empty image");
    assert!(out_w > 0 && out_h > 0, "cannot resize to {out_w}x{out_h}");
    debug_assert!(xs.end <= out_w && ys.end <= out_h);
    if xs.is_empty() || ys.is_empty() {
        return Vec::new();
    }
    let src = View {
        data: img.as_raw(),
        stride: in_w,
        row0: 0,
        col0: 0,
    };
    let mut out = vec![0u8; ys.len() * xs.len() * 3];

    // Pillow skips a pass whose size does not change (it would be the identity).
    let horizontal = (out_w != in_w).then(|| AxisFilter::new(in_w, out_w, xs.clone()));
    let vertical = (out_h != in_h).then(|| AxisFilter::new(in_h, out_h, ys.clone()));
    match (horizontal, vertical) {
        (None, None) => {
            for (r, dst) in ys.zip(out.chunks_exact_mut(xs.len() * 3)) {
                dst.copy_from_slice(&src.data[(r * in_w + xs.start) * 3..(r * in_w + xs.end) * 3]);
            }
        }
        (Some(h), None) => horizontal_pass(&src, ys, &h, &mut out),
        (None, Some(v)) => vertical_pass(&src, xs, &v, &mut out),
        (Some(h), Some(v)) if !vertical_first(in_w, in_h, out_w, out_h) => {
            // Horizontal pass over the source rows the vertical pass reads:
            // (rows.len(), xs.len(), 3), rounded and clamped to u8.
            let rows = v.input_span();
            let mut tmp = vec![0u8; rows.len() * xs.len() * 3];
            horizontal_pass(&src, rows.clone(), &h, &mut tmp);
            let tmp = View {
                data: &tmp,
                stride: xs.len(),
                row0: rows.start,
                col0: xs.start,
            };
            vertical_pass(&tmp, xs, &v, &mut out);
        }
        (Some(h), Some(v)) => {
            // Vertical pass over the source columns the horizontal pass reads:
            // (ys.len(), cols.len(), 3), rounded and clamped to u8.
            let cols = h.input_span();
            let mut tmp = vec![0u8; ys.len() * cols.len() * 3];
            vertical_pass(&src, cols.clone(), &v, &mut tmp);
            let tmp = View {
                data: &tmp,
                stride: cols.len(),
                row0: ys.start,
                col0: cols.start,
            };
            horizontal_pass(&tmp, ys, &h, &mut out);
        }
    }
    out
}

/// Whether Pillow runs the vertical pass first: since Pillow 13, when the height
/// shrinks by more than twice as many pixels as the width does (Pillow 12 and
/// earlier always ran the horizontal pass first). The order matters by at most
/// one 8-bit step, through the rounding of the intermediate image.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let shrink_w = in_w as i64 - out_w as i64;
    let shrink_h = in_h as i64 - out_h as i64;
    shrink_h > 0 && shrink_h > 2 * shrink_w
}

/// A window of a packed RGB image: `data` holds rows of `stride` pixels, its
/// first row and column being row `row0` and column `col0` of the full image.
struct View<'a> {
    data: &'a [u8],
    stride: usize,
    row0: usize,
    col0: usize,
}

/// Pillow's bicubic kernel (`a = -0.5`), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's fixed-point accumulator to `u8`: shift out the fraction, clamp.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's resampling coefficients along one axis, for a range of outputs.
struct AxisFilter {
    /// Stride of `weights`: the most taps any output can have.
    ksize: usize,
    /// Per output: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `PRECISION_BITS` fractional bits: `[outputs, ksize]`.
    weights: Vec<i32>,
}

impl AxisFilter {
    /// Coefficients of the outputs `outputs` when resampling `in_size` samples to
    /// `out_size` (`precompute_coeffs` + `normalize_coeffs_8bpc` in Pillow's
    /// `Resample.c`, with the same double-precision arithmetic).
    fn new(in_size: usize, out_size: usize, outputs: Range<usize>) -> Self {
        // Pillow passes the source box as C floats: (0, in_size).
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(outputs.len());
        let mut weights = vec![0i32; outputs.len() * ksize];
        let mut k = vec![0f64; ksize];
        for (xx, w) in outputs.zip(weights.chunks_exact_mut(ksize)) {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate towards zero; negatives are clamped to 0 anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut ww = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                *kx = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *kx;
            }
            for (kx, wx) in k[..n].iter().zip(w.iter_mut()) {
                let kx = if ww != 0.0 { kx / ww } else { *kx };
                let fixed = kx * f64::from(1u32 << PRECISION_BITS);
                *wx = if kx < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    /// First input index and weights of the `i`-th output (relative to the range
    /// the filter was built for).
    #[inline(always)]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..n])
    }

    /// The input indices read by all outputs together.
    fn input_span(&self) -> Range<usize> {
        let start = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(start);
        start..end
    }
}

/// Horizontal pass over the rows `rows` of `src`; writes
/// `[rows.len(), f.bounds.len(), 3]` into `dst`.
fn horizontal_pass(src: &View<'_>, rows: Range<usize>, f: &AxisFilter, dst: &mut [u8]) {
    let out_w = f.bounds.len();
    for (r, dst_row) in rows.zip(dst.chunks_exact_mut(out_w * 3)) {
        let src_row = &src.data[(r - src.row0) * src.stride * 3..][..src.stride * 3];
        for (o, px) in dst_row.chunks_exact_mut(3).enumerate() {
            let (start, k) = f.taps(o);
            let start = start - src.col0;
            let (mut r0, mut g0, mut b0) = (HALF, HALF, HALF);
            for (s, &w) in src_row[start * 3..(start + k.len()) * 3]
                .chunks_exact(3)
                .zip(k)
            {
                r0 += i32::from(s[0]) * w;
                g0 += i32::from(s[1]) * w;
                b0 += i32::from(s[2]) * w;
            }
            px[0] = clip8(r0);
            px[1] = clip8(g0);
            px[2] = clip8(b0);
        }
    }
}

/// Vertical pass over the columns `cols` of `src`; writes
/// `[f.bounds.len(), cols.len(), 3]` into `dst`.
fn vertical_pass(src: &View<'_>, cols: Range<usize>, f: &AxisFilter, dst: &mut [u8]) {
    let row_len = cols.len() * 3;
    let col_off = (cols.start - src.col0) * 3;
    let mut acc = vec![0i32; row_len];
    for (o, dst_row) in dst.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = f.taps(o);
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let row = (start + t - src.row0) * src.stride * 3 + col_off;
            for (a, &s) in acc.iter_mut().zip(&src.data[row..row + row_len]) {
                *a += i32::from(s) * w;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_torchvision() {
        let t = Transform::imagenet();
        assert_eq!((t.resize, t.crop), (256, 224));
        assert_eq!(t.resized_size(300, 257), (298, 256));
        assert_eq!(t.resized_size(257, 300), (256, 298));
        assert_eq!(t.resized_size(500, 500), (256, 256));
        assert_eq!(t.resized_size(28, 28), (256, 256));
        assert_eq!(t.resized_size(1, 1000), (256, 256_000));
    }

    #[test]
    fn crop_offset_rounds_half_to_even() {
        assert_eq!(crop_offset(74, 56), 9);
        assert_eq!(crop_offset(75, 56), 10); // 9.5 -> 10
        assert_eq!(crop_offset(73, 56), 8); // 8.5 -> 8
        assert_eq!(crop_offset(56, 56), 0);
        assert_eq!(crop_offset(52, 56), -2); // padded 2 left, 2 right
        assert_eq!(crop_offset(45, 56), -5); // padded 5 top, 6 bottom
    }

    #[test]
    fn same_size_resize_is_identity() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        assert_eq!(resize_bicubic(&img, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 3, 128]));
        for (w, h) in [(5, 3), (100, 61), (37, 200), (1, 1)] {
            let out = resize_bicubic(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 3, 128]), "{w}x{h}");
        }
    }

    #[test]
    fn apply_matches_full_resize_then_crop() {
        let img = RgbImage::from_fn(61, 47, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8 * 4])
        });
        let t = Transform {
            resize: 40,
            crop: 33,
            ..Transform::imagenet()
        };
        let (nw, nh) = t.resized_size(61, 47);
        let full = resize_bicubic(&img, nw as u32, nh as u32);
        let (ox, oy) = (t.crop_offset(nw) as u32, t.crop_offset(nh) as u32);
        let out = t.apply(&img);
        for c in 0..3 {
            for y in 0..33 {
                for x in 0..33 {
                    let v = full.get_pixel(x + ox, y + oy).0[c];
                    let want = (f32::from(v) / 255.0 - t.mean[c]) / t.std[c];
                    assert_eq!(out[(c * 33 + y as usize) * 33 + x as usize], want);
                }
            }
        }
    }

    #[test]
    fn huge_aspect_ratio_only_resamples_the_crop() {
        // 1 x 5000 -> 64 x 320000 resized; only the 56 x 56 crop is computed.
        let img = RgbImage::from_fn(1, 5000, |_, y| image::Rgb([(y % 256) as u8, 0, 255]));
        let t = Transform {
            resize: 64,
            crop: 56,
            ..Transform::imagenet()
        };
        let out = t.apply(&img);
        assert_eq!(out.len(), 3 * 56 * 56);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

/// Whether [`to_fashion_mnist`] inverts the grey image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Polarity {
    /// Invert when the image's border is light (mean above 127): a dark
    /// object on a light background, as product photos are. No image of the
    /// Fashion-MNIST test set has a border mean above 93.
    #[default]
    Auto,
    /// Always invert.
    Invert,
    /// Never invert.
    Keep,
}

/// Side of Fashion-MNIST images.
pub const FASHION_SIDE: usize = 28;

/// Converts an image to a 28×28 grey Fashion-MNIST-like image (row-major
/// bytes, light object on a dark background), following the data set's
/// own recipe where it applies:
///
/// 1. grey from RGB with ITU-R 601 luma, `(299 R + 587 G + 114 B) / 1000`
///    rounded (Pillow's `convert("L")`), so grey images are unchanged;
/// 2. an image that is already 28×28 is only grey-converted (and inverted
///    when `polarity` says so); otherwise
/// 3. edges whose pixels are all within 13 grey levels (5 %) of the
///    corners' mean are trimmed, the longest side is resized to 28 with a
///    triangle (bilinear, antialiased) filter, and the short side is
///    centred on a canvas of the corners' grey;
/// 4. the result is inverted when the border is light ([`Polarity::Auto`]).
pub fn to_fashion_mnist(img: &RgbImage, polarity: Polarity) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey: Vec<u8> = img
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            ((299 * r + 587 * g + 114 * b + 500) / 1000) as u8
        })
        .collect();
    let s = FASHION_SIDE;
    let mut out = if (w, h) == (s, s) {
        grey
    } else {
        fit_28(&grey, w, h)
    };
    let border: u32 = (0..s)
        .flat_map(|i| [out[i], out[(s - 1) * s + i], out[i * s], out[i * s + s - 1]])
        .map(u32::from)
        .sum();
    let light = border > 127 * 4 * s as u32;
    let invert = match polarity {
        Polarity::Auto => light,
        Polarity::Invert => true,
        Polarity::Keep => false,
    };
    if invert {
        out.iter_mut().for_each(|v| *v = 255 - *v);
    }
    out
}

/// Trim, resize the longest side to 28 and centre (steps 3 of
/// [`to_fashion_mnist`]).
fn fit_28(grey: &[u8], w: usize, h: usize) -> Vec<u8> {
    let s = FASHION_SIDE;
    let at = |x: usize, y: usize| grey[y * w + x];
    let bg = ((u32::from(at(0, 0))
        + u32::from(at(w - 1, 0))
        + u32::from(at(0, h - 1))
        + u32::from(at(w - 1, h - 1))
        + 2)
        / 4) as u8;
    let near = |v: u8| v.abs_diff(bg) <= 13;
    let row_bg = |y: usize| (0..w).all(|x| near(at(x, y)));
    let col_bg = |x: usize, y0: usize, y1: usize| (y0..y1).all(|y| near(at(x, y)));
    let (mut y0, mut y1) = (0, h);
    while y0 < y1 && row_bg(y0) {
        y0 += 1;
    }
    while y1 > y0 && row_bg(y1 - 1) {
        y1 -= 1;
    }
    let (mut x0, mut x1) = (0, w);
    if y0 < y1 {
        while x0 < x1 && col_bg(x0, y0, y1) {
            x0 += 1;
        }
        while x1 > x0 && col_bg(x1 - 1, y0, y1) {
            x1 -= 1;
        }
    }
    if y0 >= y1 || x0 >= x1 {
        // Nothing but background: keep the whole image.
        (x0, x1, y0, y1) = (0, w, 0, h);
    }
    let (cw, ch) = (x1 - x0, y1 - y0);
    let mut crop = image::GrayImage::new(cw as u32, ch as u32);
    for y in 0..ch {
        for x in 0..cw {
            crop.put_pixel(x as u32, y as u32, image::Luma([at(x0 + x, y0 + y)]));
        }
    }
    let scale = s as f64 / cw.max(ch) as f64;
    let nw = ((cw as f64 * scale).round() as usize).clamp(1, s);
    let nh = ((ch as f64 * scale).round() as usize).clamp(1, s);
    let small = image::imageops::resize(
        &crop,
        nw as u32,
        nh as u32,
        image::imageops::FilterType::Triangle,
    );
    let mut out = vec![bg; s * s];
    let (ox, oy) = ((s - nw) / 2, (s - nh) / 2);
    for y in 0..nh {
        for x in 0..nw {
            out[(oy + y) * s + ox + x] = small.get_pixel(x as u32, y as u32).0[0];
        }
    }
    out
}
