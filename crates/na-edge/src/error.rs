//! [`EdgeError`]: everything that can be wrong with a blob, a configuration,
//! a plan or a call, with the offending values in structured fields.

use core::fmt;

/// Longest key name kept inside an error (longer names are cut and end in `…`).
pub const KEY_NAME_CAP: usize = 48;

/// A checkpoint key name held inline (no allocation), for errors.
///
/// Names longer than [`KEY_NAME_CAP`] bytes are cut; [`KeyName::truncated`]
/// says so and the `Display` form then ends in `…`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyName {
    bytes: [u8; KEY_NAME_CAP],
    len: u8,
    truncated: bool,
}

impl KeyName {
    /// The name of `s` (cut at [`KEY_NAME_CAP`] bytes, on a character boundary).
    pub fn new(s: &str) -> Self {
        let mut k = KeyName {
            bytes: [0; KEY_NAME_CAP],
            len: 0,
            truncated: false,
        };
        let mut n = s.len().min(KEY_NAME_CAP);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        k.bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        k.len = n as u8;
        k.truncated = n < s.len();
        k
    }

    /// The name (or its first [`KEY_NAME_CAP`] bytes).
    pub fn as_str(&self) -> &str {
        // Built from a `&str` cut on a character boundary, so always UTF-8.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the name was longer than [`KEY_NAME_CAP`] and has been cut.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// A tensor shape held inline: up to 4 dimensions of `u32` (the blob's width).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    dims: [u32; 4],
    rank: u8,
}

impl Shape {
    /// The shape `dims` (at most 4 dimensions, each saturated to `u32::MAX`;
    /// extra dimensions are dropped, which never happens for the shapes
    /// this crate builds).
    pub fn new(dims: &[usize]) -> Self {
        let mut s = Shape {
            dims: [0; 4],
            rank: 0,
        };
        let n = dims.len().min(4);
        for (o, &d) in s.dims.iter_mut().zip(&dims[..n]) {
            *o = u32::try_from(d).unwrap_or(u32::MAX);
        }
        s.rank = n as u8;
        s
    }

    /// The dimensions.
    pub fn dims(&self) -> &[u32] {
        &self.dims[..usize::from(self.rank)]
    }

    /// Whether the shape is exactly `dims`.
    pub fn is(&self, dims: &[usize]) -> bool {
        dims.len() == self.dims().len()
            && dims
                .iter()
                .zip(self.dims())
                .all(|(&a, &b)| a as u64 == u64::from(b))
    }

    /// Number of elements (saturating).
    pub fn numel(&self) -> usize {
        self.dims()
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d as usize))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Everything that can be wrong with a weight blob, an edge configuration, a
/// plan or an inference call. Every variant names the values at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// The blob does not start with [`crate::format::MAGIC`].
    #[error("bad magic {found:02x?}: not an na-edge weight blob (expected {expected:02x?})")]
    BadMagic {
        /// The first 8 bytes of the blob (zero-filled if shorter).
        found: [u8; 8],
        /// [`crate::format::MAGIC`].
        expected: [u8; 8],
    },
    /// The blob's format version is not one this crate reads.
    #[error("blob format version {found}, this crate reads version {supported}")]
    BadVersion {
        /// The version in the blob.
        found: u32,
        /// [`crate::format::VERSION`].
        supported: u32,
    },
    /// The blob ends before a field or a tensor it declares.
    #[error("blob truncated: {what} needs bytes {start}..{end}, the blob has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// Length of the blob.
        len: usize,
    },
    /// A header field has a value outside its documented range.
    #[error("blob header field {field} = {value} is invalid: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        reason: &'static str,
    },
    /// A tensor's data lies (partly) outside the blob.
    #[error(
        "tensor {key}: data at bytes {offset}..{offset}+{len} lies outside the blob of {blob_len} bytes"
    )]
    TensorOutOfBounds {
        /// The tensor's key.
        key: KeyName,
        /// Its byte offset.
        offset: u64,
        /// Its byte length.
        len: u64,
        /// Length of the blob.
        blob_len: usize,
    },
    /// A tensor's data offset is not a multiple of [`crate::format::DATA_ALIGN`].
    #[error("tensor {key}: data offset {offset} is not a multiple of {align}")]
    UnalignedOffset {
        /// The tensor's key.
        key: KeyName,
        /// Its byte offset.
        offset: u64,
        /// The alignment the format requires.
        align: usize,
    },
    /// The blob's bytes are not aligned in memory for an in-place view
    /// (the blob's start must be 4-byte aligned; see [`crate::format`]).
    #[error(
        "tensor {key}: its data at address {address:#x} is not {align}-byte aligned \
         (load the blob at a 4-byte aligned address, e.g. with AlignedBlob)"
    )]
    Misaligned {
        /// The tensor's key.
        key: KeyName,
        /// The address of its first byte.
        address: usize,
        /// The alignment its dtype needs.
        align: usize,
    },
    /// A tensor table entry has a dtype code this crate does not know.
    #[error("tensor {key}: unknown dtype code {code} (0 = f32, 1 = f16)")]
    UnknownDtype {
        /// The tensor's key.
        key: KeyName,
        /// The code found.
        code: u32,
    },
    /// A tensor's byte length is not its shape times its element size.
    #[error("tensor {key}: {len} bytes for shape {shape} of {elem}-byte elements")]
    TensorLength {
        /// The tensor's key.
        key: KeyName,
        /// Its shape.
        shape: Shape,
        /// Its element size in bytes.
        elem: usize,
        /// The byte length in the table.
        len: u64,
    },
    /// A tensor name is not UTF-8 or not NUL-padded.
    #[error("tensor table entry {index}: the name is not NUL-padded UTF-8")]
    BadName {
        /// The entry's index.
        index: usize,
    },
    /// The tensor table has a different key where the configuration's walk
    /// expects another (entries are in canonical order, see [`crate::format`]).
    #[error("tensor table entry {index} is {found}, the configuration expects {expected}")]
    UnexpectedTensor {
        /// The entry's index.
        index: usize,
        /// The key the configuration expects there.
        expected: KeyName,
        /// The key found.
        found: KeyName,
    },
    /// The tensor table has fewer or more entries than the configuration needs.
    #[error("the tensor table has {found} entries, the configuration needs {expected}")]
    TensorCount {
        /// Entries the configuration needs.
        expected: usize,
        /// Entries found.
        found: usize,
    },
    /// A weight the configuration needs is missing (writer).
    #[error("no tensor named {key} among the writer's tensors")]
    MissingTensor {
        /// The key.
        key: KeyName,
    },
    /// A tensor's shape is not the one the configuration implies.
    #[error("tensor {key} has shape {found}, the configuration implies {expected}")]
    ShapeMismatch {
        /// The tensor's key.
        key: KeyName,
        /// The shape the configuration implies.
        expected: Shape,
        /// The shape found.
        found: Shape,
    },
    /// The configuration asks for something this crate does not run.
    #[error("unsupported configuration: {field} = {value}: {reason}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The input image does not have `in_chans × h × w` values.
    #[error("input has {got} values, the plan is for {expected} ([{chans}, {height}, {width}])")]
    InputLength {
        /// Values the plan expects.
        expected: usize,
        /// Values given.
        got: usize,
        /// Input channels.
        chans: usize,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
    },
    /// The output slice does not have [`crate::Plan::output_len`] values.
    #[error("output has {got} values, the model writes {expected}")]
    OutputLength {
        /// Values the model writes.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The arena is smaller than [`crate::Plan::arena_len`].
    #[error("arena too small: the plan needs {needed} f32 values, got {got}")]
    ArenaTooSmall {
        /// Values the plan needs.
        needed: usize,
        /// Values given.
        got: usize,
    },
    /// The plan was made for another configuration than the model's.
    #[error("the plan was made for another model configuration")]
    PlanMismatch,
    /// The image size is invalid for the model (zero, or a size whose
    /// arithmetic overflows).
    #[error("image size {height}x{width}: {reason}")]
    ImageSize {
        /// Height.
        height: usize,
        /// Width.
        width: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The target is big-endian: the little-endian blob cannot be viewed in place.
    #[error("in-place weight views need a little-endian target")]
    BigEndian,
    /// The neighborhood-attention operator refused a problem.
    #[error("neighborhood attention: {0}")]
    Attention(#[from] na_core::Error),
}
