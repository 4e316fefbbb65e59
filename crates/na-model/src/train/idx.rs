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
//! Gzip-compressed files (`*.gz`, or any file starting with the gzip magic
//! `1f 8b`) are recognised and refused with [`DataError::Compressed`]: this
//! crate does not depend on a decompressor (yet).

use std::fs::File;
use std::io::Read;
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
    /// The file is gzip-compressed; only the uncompressed IDX form is read.
    #[error(
        "{}: the file is gzip-compressed, and this build reads only uncompressed IDX files; \
         decompress the four files (`gunzip -k *.gz` in a folder of your own) and pass that \
         folder with `--data DIR`",
        path.display()
    )]
    Compressed {
        /// The file.
        path: PathBuf,
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
    pub fn load(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
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

    /// The pixels of image `i` (`rows * cols` bytes); panics if `i >= len`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..][..n]
    }
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions: the elements
/// and the sizes. Every size must be at least 1, and the file's length must
/// be exactly header plus elements.
pub fn read_idx(path: &Path, rank: u8) -> Result<(Vec<u8>, Vec<usize>)> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let header_len = 4 + 4 * u64::from(rank);
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut f, &mut magic).map_err(io)?;
    if got >= 2 && magic[..2] == GZIP_MAGIC {
        return Err(DataError::Compressed {
            path: path.to_path_buf(),
        });
    }
    if (got as u64) < 4 || file_len < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            got: file_len,
        });
    }
    if magic != [0, 0, TYPE_U8, rank] {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            rank,
        });
    }
    if file_len < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            got: file_len,
        });
    }
    let mut raw = vec![0u8; 4 * usize::from(rank)];
    f.read_exact(&mut raw).map_err(io)?;
    let dims: Vec<u32> = raw
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
    if file_len < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: file_len,
        });
    }
    if file_len > expected {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            extra: file_len - expected,
        });
    }
    // `body` is at most the file's length now, so this allocation is bounded
    // by what is on disk.
    let n = usize::try_from(body).map_err(|_| bad("too large for this machine"))?;
    let mut data = vec![0u8; n];
    f.read_exact(&mut data).map_err(|e| match e.kind() {
        // The file shrank under us.
        std::io::ErrorKind::UnexpectedEof => DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: file_len,
        },
        _ => io(e),
    })?;
    Ok((data, dims.iter().map(|&d| d as usize).collect()))
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
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
/// has the four [`FILE_NAMES`]; if it has only their `.gz` forms, the error
/// is [`DataError::Compressed`]; if it has neither, [`DataError::NotFound`]
/// (whose message says `apt-get install dataset-fashion-mnist`).
pub fn find_fashion_mnist(dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let folder = dir.map_or_else(
        || PathBuf::from(DEBIAN_FASHION_MNIST_DIR),
        Path::to_path_buf,
    );
    let mut paths = Vec::with_capacity(4);
    for name in FILE_NAMES {
        let plain = folder.join(name);
        if plain.is_file() {
            paths.push(plain);
            continue;
        }
        let gz = folder.join(format!("{name}.gz"));
        if gz.is_file() {
            return Err(DataError::Compressed { path: gz });
        }
        return Err(DataError::NotFound {
            searched: vec![folder],
        });
    }
    let train = Dataset::load(&paths[0], &paths[1])?;
    let test = Dataset::load(&paths[2], &paths[3])?;
    Ok((train, test))
}
