//! A strict reader of the IDX files of MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic `00 00 TT NN` (`TT` the element type, `0x08`
//! for unsigned bytes, the only one these data sets use; `NN` the number of
//! dimensions), `NN` big-endian `u32` sizes, then the elements in row-major
//! order. Images are 3-d (`[count, rows, cols]`), labels 1-d (`[count]`).
//!
//! Everything is checked before anything large is allocated: the header is
//! read first, the size it announces is computed with overflow checks and
//! compared with the file's length, and only then is the body read. A
//! hostile or damaged file gives a [`DataError`] naming the file and the
//! problem, never a panic or a huge allocation.
//!
//! Gzip-compressed files (any file starting with the gzip magic `1f 8b`, as
//! the Debian package ships them) are decompressed on the fly with `flate2`;
//! their body is bounded by [`MAX_GZ_BODY`] and a damaged stream is a
//! [`DataError::Gzip`]. [`find_fashion_mnist`] takes either form of each file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The folder where Debian's `dataset-fashion-mnist` package installs the
/// data set.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Number of classes of (Fashion-)MNIST; labels must be below it.
pub const NUM_CLASSES: usize = 10;

/// The largest image side accepted (a sanity bound on hostile headers).
pub const MAX_SIDE: usize = 1 << 12;

/// File names of the four standard files: training images and labels, test
/// images and labels (uncompressed form).
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The largest decompressed body accepted from a gzip file (1 GiB): a
/// compressed file's length says nothing about its content, so this bounds
/// what a hostile header can make us allocate.
pub const MAX_GZ_BODY: u64 = 1 << 30;

/// The IDX type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// The gzip magic.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What can be wrong with a data set on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A gzip file whose stream is damaged (bad header, bad data, bad
    /// checksum).
    #[error("{}: damaged gzip stream: {reason}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decompressor reported.
        reason: String,
    },
    /// The file is shorter than its header (or its header says).
    #[error("{}: truncated: {expected} bytes expected, the file has {got}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header (or the header's own size) requires.
        expected: u64,
        /// Bytes the file has.
        got: u64,
    },
    /// The file is longer than its header says.
    #[error(
        "{}: {extra} trailing bytes after the {expected} bytes its header describes",
        path.display()
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header describes.
        expected: u64,
        /// Bytes beyond them.
        extra: u64,
    },
    /// The magic number is not that of an IDX file of the expected rank.
    #[error(
        "{}: wrong magic {found:02x?} (expected 00 00 08 {rank:02x}: an IDX file of unsigned \
         bytes with {rank} dimension(s))",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes.
        found: [u8; 4],
        /// The number of dimensions expected.
        rank: u8,
    },
    /// Sizes in the header that cannot be right (zero, too large, or
    /// overflowing).
    #[error("{}: unacceptable sizes {dims:?}: {reason}", path.display())]
    BadDims {
        /// The file.
        path: PathBuf,
        /// The sizes in the header.
        dims: Vec<u32>,
        /// Why they are refused.
        reason: String,
    },
    /// The images and labels files hold different numbers of items.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Images in it.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Labels in it.
        labels: usize,
    },
    /// A label outside `0..NUM_CLASSES`.
    #[error("{}: label {label} at index {index} is not below {NUM_CLASSES}", path.display())]
    BadLabel {
        /// The labels file.
        path: PathBuf,
        /// The item's index.
        index: usize,
        /// Its label.
        label: u8,
    },
    /// No data set was found in the folders searched.
    #[error(
        "Fashion-MNIST not found: looked for {} in {}; install it with \
         `apt-get install dataset-fashion-mnist` or pass a folder holding the four IDX files \
         with `--data DIR`",
        FILE_NAMES.join(", "),
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// The folders searched.
        searched: Vec<PathBuf>,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = DataError> = core::result::Result<T, E>;

/// A labelled set of grey images: `images` is `[len, rows, cols]` row-major,
/// one byte per pixel (0 = background), `labels[i] < NUM_CLASSES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, `[len, rows, cols]`.
    pub images: Vec<u8>,
    /// One label per image, each below [`NUM_CLASSES`].
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Dataset {
    /// Reads and cross-checks an images file and a labels file.
    pub fn load(images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<Dataset> {
        let images_path = images_path.as_ref();
        let labels_path = labels_path.as_ref();
        let (images, dims) = read_idx(images_path, 3)?;
        let (count, rows, cols) = (dims[0], dims[1], dims[2]);
        if rows > MAX_SIDE || cols > MAX_SIDE {
            return Err(DataError::BadDims {
                path: images_path.to_path_buf(),
                dims: dims.iter().map(|&d| d as u32).collect(),
                reason: format!("image sides above {MAX_SIDE}"),
            });
        }
        let (labels, ldims) = read_idx(labels_path, 1)?;
        if ldims[0] != count {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: count,
                labels_path: labels_path.to_path_buf(),
                labels: ldims[0],
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= NUM_CLASSES)
        {
            return Err(DataError::BadLabel {
                path: labels_path.to_path_buf(),
                index,
                label,
            });
        }
        Ok(Dataset {
            images,
            labels,
            rows,
            cols,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Splits off the last `n` images: `(the first len - n, the last n)`
    /// (a validation split carved from a training set). `n` is clamped to
    /// the set's length.
    pub fn split_last(mut self, n: usize) -> (Dataset, Dataset) {
        let keep = self.len() - n.min(self.len());
        let px = self.rows * self.cols;
        let tail = Dataset {
            images: self.images.split_off(keep * px),
            labels: self.labels.split_off(keep),
            rows: self.rows,
            cols: self.cols,
        };
        (self, tail)
    }

    /// The pixels of image `i` (`rows * cols` bytes); panics if `i >= len`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..][..n]
    }
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions, plain or
/// gzip-compressed: the elements and the sizes. Every size must be at least
/// 1, and the (decompressed) content must be exactly header plus elements.
pub fn read_idx(path: impl AsRef<Path>, rank: u8) -> Result<(Vec<u8>, Vec<usize>)> {
    let path = path.as_ref();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut f, &mut magic).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    if got == 2 && magic == GZIP_MAGIC {
        let mut z = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
        parse_idx(&mut z, None, path, rank)
    } else {
        parse_idx(&mut f, Some(file_len), path, rank)
    }
}

/// Parses an IDX file held in memory (plain or gzip-compressed), exactly as
/// [`read_idx`] reads one from disk; `name` stands for the file in errors.
pub fn parse_idx_bytes(bytes: &[u8], name: &Path, rank: u8) -> Result<(Vec<u8>, Vec<usize>)> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut z = flate2::read::GzDecoder::new(bytes);
        parse_idx(&mut z, None, name, rank)
    } else {
        let mut r = bytes;
        parse_idx(&mut r, Some(bytes.len() as u64), name, rank)
    }
}

/// Parses an IDX stream. `len` is the content's length when known (a plain
/// file): sizes are then checked against it before the body is allocated;
/// otherwise (gzip) the body is bounded by [`MAX_GZ_BODY`] and the stream
/// must end right after it.
fn parse_idx(
    r: &mut dyn Read,
    len: Option<u64>,
    path: &Path,
    rank: u8,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let header_len = 4 + 4 * u64::from(rank);
    let err = |e: std::io::Error, expected: u64| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: len.unwrap_or(0),
        },
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData if len.is_none() => {
            DataError::Gzip {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        }
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    };
    let mut header = vec![0u8; header_len as usize];
    let got = read_up_to(r, &mut header).map_err(|e| err(e, header_len))?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            got: len.unwrap_or(got as u64),
        });
    }
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != [0, 0, TYPE_U8, rank] {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            rank,
        });
    }
    if (got as u64) < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            got: len.unwrap_or(got as u64),
        });
    }
    let dims: Vec<u32> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let bad = |reason: &str| DataError::BadDims {
        path: path.to_path_buf(),
        dims: dims.clone(),
        reason: reason.to_string(),
    };
    if dims.contains(&0) {
        return Err(bad("a size is zero"));
    }
    let body = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(u64::from(d)))
        .ok_or_else(|| bad("their product overflows"))?;
    let expected = header_len
        .checked_add(body)
        .ok_or_else(|| bad("their product overflows"))?;
    match len {
        Some(file_len) if file_len < expected => {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected,
                got: file_len,
            })
        }
        Some(file_len) if file_len > expected => {
            return Err(DataError::TrailingBytes {
                path: path.to_path_buf(),
                expected,
                extra: file_len - expected,
            })
        }
        None if body > MAX_GZ_BODY => {
            return Err(bad(&format!(
                "{body} bytes of elements exceed the {MAX_GZ_BODY}-byte bound for gzip files"
            )))
        }
        _ => {}
    }
    // `body` is at most the file's length (plain) or MAX_GZ_BODY (gzip) now,
    // so this allocation is bounded. A gzip header's sizes say nothing about
    // the stream, so there the buffer grows with what is actually
    // decompressed (from at most 1 MiB) instead of being taken up front.
    let n = usize::try_from(body).map_err(|_| bad("too large for this machine"))?;
    let mut data = Vec::with_capacity(if len.is_some() { n } else { n.min(1 << 20) });
    Read::take(&mut *r, body)
        .read_to_end(&mut data)
        .map_err(|e| err(e, expected))?;
    if data.len() != n {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: len.unwrap_or(header_len + data.len() as u64),
        });
    }
    if len.is_none() {
        let mut extra = [0u8; 1];
        let more = read_up_to(r, &mut extra).map_err(|e| err(e, expected))?;
        if more > 0 {
            let mut rest = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                match read_up_to(r, &mut buf).map_err(|e| err(e, expected))? {
                    0 => break,
                    k => rest += k as u64,
                }
                if rest > MAX_GZ_BODY {
                    break;
                }
            }
            return Err(DataError::TrailingBytes {
                path: path.to_path_buf(),
                expected,
                extra: rest + 1,
            });
        }
    }
    Ok((data, dims.iter().map(|&d| d as usize).collect()))
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_up_to(f: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Finds and loads Fashion-MNIST: `(train, test)`.
///
/// With `dir`, only that folder is searched; otherwise the Debian package's
/// folder [`DEBIAN_FASHION_MNIST_DIR`]. A folder holds the data set when it
/// has each of the four [`FILE_NAMES`], plain or with a `.gz` suffix (the
/// package's form); otherwise the error is [`DataError::NotFound`] (whose
/// message says `apt-get install dataset-fashion-mnist`).
pub fn find_fashion_mnist(dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let folder = dir.map_or_else(
        || PathBuf::from(DEBIAN_FASHION_MNIST_DIR),
        Path::to_path_buf,
    );
    let mut paths = Vec::with_capacity(4);
    for name in FILE_NAMES {
        let plain = folder.join(name);
        let gz = folder.join(format!("{name}.gz"));
        if plain.is_file() {
            paths.push(plain);
        } else if gz.is_file() {
            paths.push(gz);
        } else {
            return Err(DataError::NotFound {
                searched: vec![folder],
            });
        }
    }
    let train = Dataset::load(&paths[0], &paths[1])?;
    let test = Dataset::load(&paths[2], &paths[3])?;
    Ok((train, test))
}
