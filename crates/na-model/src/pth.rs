//! Reading PyTorch checkpoints (`torch.save` since 1.6) without Python and
//! without executing anything.
//!
//! # Format
//!
//! A checkpoint is a zip archive whose entries all sit in one directory,
//! named after the file it was first saved to:
//!
//! ```text
//! <prefix>/data.pkl        the pickled object (protocol 2 by default)
//! <prefix>/data/<key>      the raw bytes of storage <key>, little-endian
//! <prefix>/byteorder       "little" or "big" (absent before torch 1.10: little)
//! <prefix>/version, <prefix>/.format_version, ...   ignored
//! ```
//!
//! Inside `data.pkl` each tensor is the call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
//! where `storage` is a persistent id
//! `("storage", torch.FloatStorage, "<key>", "cpu", numel)`; offsets, sizes
//! and strides count elements of the storage's dtype.
//!
//! # Safety against hostile files
//!
//! `data.pkl` is read by a small, restricted unpickler: it understands only
//! the opcodes of protocols 2 to 5 that a state dict uses, and only the
//! globals `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes
//! (`torch.FloatStorage`, ...). Those are never called: they are recognised
//! by name and their effect is modelled. Any other global or opcode is an
//! error naming it. Containers live in a flat arena, so deep nesting cannot
//! overflow the stack, and the number of values, objects, marks and memo
//! entries is capped.
//!
//! Every size, stride and offset is converted with checked arithmetic and
//! checked against the byte length of its storage file and against
//! [`MAX_TENSOR_ELEMENTS`] before anything proportional to it is allocated;
//! storage entries are only read when their declared size fits in the
//! archive. A broken or hostile file gives a [`PthError`], never a panic,
//! an out-of-bounds access or an allocation larger than the input warrants.
//!
//! Only stored (uncompressed) zip entries are read, which is what `torch.save`
//! writes; big-endian checkpoints and the pre-1.6 (non-zip) format are refused
//! with an error that says so.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// Largest number of elements accepted in one tensor (2^32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 32;

/// Largest `data.pkl` accepted, in bytes (64 MiB; a state dict needs about
/// 150 bytes per tensor).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Largest number of dimensions accepted in one tensor.
pub const MAX_RANK: usize = 64;

/// How many times the total size of the storages the tensors' bytes may be.
///
/// Tensors normally cover their storage at most once each; views sharing a
/// storage (tied weights) or broadcast views (stride 0) may take more. The
/// cap (plus [`EXPANSION_SLACK_BYTES`]) keeps a tiny file from asking for
/// terabytes through zero strides or thousands of references to one storage.
pub const MAX_EXPANSION: u64 = 8;

/// Bytes of output always allowed on top of [`MAX_EXPANSION`] (64 MiB).
pub const EXPANSION_SLACK_BYTES: u64 = 64 << 20;

/// Most values the unpickler pushes while reading one `data.pkl` (a bound
/// on its work; what it holds at once is bounded by the caps below).
const MAX_VALUES: usize = 1 << 23;

/// Bytes of `data.pkl` per memo entry and per stack value the unpickler may
/// hold: each of the two counts is capped at `len / PICKLE_BYTES_PER_ENTRY +
/// PICKLE_ENTRY_SLACK` for a pickle of `len` bytes, and at its absolute cap
/// ([`MAX_MEMO`], [`MAX_STACK`]); containers are capped at one per byte
/// (`len + PICKLE_ENTRY_SLACK`: `TUPLE1` makes one from a single byte, and
/// deep nesting is legitimate) and at [`MAX_OBJECTS`]. So the unpickler's
/// memory stays proportional to its input (tens of bytes per input byte,
/// some tens of MiB at most), whatever the opcodes: 2^24 MEMOIZE opcodes
/// (16 MiB) are refused after 2^20 entries instead of taking 833 MB.
/// `torch.save` state dicts use one memo entry per 7 to 12 bytes.
pub const PICKLE_BYTES_PER_ENTRY: usize = 2;

/// Memo entries, containers and stack values always allowed on top of the
/// per-byte share ([`PICKLE_BYTES_PER_ENTRY`]).
pub const PICKLE_ENTRY_SLACK: usize = 4096;

/// Most containers (tuples, lists, dicts, storages, tensors) one pickle
/// builds, whatever its size (see [`PICKLE_BYTES_PER_ENTRY`]).
pub const MAX_OBJECTS: usize = 1 << 20;

/// Most memo entries one pickle defines, whatever its size (see
/// [`PICKLE_BYTES_PER_ENTRY`]; a state dict needs about six per tensor).
pub const MAX_MEMO: usize = 1 << 20;

/// Most values on the unpickler's stack at once, whatever the pickle's size
/// (see [`PICKLE_BYTES_PER_ENTRY`]).
pub const MAX_STACK: usize = 1 << 20;

/// Deepest nesting of MARKs (a state dict needs 3).
const MAX_MARK_DEPTH: usize = 1024;

/// How many bytes of the file are looked at to recognise its format.
const SNIFF_BYTES: usize = 512;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PthDType {
    /// IEEE 754 binary32 (`torch.float32`, `FloatStorage`).
    F32,
    /// IEEE 754 binary16 (`torch.float16`, `HalfStorage`).
    F16,
    /// bfloat16 (`torch.bfloat16`, `BFloat16Storage`).
    BF16,
    /// IEEE 754 binary64 (`torch.float64`, `DoubleStorage`).
    F64,
    /// Signed 64-bit integer (`torch.int64`, `LongStorage`).
    I64,
    /// Signed 32-bit integer (`torch.int32`, `IntStorage`).
    I32,
    /// Signed 16-bit integer (`torch.int16`, `ShortStorage`).
    I16,
    /// Signed 8-bit integer (`torch.int8`, `CharStorage`).
    I8,
    /// Unsigned 8-bit integer (`torch.uint8`, `ByteStorage`).
    U8,
    /// Boolean, one byte 0 or 1 (`torch.bool`, `BoolStorage`).
    Bool,
}

impl PthDType {
    /// Bytes per element.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            PthDType::F64 | PthDType::I64 => 8,
            PthDType::F32 | PthDType::I32 => 4,
            PthDType::F16 | PthDType::BF16 | PthDType::I16 => 2,
            PthDType::I8 | PthDType::U8 | PthDType::Bool => 1,
        }
    }

    /// Short lower-case name: `f32`, `f16`, `bf16`, `f64`, `i64`, `i32`,
    /// `i16`, `i8`, `u8` or `bool`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PthDType::F32 => "f32",
            PthDType::F16 => "f16",
            PthDType::BF16 => "bf16",
            PthDType::F64 => "f64",
            PthDType::I64 => "i64",
            PthDType::I32 => "i32",
            PthDType::I16 => "i16",
            PthDType::I8 => "i8",
            PthDType::U8 => "u8",
            PthDType::Bool => "bool",
        }
    }

    /// Whether this is a floating-point type (`f32`, `f16`, `bf16`, `f64`).
    #[must_use]
    pub fn is_float(self) -> bool {
        matches!(
            self,
            PthDType::F32 | PthDType::F16 | PthDType::BF16 | PthDType::F64
        )
    }

    /// The dtype of a typed storage class in module `torch`, if whitelisted.
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => PthDType::F32,
            "HalfStorage" => PthDType::F16,
            "BFloat16Storage" => PthDType::BF16,
            "DoubleStorage" => PthDType::F64,
            "LongStorage" => PthDType::I64,
            "IntStorage" => PthDType::I32,
            "ShortStorage" => PthDType::I16,
            "CharStorage" => PthDType::I8,
            "ByteStorage" => PthDType::U8,
            "BoolStorage" => PthDType::Bool,
            _ => return None,
        })
    }
}

impl std::fmt::Display for PthDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a checkpoint, contiguous row-major, little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    /// The key of the tensor in the state dict, e.g. `levels.0.blocks.1.attn.qkv.weight`.
    pub name: String,
    /// Element type, as stored.
    pub dtype: PthDType,
    /// Dimensions, outermost first; empty for a 0-d tensor.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.size()` bytes, C order, little-endian.
    pub data: Vec<u8>,
}

impl PthTensor {
    /// Number of elements (the product of `shape`; 1 for a 0-d tensor).
    #[must_use]
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Values widened/converted to f32 (float dtypes only; integers/bool: error `NotFloat`).
    ///
    /// `f64` values are rounded to the nearest `f32`.
    ///
    /// # Errors
    ///
    /// [`PthError::NotFloat`] for integer and boolean tensors.
    pub fn to_f32(&self) -> Result<Vec<f32>, PthError> {
        let d = &self.data;
        Ok(match self.dtype {
            PthDType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            PthDType::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            PthDType::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            PthDType::F64 => d
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            dtype => {
                return Err(PthError::NotFloat {
                    name: self.name.clone(),
                    dtype,
                })
            }
        })
    }
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PthError {
    /// The checkpoint file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The file is in the pre-1.6 `torch.save` format (a bare pickle stream or
    /// a tar archive), which this reader does not handle.
    #[error("legacy torch.save format (not a zip archive), re-save with torch >= 1.6")]
    Legacy,

    /// The file is not a readable zip archive (not a checkpoint, or truncated).
    #[error("not a PyTorch zip checkpoint (or a truncated one)")]
    NotZip {
        /// What the zip reader said.
        #[source]
        source: ZipError,
    },

    /// A zip entry could not be opened.
    #[error("cannot open zip entry {entry}")]
    Zip {
        /// The entry's name in the archive.
        entry: String,
        /// What the zip reader said.
        #[source]
        source: ZipError,
    },

    /// A zip entry could not be read to its end (truncated data, bad CRC).
    #[error("cannot read zip entry {entry}")]
    EntryRead {
        /// The entry's name in the archive.
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A record the checkpoint needs is not in the archive.
    #[error("the archive has no {entry} record (is it a torch.save checkpoint?)")]
    MissingEntry {
        /// The entry looked for; `<dir>/data.pkl` when no pickle was found.
        entry: String,
    },

    /// The archive holds more than one top-level `data.pkl`.
    #[error("the archive holds two pickles, {first} and {second}")]
    AmbiguousPickle {
        /// The first `*/data.pkl` entry.
        first: String,
        /// Another one.
        second: String,
    },

    /// A zip entry is compressed; `torch.save` writes stored entries only and
    /// this reader reads only those.
    #[error("zip entry {entry} is compressed ({method}); only stored entries, as torch.save writes them, are read")]
    Compressed {
        /// The entry's name in the archive.
        entry: String,
        /// The compression method, as the zip crate names it.
        method: String,
    },

    /// A zip entry is encrypted.
    #[error("zip entry {entry} is encrypted")]
    Encrypted {
        /// The entry's name in the archive.
        entry: String,
    },

    /// A zip entry declares more bytes than allowed or than the archive holds.
    #[error("zip entry {entry} declares {size} bytes, more than the {limit} allowed")]
    EntryTooLarge {
        /// The entry's name in the archive.
        entry: String,
        /// Its declared uncompressed size.
        size: u64,
        /// The limit it broke (a constant, or the archive's length).
        limit: u64,
    },

    /// The checkpoint was written on a big-endian machine.
    #[error("big-endian checkpoint (byteorder \"big\") is not supported; re-save it on a little-endian machine")]
    BigEndian,

    /// The `byteorder` record holds neither `little` nor `big`.
    #[error("unknown byteorder record {value:?}")]
    BadByteOrder {
        /// The record's text (at most 16 bytes, lossily decoded).
        value: String,
    },

    /// `data.pkl` uses a pickle protocol other than 2 to 5.
    #[error("pickle protocol {version} is not supported (2 to 5 are)")]
    UnsupportedProtocol {
        /// The protocol number of the PROTO opcode.
        version: u8,
    },

    /// `data.pkl` uses an opcode this reader does not implement.
    #[error("pickle opcode {name} (0x{opcode:02x}) at byte {offset} of data.pkl is not supported")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its name in Python's `pickletools`, or `unknown`.
        name: &'static str,
        /// Its position in `data.pkl`.
        offset: usize,
    },

    /// `data.pkl` names a global outside the whitelist (e.g. `os.system`).
    /// Nothing is ever called or imported.
    #[error("pickle global {module}.{name} at byte {offset} of data.pkl is not allowed (only tensors, storages and OrderedDict are)")]
    ForbiddenGlobal {
        /// The module part, e.g. `os`.
        module: String,
        /// The attribute part, e.g. `system`.
        name: String,
        /// Position of the GLOBAL or STACK_GLOBAL opcode in `data.pkl`.
        offset: usize,
    },

    /// `data.pkl` ends inside an opcode or before STOP.
    #[error("data.pkl is truncated at byte {offset}")]
    TruncatedPickle {
        /// Where the missing bytes should have been.
        offset: usize,
    },

    /// `data.pkl` is well-formed pickle but not what a checkpoint holds
    /// (wrong argument types, stack underflow, missing MARK, ...).
    #[error("malformed data.pkl at byte {offset}: {reason}")]
    MalformedPickle {
        /// Position of the offending opcode.
        offset: usize,
        /// What is wrong.
        reason: String,
    },

    /// A BINGET/LONG_BINGET reads a memo slot that was never written.
    #[error("pickle memo entry {index} read at byte {offset} of data.pkl was never stored")]
    MemoMissing {
        /// The memo index.
        index: u32,
        /// Position of the GET opcode.
        offset: usize,
    },

    /// `data.pkl` exceeds one of the unpickler's resource caps (see
    /// [`PICKLE_BYTES_PER_ENTRY`]).
    #[error(
        "data.pkl needs more than {limit} {what} (at byte {offset}), the unpickler's limit \
         for a {pickle_bytes}-byte pickle"
    )]
    PickleLimit {
        /// What ran out: `values`, `stack values`, `objects`, `memo entries`
        /// or `nested MARKs`.
        what: &'static str,
        /// The cap for this pickle.
        limit: usize,
        /// Position of the opcode that broke it.
        offset: usize,
        /// Length of `data.pkl`, which the caps are proportional to.
        pickle_bytes: usize,
    },

    /// The unpickled object is not a dict of tensors, nor a dict holding one
    /// under `"model"` or `"state_dict"`.
    #[error("the checkpoint holds {found}, not a dict of tensors")]
    NotAStateDict {
        /// What was found instead.
        found: String,
    },

    /// An entry of the state dict is not a tensor.
    #[error("state dict entry {key:?} is a {found}, not a tensor")]
    NotATensor {
        /// The entry's key (prefixed `model.` or `state_dict.` when nested).
        key: String,
        /// Its Python type, as far as this reader knows it.
        found: &'static str,
    },

    /// A key of the state dict is not a string.
    #[error("a state dict key is a {found}, not a string")]
    NonStringKey {
        /// The key's type.
        found: &'static str,
    },

    /// A tensor's metadata is invalid (negative size or stride, rank
    /// mismatch, too many dimensions, unsupported tensor metadata).
    #[error("tensor {name:?}: {reason}")]
    InvalidTensor {
        /// The tensor's key.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A tensor has more elements than [`MAX_TENSOR_ELEMENTS`].
    #[error("tensor {name:?} has {} elements, more than the limit of {limit}", at_least(*elements))]
    TooManyElements {
        /// The tensor's key.
        name: String,
        /// Its element count (`u64::MAX` if the product overflows).
        elements: u64,
        /// The limit.
        limit: u64,
    },

    /// A tensor reaches past the end of its storage.
    #[error("tensor {name:?} needs elements up to {} of storage {key:?}, which holds {storage_elements}", at_least(*end))]
    TensorOutOfBounds {
        /// The tensor's key.
        name: String,
        /// The storage key (its file is `data/<key>`).
        key: String,
        /// One past the last element the tensor addresses (`u64::MAX` on overflow).
        end: u64,
        /// Elements in the storage.
        storage_elements: u64,
    },

    /// A storage file's length disagrees with the element count the pickle declares.
    #[error("storage {key:?}: the pickle declares {elements} {dtype} elements but its file holds {actual_bytes} bytes")]
    StorageSize {
        /// The storage key.
        key: String,
        /// Its element type.
        dtype: PthDType,
        /// Elements declared in the pickle.
        elements: u64,
        /// Bytes in `data/<key>`.
        actual_bytes: u64,
    },

    /// One storage is referenced with two element types.
    #[error("storage {key:?} is used both as {first} and as {second}")]
    StorageDType {
        /// The storage key.
        key: String,
        /// The first dtype seen.
        first: PthDType,
        /// A different one.
        second: PthDType,
    },

    /// The tensors would take far more memory than the storages they view
    /// (see [`MAX_EXPANSION`]).
    #[error("the tensors would take {output_bytes} bytes from {storage_bytes} bytes of storage, more than the {limit} allowed")]
    ExpansionLimit {
        /// Total bytes of all tensors, copied out contiguous.
        output_bytes: u64,
        /// Total bytes of the storages they view.
        storage_bytes: u64,
        /// The cap.
        limit: u64,
    },

    /// [`PthTensor::to_f32`] was called on an integer or boolean tensor.
    #[error("tensor {name:?} holds {dtype} values, not floating point")]
    NotFloat {
        /// The tensor's key.
        name: String,
        /// Its element type.
        dtype: PthDType,
    },
}

/// A count for an error message; `u64::MAX` stands for an overflow.
fn at_least(n: u64) -> String {
    if n == u64::MAX {
        "2^64 or more".to_string()
    } else {
        n.to_string()
    }
}

/// The name of a zip compression method (whether or not the zip crate was
/// built to decode it).
fn method_name(method: CompressionMethod) -> String {
    let known = [
        (CompressionMethod::DEFLATE, "deflate"),
        (CompressionMethod::DEFLATE64, "deflate64"),
        (CompressionMethod::BZIP2, "bzip2"),
        (CompressionMethod::LZMA, "lzma"),
        (CompressionMethod::ZSTD, "zstd"),
        (CompressionMethod::XZ, "xz"),
        (CompressionMethod::PPMD, "ppmd"),
        (CompressionMethod::AES, "aes"),
    ];
    known
        .iter()
        .find(|(m, _)| *m == method)
        .map_or_else(|| format!("{method:?}"), |(_, name)| (*name).to_string())
}

/// Reads every tensor of a checkpoint file.
///
/// The top-level object must be a dict (plain or `OrderedDict`) of name to
/// tensor; failing that, a dict with an entry `"model"` or else
/// `"state_dict"` (looked up in that order) whose value is a dict of tensors,
/// as training checkpoints store it (the other entries, e.g. `epoch` or the
/// optimizer state, are then ignored). Tensors keep the file's order and
/// names; non-contiguous views are copied out contiguous. Attributes set on
/// the dict (such as the `_metadata` of `Module.state_dict()`) are ignored.
///
/// The file is read through a buffered reader: storages are loaded one at a
/// time and dropped once the last tensor viewing them is copied.
///
/// # Errors
///
/// Any [`PthError`]: [`PthError::Io`] if the file cannot be read, the others
/// for a file that is not a valid checkpoint.
pub fn read_pth(path: &Path) -> Result<Vec<PthTensor>, PthError> {
    let io_err = |source| PthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    read_from(BufReader::new(file), len, &head)
}

/// The same from bytes in memory.
///
/// # Errors
///
/// As [`read_pth`], except [`PthError::Io`].
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<PthTensor>, PthError> {
    let head = &bytes[..bytes.len().min(SNIFF_BYTES)];
    read_from(io::Cursor::new(bytes), bytes.len() as u64, head)
}

/// Recognises the legacy formats from the first bytes of the file.
fn sniff(head: &[u8]) -> Result<(), PthError> {
    if head.starts_with(b"PK") {
        return Ok(());
    }
    // A bare pickle stream (PROTO opcode), the format of torch < 1.6.
    if head.first() == Some(&0x80) {
        return Err(PthError::Legacy);
    }
    // The tar archive of torch < 0.4.
    if head.get(257..262) == Some(b"ustar") {
        return Err(PthError::Legacy);
    }
    // Anything else: let the zip reader decide (it accepts leading junk).
    Ok(())
}

fn read_from<R: Read + Seek>(reader: R, len: u64, head: &[u8]) -> Result<Vec<PthTensor>, PthError> {
    sniff(head)?;
    let zip = ZipArchive::new(reader).map_err(|source| PthError::NotZip { source })?;
    let mut archive = Archive { zip, len };
    let prefix = archive.find_prefix()?;
    archive.check_byteorder(&prefix)?;
    let pkl_name = format!("{prefix}/data.pkl");
    let pkl = archive.read_entry(&pkl_name, MAX_PICKLE_BYTES)?;
    let unpickled = Unpickler::new(&pkl).run()?;
    let entries = select_state_dict(&unpickled)?;
    let plan = plan_tensors(&unpickled, entries)?;
    materialize(&mut archive, &prefix, plan)
}

// ---------------------------------------------------------------------------
// The zip archive
// ---------------------------------------------------------------------------

struct Archive<R> {
    zip: ZipArchive<R>,
    /// Length of the whole archive: no stored entry can be longer.
    len: u64,
}

impl<R: Read + Seek> Archive<R> {
    /// The directory holding `data.pkl`.
    fn find_prefix(&self) -> Result<String, PthError> {
        let mut found: Option<String> = None;
        for name in self.zip.file_names_raw() {
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let Some(dir) = name.strip_suffix("/data.pkl") else {
                continue;
            };
            if dir.is_empty() || dir.contains('/') {
                continue;
            }
            if let Some(first) = &found {
                return Err(PthError::AmbiguousPickle {
                    first: format!("{first}/data.pkl"),
                    second: name.to_string(),
                });
            }
            found = Some(dir.to_string());
        }
        found.ok_or_else(|| PthError::MissingEntry {
            entry: "<dir>/data.pkl".into(),
        })
    }

    /// The index and declared size of a stored, unencrypted entry.
    fn stat(&self, name: &str) -> Result<Option<(usize, u64)>, PthError> {
        let Some(index) = self.zip.index_for_name(name) else {
            return Ok(None);
        };
        let entry = self
            .zip
            .by_index_data(index)
            .map_err(|source| PthError::Zip {
                entry: name.to_string(),
                source,
            })?;
        if entry.encrypted() {
            return Err(PthError::Encrypted {
                entry: name.to_string(),
            });
        }
        let method = entry.compression();
        if method != CompressionMethod::Stored {
            return Err(PthError::Compressed {
                entry: name.to_string(),
                method: method_name(method),
            });
        }
        Ok(Some((index, entry.size())))
    }

    /// Reads a whole stored entry of at most `limit` bytes.
    fn read_entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, PthError> {
        let Some((index, size)) = self.stat(name)? else {
            return Err(PthError::MissingEntry {
                entry: name.to_string(),
            });
        };
        self.read_index(name, index, size, limit)
    }

    fn read_index(
        &mut self,
        name: &str,
        index: usize,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, PthError> {
        // A stored entry's bytes lie inside the archive: never allocate more.
        let limit = limit.min(self.len);
        if size > limit {
            return Err(PthError::EntryTooLarge {
                entry: name.to_string(),
                size,
                limit,
            });
        }
        let read_err = |source| PthError::EntryRead {
            entry: name.to_string(),
            source,
        };
        let capacity = usize::try_from(size)
            .map_err(|_| read_err(io::Error::other("entry larger than the address space")))?;
        let file = self.zip.by_index(index).map_err(|source| PthError::Zip {
            entry: name.to_string(),
            source,
        })?;
        let mut buf = Vec::with_capacity(capacity);
        // One byte more than declared, to notice an entry longer than its header says.
        file.take(size + 1)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        if buf.len() as u64 != size {
            return Err(read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("declared {size} bytes, found {}", buf.len()),
            )));
        }
        Ok(buf)
    }

    /// Refuses big-endian checkpoints; a missing record means little-endian.
    fn check_byteorder(&mut self, prefix: &str) -> Result<(), PthError> {
        let name = format!("{prefix}/byteorder");
        if self.stat(&name)?.is_none() {
            return Ok(());
        }
        let bytes = self.read_entry(&name, 16)?;
        match bytes.trim_ascii() {
            b"little" => Ok(()),
            b"big" => Err(PthError::BigEndian),
            other => Err(PthError::BadByteOrder {
                value: String::from_utf8_lossy(other).into_owned(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// The restricted unpickler
// ---------------------------------------------------------------------------

/// Index of an [`Object`] in the unpickler's arena.
type ObjId = usize;

/// A pickle value. Containers live in the arena and are referred to by
/// index, so values are cheap to clone (memo) and never recursive.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float's value is never needed, only its type.
    Float,
    Str(Rc<str>),
    Global(Global),
    Obj(ObjId),
}

/// The whitelisted globals.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(PthDType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => PthDType::from_storage_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A container or a rebuilt torch object.
#[derive(Debug)]
enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Box<Dict>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A persistent id `("storage", <class>, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    key: Rc<str>,
    dtype: PthDType,
    /// Elements, as the pickle declares (not yet checked against the file).
    numel: i64,
}

/// The arguments of one `_rebuild_tensor_v2` call, unchecked.
#[derive(Debug)]
struct TensorRef {
    storage: ObjId,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// A dict keeping insertion order, with Python's overwrite semantics for
/// string and integer keys.
#[derive(Debug, Default)]
struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<KeyRepr, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyRepr {
    Str(Rc<str>),
    Int(i64),
}

impl Dict {
    fn insert(&mut self, key: Value, value: Value) {
        let repr = match &key {
            Value::Str(s) => Some(KeyRepr::Str(s.clone())),
            Value::Int(i) => Some(KeyRepr::Int(*i)),
            Value::Bool(b) => Some(KeyRepr::Int(i64::from(*b))),
            _ => None,
        };
        match repr {
            Some(repr) => {
                if let Some(&i) = self.index.get(&repr) {
                    self.entries[i].1 = value;
                } else {
                    self.index.insert(repr, self.entries.len());
                    self.entries.push((key, value));
                }
            }
            // Other keys are rare in checkpoints and never looked up.
            None => self.entries.push((key, value)),
        }
    }

    fn get_str(&self, key: &str) -> Option<&Value> {
        self.index
            .get(&KeyRepr::Str(Rc::from(key)))
            .map(|&i| &self.entries[i].1)
    }
}

/// The result of unpickling: the top value and the arena it refers to.
struct Unpickled {
    top: Value,
    objects: Vec<Object>,
}

impl Unpickled {
    fn type_name(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Global(_) => "class or function",
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(_)) => "tuple",
                Some(Object::List(_)) => "list",
                Some(Object::Dict(_)) => "dict",
                Some(Object::Storage(_)) => "storage",
                Some(Object::Tensor(_)) => "tensor",
                None => "invalid object",
            },
        }
    }

    fn dict(&self, v: &Value) -> Option<&Dict> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Dict(d)) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    fn tensor(&self, v: &Value) -> Option<&TensorRef> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tensor(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Pickle opcodes (names as in Python's `pickletools`).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;

    /// The `pickletools` name of any opcode, for error messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            b'(' => "MARK",
            b'.' => "STOP",
            b'0' => "POP",
            b'1' => "POP_MARK",
            b'2' => "DUP",
            b'F' => "FLOAT",
            b'I' => "INT",
            b'J' => "BININT",
            b'K' => "BININT1",
            b'L' => "LONG",
            b'M' => "BININT2",
            b'N' => "NONE",
            b'P' => "PERSID",
            b'Q' => "BINPERSID",
            b'R' => "REDUCE",
            b'S' => "STRING",
            b'T' => "BINSTRING",
            b'U' => "SHORT_BINSTRING",
            b'V' => "UNICODE",
            b'X' => "BINUNICODE",
            b'a' => "APPEND",
            b'b' => "BUILD",
            b'c' => "GLOBAL",
            b'd' => "DICT",
            b'}' => "EMPTY_DICT",
            b'e' => "APPENDS",
            b'g' => "GET",
            b'h' => "BINGET",
            b'i' => "INST",
            b'j' => "LONG_BINGET",
            b'l' => "LIST",
            b']' => "EMPTY_LIST",
            b'o' => "OBJ",
            b'p' => "PUT",
            b'q' => "BINPUT",
            b'r' => "LONG_BINPUT",
            b's' => "SETITEM",
            b't' => "TUPLE",
            b')' => "EMPTY_TUPLE",
            b'u' => "SETITEMS",
            b'G' => "BINFLOAT",
            0x80 => "PROTO",
            0x81 => "NEWOBJ",
            0x82 => "EXT1",
            0x83 => "EXT2",
            0x84 => "EXT4",
            0x85 => "TUPLE1",
            0x86 => "TUPLE2",
            0x87 => "TUPLE3",
            0x88 => "NEWTRUE",
            0x89 => "NEWFALSE",
            0x8a => "LONG1",
            0x8b => "LONG4",
            b'B' => "BINBYTES",
            b'C' => "SHORT_BINBYTES",
            0x8c => "SHORT_BINUNICODE",
            0x8d => "BINUNICODE8",
            0x8e => "BINBYTES8",
            0x8f => "EMPTY_SET",
            0x90 => "ADDITEMS",
            0x91 => "FROZENSET",
            0x92 => "NEWOBJ_EX",
            0x93 => "STACK_GLOBAL",
            0x94 => "MEMOIZE",
            0x95 => "FRAME",
            0x96 => "BYTEARRAY8",
            0x97 => "NEXT_BUFFER",
            0x98 => "READONLY_BUFFER",
            _ => "unknown",
        }
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    pushes: usize,
    /// This pickle's share of the memo and stack caps, and of the object
    /// cap (see [`PICKLE_BYTES_PER_ENTRY`]).
    share: usize,
    object_share: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            share: (data.len() / PICKLE_BYTES_PER_ENTRY).saturating_add(PICKLE_ENTRY_SLACK),
            object_share: data.len().saturating_add(PICKLE_ENTRY_SLACK),
            data,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            pushes: 0,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> PthError {
        PthError::MalformedPickle {
            offset: self.op_start,
            reason: reason.into(),
        }
    }

    fn limit(&self, what: &'static str, limit: usize) -> PthError {
        PthError::PickleLimit {
            what,
            limit,
            offset: self.op_start,
            pickle_bytes: self.data.len(),
        }
    }

    /// The cap on a count for this pickle: its share, at most `absolute`.
    fn cap(&self, absolute: usize) -> usize {
        self.share.min(absolute)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or(PthError::TruncatedPickle { offset: self.pos })?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PthError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PthError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A newline-terminated line (GLOBAL's arguments), without the newline.
    fn line(&mut self) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PthError::TruncatedPickle { offset: data.len() });
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn string(&mut self, len: u64) -> Result<Value, PthError> {
        let remaining = self.data.len().saturating_sub(self.pos);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= remaining)
            .ok_or(PthError::TruncatedPickle {
                offset: self.data.len(),
            })?;
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) -> Result<(), PthError> {
        self.pushes += 1;
        if self.pushes > MAX_VALUES {
            return Err(self.limit("values", MAX_VALUES));
        }
        let cap = self.cap(MAX_STACK);
        if self.stack.len() >= cap {
            return Err(self.limit("stack values", cap));
        }
        self.stack.push(v);
        Ok(())
    }

    fn push_object(&mut self, obj: Object) -> Result<(), PthError> {
        let cap = self.object_share.min(MAX_OBJECTS);
        if self.objects.len() >= cap {
            return Err(self.limit("objects", cap));
        }
        self.objects.push(obj);
        self.push(Value::Obj(self.objects.len() - 1))
    }

    /// How many values above the last MARK are on the stack. As in Python,
    /// a MARK starts a new stack: nothing below it can be popped or read
    /// until the MARK itself is popped.
    fn above_mark(&self) -> usize {
        self.stack
            .len()
            .saturating_sub(self.marks.last().copied().unwrap_or(0))
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        if self.above_mark() == 0 {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// Pops everything above the last MARK, and the MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("stack underflow below MARK"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Value, PthError> {
        if self.above_mark() == 0 {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// The object on top of the stack, which must be a `what`.
    fn top_object(&mut self, what: &str) -> Result<&mut Object, PthError> {
        let id = match self.top()? {
            Value::Obj(id) => *id,
            _ => return Err(self.malformed(format!("expected a {what} on the stack"))),
        };
        let offset = self.op_start;
        self.objects
            .get_mut(id)
            .ok_or_else(|| PthError::MalformedPickle {
                offset,
                reason: "dangling object".into(),
            })
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of items"));
        }
        let offset = self.op_start;
        let Object::Dict(dict) = self.top_object("dict")? else {
            return Err(PthError::MalformedPickle {
                offset,
                reason: "SETITEM on something that is not a dict".into(),
            });
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.insert(k, v);
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        let offset = self.op_start;
        let Object::List(list) = self.top_object("list")? else {
            return Err(PthError::MalformedPickle {
                offset,
                reason: "APPEND on something that is not a list".into(),
            });
        };
        list.extend(items);
        Ok(())
    }

    fn global(&mut self, module: &[u8], name: &[u8]) -> Result<(), PthError> {
        let (m, n) = (
            String::from_utf8_lossy(module),
            String::from_utf8_lossy(name),
        );
        match Global::resolve(&m, &n) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(PthError::ForbiddenGlobal {
                module: m.into_owned(),
                name: n.into_owned(),
                offset: self.op_start,
            }),
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<(), PthError> {
        let v = self.top()?.clone();
        let cap = self.cap(MAX_MEMO);
        if !self.memo.contains_key(&index) && self.memo.len() >= cap {
            return Err(self.limit("memo entries", cap));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PthError> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or(PthError::MemoMissing {
                index,
                offset: self.op_start,
            })?;
        self.push(v)
    }

    fn tuple_items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<i64>, PthError> {
        let items = self
            .tuple_items(v)
            .ok_or_else(|| self.malformed(format!("tensor {what} is not a tuple")))?;
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(self.malformed(format!("tensor {what} holds a non-integer"))),
            })
            .collect()
    }

    /// BINPERSID: a storage reference.
    fn persistent_load(&mut self, pid: Value) -> Result<(), PthError> {
        let bad = |u: &Self| {
            u.malformed("persistent id is not (\"storage\", class, key, location, numel)")
        };
        let items = self.tuple_items(&pid).ok_or_else(|| bad(self))?;
        let storage = match items {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel,
                }
            }
            _ => return Err(bad(self)),
        };
        if storage.key.is_empty() || storage.key.contains('/') {
            return Err(self.malformed(format!("invalid storage key {:?}", storage.key)));
        }
        self.push_object(Object::Storage(storage))
    }

    /// REDUCE: calls of whitelisted globals, modelled without executing anything.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<(), PthError> {
        let Value::Global(g) = callable else {
            return Err(self.malformed("REDUCE on something that is not a whitelisted global"));
        };
        let args = self
            .tuple_items(&args)
            .ok_or_else(|| self.malformed("REDUCE arguments are not a tuple"))?;
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.malformed("OrderedDict called with arguments"));
                }
                self.push_object(Object::Dict(Box::default()))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(self.malformed(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                let storage = match &args[0] {
                    Value::Obj(id) if matches!(self.objects.get(*id), Some(Object::Storage(_))) => {
                        *id
                    }
                    _ => return Err(self.malformed("_rebuild_tensor_v2 without a storage")),
                };
                let Value::Int(offset) = args[1] else {
                    return Err(self.malformed("tensor storage offset is not an integer"));
                };
                let size = self.int_tuple(&args[2], "size")?;
                let stride = self.int_tuple(&args[3], "stride")?;
                if let Some(meta) = args.get(6) {
                    let empty = match meta {
                        Value::None => true,
                        Value::Obj(id) => {
                            matches!(self.objects.get(*id), Some(Object::Dict(d)) if d.entries.is_empty())
                        }
                        _ => false,
                    };
                    if !empty {
                        return Err(
                            self.malformed("tensor metadata (conj/neg bits, ...) is not supported")
                        );
                    }
                }
                self.push_object(Object::Tensor(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                }))
            }
            Global::RebuildParameter => {
                // (data, requires_grad, backward_hooks): the parameter is its data.
                let data = match args {
                    [data @ Value::Obj(id), _, _]
                        if matches!(self.objects.get(*id), Some(Object::Tensor(_))) =>
                    {
                        data.clone()
                    }
                    _ => return Err(self.malformed("_rebuild_parameter without a tensor")),
                };
                self.push(data)
            }
            Global::Storage(dtype) => Err(self.malformed(format!(
                "the {dtype} storage class is called, not referenced"
            ))),
        }
    }

    /// BUILD: attributes set on a dict (`_metadata`) are dropped.
    fn build(&mut self, state: Value) -> Result<(), PthError> {
        let state_ok = match &state {
            Value::None => true,
            Value::Obj(id) => matches!(self.objects.get(*id), Some(Object::Dict(_))),
            _ => false,
        };
        let target_ok = match self.top()? {
            Value::Obj(id) => matches!(self.objects.get(*id), Some(Object::Dict(_))),
            _ => false,
        };
        if state_ok && target_ok {
            Ok(())
        } else {
            Err(self.malformed("BUILD is only supported for attributes of a dict"))
        }
    }

    fn run(mut self) -> Result<Unpickled, PthError> {
        loop {
            self.op_start = self.pos;
            let code = self.u8()?;
            match code {
                op::PROTO => {
                    let version = self.u8()?;
                    if !(2..=5).contains(&version) {
                        return Err(PthError::UnsupportedProtocol { version });
                    }
                }
                op::FRAME => {
                    // A buffering hint: the frame's opcodes follow inline.
                    self.take(8)?;
                }
                op::STOP => {
                    let top = self.pop()?;
                    return Ok(Unpickled {
                        top,
                        objects: self.objects,
                    });
                }
                op::MARK => {
                    if self.marks.len() >= MAX_MARK_DEPTH {
                        return Err(self.limit("nested MARKs", MAX_MARK_DEPTH));
                    }
                    self.marks.push(self.stack.len());
                }
                op::EMPTY_DICT => self.push_object(Object::Dict(Box::default()))?,
                op::EMPTY_LIST => self.push_object(Object::List(Vec::new()))?,
                op::EMPTY_TUPLE => self.push_object(Object::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_object(Object::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    if self.above_mark() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_object(Object::Tuple(items))?;
                }
                op::BINUNICODE => {
                    let len = self.u32()?;
                    let s = self.string(u64::from(len))?;
                    self.push(s)?;
                }
                op::SHORT_BINUNICODE => {
                    let len = self.u8()?;
                    let s = self.string(u64::from(len))?;
                    self.push(s)?;
                }
                op::BINUNICODE8 => {
                    let len = u64::from_le_bytes(self.array()?);
                    let s = self.string(len)?;
                    self.push(s)?;
                }
                op::BINPUT => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                op::LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                op::MEMOIZE => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| self.limit("memo entries", self.cap(MAX_MEMO)))?;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                op::LONG_BINGET => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(self.malformed(format!("{n}-byte integer is too large")));
                    }
                    // Little-endian two's complement, sign-extended to 64 bits.
                    let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut buf = [fill; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                op::BINFLOAT => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL arguments are not strings"));
                    };
                    self.global(module.as_bytes(), name.as_bytes())?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.reduce(callable, args)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    self.persistent_load(pid)?;
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                op::APPEND => {
                    let value = self.pop()?;
                    self.append(vec![value])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                _ => {
                    return Err(PthError::UnsupportedOpcode {
                        opcode: code,
                        name: op::name(code),
                        offset: self.op_start,
                    })
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// From the unpickled object to tensors
// ---------------------------------------------------------------------------

/// The `(name, tensor)` entries of the state dict, in file order.
fn select_state_dict(u: &Unpickled) -> Result<Vec<(String, &TensorRef)>, PthError> {
    let Some(top) = u.dict(&u.top) else {
        return Err(PthError::NotAStateDict {
            found: format!("a {}", u.type_name(&u.top)),
        });
    };
    let all_tensors = top.entries.iter().all(|(_, v)| u.tensor(v).is_some());
    let (dict, prefix) = if all_tensors {
        (top, "")
    } else if let Some(inner) = top.get_str("model").and_then(|v| u.dict(v)) {
        (inner, "model.")
    } else if let Some(inner) = top.get_str("state_dict").and_then(|v| u.dict(v)) {
        (inner, "state_dict.")
    } else if top.entries.iter().all(|(_, v)| u.tensor(v).is_none()) {
        return Err(PthError::NotAStateDict {
            found: "a dict without tensors and without a \"model\" or \"state_dict\" dict".into(),
        });
    } else {
        (top, "")
    };
    dict.entries
        .iter()
        .map(|(k, v)| {
            let Value::Str(name) = k else {
                return Err(PthError::NonStringKey {
                    found: u.type_name(k),
                });
            };
            match u.tensor(v) {
                Some(t) => Ok((name.to_string(), t)),
                None => Err(PthError::NotATensor {
                    key: format!("{prefix}{name}"),
                    found: u.type_name(v),
                }),
            }
        })
        .collect()
}

/// One tensor, validated against its storage.
#[derive(Debug)]
struct Plan {
    name: String,
    dtype: PthDType,
    key: Rc<str>,
    shape: Vec<usize>,
    /// Element strides; 0 for dimensions of size 1.
    strides: Vec<usize>,
    offset: usize,
    numel: usize,
    /// Elements of the storage, as the pickle declares them.
    storage_elements: u64,
}

/// A storage used by at least one tensor.
#[derive(Debug)]
struct StoragePlan {
    dtype: PthDType,
    numel: u64,
    /// Zip index and byte size of `data/<key>`.
    index: usize,
    bytes: u64,
    /// Tensors still to be copied from it.
    users: usize,
}

fn invalid(name: &str, reason: impl Into<String>) -> PthError {
    PthError::InvalidTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn non_negative(name: &str, what: &str, v: i64) -> Result<u64, PthError> {
    u64::try_from(v).map_err(|_| invalid(name, format!("negative {what} {v}")))
}

fn to_usize(name: &str, v: u64) -> Result<usize, PthError> {
    usize::try_from(v).map_err(|_| invalid(name, format!("{v} does not fit in memory addresses")))
}

/// Checks one tensor's geometry (everything but the storage file itself).
fn plan_tensor(name: String, t: &TensorRef, storage: &StorageRef) -> Result<Plan, PthError> {
    let rank = t.size.len();
    if t.stride.len() != rank {
        return Err(invalid(
            &name,
            format!("{rank} sizes but {} strides", t.stride.len()),
        ));
    }
    if rank > MAX_RANK {
        return Err(invalid(
            &name,
            format!("{rank} dimensions, more than {MAX_RANK}"),
        ));
    }
    let storage_elements = non_negative(&name, "storage size", storage.numel)?;
    let offset = non_negative(&name, "storage offset", t.offset)?;
    let mut shape = Vec::with_capacity(rank);
    let mut strides = Vec::with_capacity(rank);
    let mut numel: u64 = 1;
    // One past the last element addressed; u64::MAX on overflow (always out of bounds).
    let mut end: u64 = offset.saturating_add(1);
    for (&size, &stride) in t.size.iter().zip(&t.stride) {
        let size = non_negative(&name, "size", size)?;
        let stride = non_negative(&name, "stride", stride)?;
        numel = numel.saturating_mul(size);
        let stride = if size <= 1 { 0 } else { stride };
        let reach = size.saturating_sub(1).saturating_mul(stride);
        end = end.saturating_add(reach);
        shape.push(size);
        strides.push(stride);
    }
    if numel > MAX_TENSOR_ELEMENTS {
        return Err(PthError::TooManyElements {
            name,
            elements: numel,
            limit: MAX_TENSOR_ELEMENTS,
        });
    }
    // An empty tensor addresses nothing but its offset must still be in range.
    let end = if numel == 0 { offset } else { end };
    if end > storage_elements {
        return Err(PthError::TensorOutOfBounds {
            name,
            key: storage.key.to_string(),
            end,
            storage_elements,
        });
    }
    // Every index below is at most `end`, which fits the storage's bytes once
    // the storage file's size is checked; convert now for the copy.
    let shape = shape
        .into_iter()
        .map(|s| to_usize(&name, s))
        .collect::<Result<Vec<_>, _>>()?;
    let strides = strides
        .into_iter()
        .map(|s| to_usize(&name, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        offset: to_usize(&name, offset)?,
        numel: to_usize(&name, numel)?,
        storage_elements,
        dtype: storage.dtype,
        key: storage.key.clone(),
        name,
        shape,
        strides,
    })
}

fn plan_tensors(u: &Unpickled, entries: Vec<(String, &TensorRef)>) -> Result<Vec<Plan>, PthError> {
    let mut plans = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let Some(Object::Storage(storage)) = u.objects.get(t.storage) else {
            return Err(invalid(&name, "no storage"));
        };
        plans.push(plan_tensor(name, t, storage)?);
    }
    Ok(plans)
}

/// Checks the storages against the archive, then copies every tensor out.
///
/// Storages are read when first needed and dropped after their last tensor;
/// a tensor that is the last user of a storage and covers all of it
/// contiguously takes the storage's buffer without a copy.
fn materialize<R: Read + Seek>(
    archive: &mut Archive<R>,
    prefix: &str,
    plans: Vec<Plan>,
) -> Result<Vec<PthTensor>, PthError> {
    let entry_name = |key: &str| format!("{prefix}/data/{key}");

    // Every storage file must exist with exactly the declared byte length,
    // before anything proportional to a declared size is allocated.
    let mut storages: HashMap<Rc<str>, StoragePlan> = HashMap::new();
    let mut output_bytes: u64 = 0;
    for p in &plans {
        let tensor_bytes = (p.numel as u64).saturating_mul(p.dtype.size() as u64);
        output_bytes = output_bytes.saturating_add(tensor_bytes);
        if let Some(s) = storages.get_mut(&p.key) {
            if s.dtype != p.dtype {
                return Err(PthError::StorageDType {
                    key: p.key.to_string(),
                    first: s.dtype,
                    second: p.dtype,
                });
            }
            if s.numel != p.storage_elements {
                return Err(PthError::StorageSize {
                    key: p.key.to_string(),
                    dtype: p.dtype,
                    elements: p.storage_elements,
                    actual_bytes: s.bytes,
                });
            }
            s.users += 1;
            continue;
        }
        let entry = entry_name(&p.key);
        let Some((index, bytes)) = archive.stat(&entry)? else {
            return Err(PthError::MissingEntry { entry });
        };
        // Saturation gives u64::MAX, which no real entry can match.
        let expected = p.storage_elements.saturating_mul(p.dtype.size() as u64);
        if bytes != expected {
            return Err(PthError::StorageSize {
                key: p.key.to_string(),
                dtype: p.dtype,
                elements: p.storage_elements,
                actual_bytes: bytes,
            });
        }
        storages.insert(
            p.key.clone(),
            StoragePlan {
                dtype: p.dtype,
                numel: p.storage_elements,
                index,
                bytes,
                users: 1,
            },
        );
    }
    let storage_bytes = storages
        .values()
        .fold(0u64, |acc, s| acc.saturating_add(s.bytes));
    let limit = storage_bytes
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(EXPANSION_SLACK_BYTES);
    if output_bytes > limit {
        return Err(PthError::ExpansionLimit {
            output_bytes,
            storage_bytes,
            limit,
        });
    }

    let mut loaded: HashMap<Rc<str>, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(plans.len());
    for p in plans {
        let Some(s) = storages.get_mut(&p.key) else {
            return Err(invalid(&p.name, "storage vanished"));
        };
        if !loaded.contains_key(&p.key) {
            let data = archive.read_index(&entry_name(&p.key), s.index, s.bytes, u64::MAX)?;
            loaded.insert(p.key.clone(), data);
        }
        s.users -= 1;
        let es = p.dtype.size();
        let whole = p.offset == 0
            && p.numel.checked_mul(es) == Some(s.bytes as usize)
            && is_contiguous(&p.shape, &p.strides);
        let data = if s.users == 0 {
            let Some(storage) = loaded.remove(&p.key) else {
                return Err(invalid(&p.name, "storage vanished"));
            };
            if whole {
                storage
            } else {
                gather(&p, &storage)?
            }
        } else {
            let Some(storage) = loaded.get(&p.key) else {
                return Err(invalid(&p.name, "storage vanished"));
            };
            gather(&p, storage)?
        };
        out.push(PthTensor {
            name: p.name,
            dtype: p.dtype,
            shape: p.shape,
            data,
        });
    }
    Ok(out)
}

/// Whether row-major strides (with 0 for size-1 dimensions) are contiguous.
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size > 1 && stride != expected {
            return false;
        }
        // At most the element count, which is checked against MAX_TENSOR_ELEMENTS.
        expected = expected.saturating_mul(size);
    }
    true
}

/// Copies a (possibly strided) view out of its storage bytes, row-major.
///
/// The geometry was checked by [`plan_tensor`] and the storage length by
/// [`materialize`]; slicing still goes through `get` so that a mistake there
/// becomes an error, not a panic.
fn gather(p: &Plan, storage: &[u8]) -> Result<Vec<u8>, PthError> {
    let es = p.dtype.size();
    let oob = || invalid(&p.name, "view outside its storage");
    let mut out = Vec::with_capacity(p.numel * es);
    if p.numel == 0 {
        return Ok(out);
    }
    let Some((&inner, outer_shape)) = p.shape.split_last() else {
        // 0-d: one element at the offset.
        let start = p.offset * es;
        out.extend_from_slice(storage.get(start..start + es).ok_or_else(oob)?);
        return Ok(out);
    };
    let (&inner_stride, outer_strides) = p.strides.split_last().ok_or_else(oob)?;
    let mut index = vec![0usize; outer_shape.len()];
    // Element offset of the current row's first element.
    let mut base = p.offset;
    loop {
        if inner_stride == 1 || inner == 1 {
            let row = storage
                .get(base * es..(base + inner) * es)
                .ok_or_else(oob)?;
            out.extend_from_slice(row);
        } else {
            for j in 0..inner {
                let at = (base + j * inner_stride) * es;
                out.extend_from_slice(storage.get(at..at + es).ok_or_else(oob)?);
            }
        }
        // Advance the outer index like an odometer.
        let mut d = outer_shape.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            index[d] += 1;
            base += outer_strides[d];
            if index[d] < outer_shape[d] {
                break;
            }
            base -= outer_strides[d] * outer_shape[d];
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    /// A hand-written protocol-2 pickle.
    #[derive(Clone, Default)]
    struct P(Vec<u8>);

    impl P {
        fn new() -> Self {
            P(vec![op::PROTO, 2])
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn op(self, code: u8) -> Self {
            self.raw(&[code])
        }
        fn str(self, s: &str) -> Self {
            let len = u32::try_from(s.len()).unwrap().to_le_bytes();
            self.op(op::BINUNICODE).raw(&len).raw(s.as_bytes())
        }
        fn int(self, v: i64) -> Self {
            match i32::try_from(v) {
                Ok(v) => self.op(op::BININT).raw(&v.to_le_bytes()),
                Err(_) => self.raw(&[op::LONG1, 8]).raw(&v.to_le_bytes()),
            }
        }
        fn global(self, module: &str, name: &str) -> Self {
            self.op(op::GLOBAL)
                .raw(module.as_bytes())
                .raw(b"\n")
                .raw(name.as_bytes())
                .raw(b"\n")
        }
        fn ints(self, v: &[i64]) -> Self {
            v.iter()
                .fold(self.op(op::MARK), |p, &x| p.int(x))
                .op(op::TUPLE)
        }
        /// `_rebuild_tensor_v2(storage(class, key, numel), offset, size, stride, False, OrderedDict())`.
        fn tensor(
            self,
            class: &str,
            key: &str,
            numel: i64,
            offset: i64,
            size: &[i64],
            stride: &[i64],
        ) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(op::MARK)
                .op(op::MARK)
                .str("storage")
                .global("torch", class)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(op::TUPLE)
                .op(op::BINPERSID)
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(op::NEWFALSE)
                .global("collections", "OrderedDict")
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE)
                .op(op::TUPLE)
                .op(op::REDUCE)
        }
        /// A contiguous f32 tensor on its own storage `key`.
        fn f32_tensor(self, key: &str, shape: &[i64]) -> Self {
            let numel = shape.iter().product();
            let mut stride = vec![1i64; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                stride[d] = stride[d + 1] * shape[d + 1];
            }
            self.tensor("FloatStorage", key, numel, 0, shape, &stride)
        }
        fn stop(self) -> Vec<u8> {
            self.op(op::STOP).0
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn iota(n: usize) -> Vec<u8> {
        f32_bytes(&(0..n).map(|i| i as f32).collect::<Vec<_>>())
    }

    /// A stored zip archive `archive/...` as torch.save lays it out.
    fn archive_with(pkl: &[u8], storages: &[(&str, &[u8])], byteorder: Option<&[u8]>) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pkl).unwrap();
        if let Some(order) = byteorder {
            zip.start_file("archive/byteorder", opts).unwrap();
            zip.write_all(order).unwrap();
        }
        for (key, data) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.start_file("archive/version", opts).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn archive(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
        archive_with(pkl, storages, Some(b"little"))
    }

    /// `{"w": f32[2, 3]}` with values 0..6.
    fn simple_pickle() -> Vec<u8> {
        P::new()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("w")
            .f32_tensor("0", &[2, 3])
            .op(op::SETITEMS)
            .stop()
    }

    fn read_pkl(pkl: &[u8], storages: &[(&str, &[u8])]) -> Result<Vec<PthTensor>, PthError> {
        read_pth_bytes(&archive(pkl, storages))
    }

    fn one_tensor(
        class: &str,
        key_numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Vec<u8> {
        P::new()
            .op(op::EMPTY_DICT)
            .str("w")
            .tensor(class, "0", key_numel, offset, size, stride)
            .op(op::SETITEM)
            .stop()
    }

    #[test]
    fn dtype_sizes_and_names() {
        let all = [
            (PthDType::F32, 4, "f32"),
            (PthDType::F16, 2, "f16"),
            (PthDType::BF16, 2, "bf16"),
            (PthDType::F64, 8, "f64"),
            (PthDType::I64, 8, "i64"),
            (PthDType::I32, 4, "i32"),
            (PthDType::I16, 2, "i16"),
            (PthDType::I8, 1, "i8"),
            (PthDType::U8, 1, "u8"),
            (PthDType::Bool, 1, "bool"),
        ];
        for (d, size, name) in all {
            assert_eq!(d.size(), size);
            assert_eq!(d.name(), name);
            assert_eq!(d.is_float(), name.starts_with('f') || name == "bf16");
        }
    }

    #[test]
    fn reads_a_hand_written_state_dict() {
        let t = read_pkl(&simple_pickle(), &[("0", &iota(6))]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "w");
        assert_eq!(t[0].dtype, PthDType::F32);
        assert_eq!(t[0].shape, [2, 3]);
        assert_eq!(t[0].numel(), 6);
        assert_eq!(t[0].to_f32().unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn missing_byteorder_means_little_endian() {
        let bytes = archive_with(&simple_pickle(), &[("0", &iota(6))], None);
        assert_eq!(read_pth_bytes(&bytes).unwrap()[0].shape, [2, 3]);
        let big = archive_with(&simple_pickle(), &[("0", &iota(6))], Some(b"big"));
        assert!(matches!(read_pth_bytes(&big), Err(PthError::BigEndian)));
        let odd = archive_with(&simple_pickle(), &[("0", &iota(6))], Some(b"middle"));
        assert!(matches!(
            read_pth_bytes(&odd),
            Err(PthError::BadByteOrder { value }) if value == "middle"
        ));
    }

    #[test]
    fn strided_views_are_copied_out_contiguous() {
        // base [3, 4] = 0..12, its transpose, a column, a broadcast row,
        // a 0-d element and an empty slice, all on storage "0".
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("t")
            .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4])
            .str("col")
            .tensor("FloatStorage", "0", 12, 2, &[3], &[4])
            .str("bcast")
            .tensor("FloatStorage", "0", 12, 4, &[2, 4], &[0, 1])
            .str("scalar")
            .tensor("FloatStorage", "0", 12, 11, &[], &[])
            .str("empty")
            .tensor("FloatStorage", "0", 12, 12, &[0, 4], &[4, 1])
            .str("base")
            .tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
            .op(op::SETITEMS)
            .stop();
        let t = read_pkl(&pkl, &[("0", &iota(12))]).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t", "col", "bcast", "scalar", "empty", "base"]);
        let v = |i: usize| t[i].to_f32().unwrap();
        assert_eq!(v(0), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        assert_eq!(v(1), [2., 6., 10.]);
        assert_eq!(v(2), [4., 5., 6., 7., 4., 5., 6., 7.]);
        assert_eq!((t[3].shape.as_slice(), v(3)), (&[][..], vec![11.0]));
        assert_eq!((t[4].shape.as_slice(), v(4)), (&[0, 4][..], vec![]));
        assert_eq!(v(5), (0..12).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn float_conversions_and_not_float() {
        let h = [half::f16::from_f32(1.5), half::f16::from_f32(-2.0)];
        let t = PthTensor {
            name: "h".into(),
            dtype: PthDType::F16,
            shape: vec![2],
            data: h.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        assert_eq!(t.to_f32().unwrap(), [1.5, -2.0]);
        let b = PthTensor {
            dtype: PthDType::BF16,
            data: [half::bf16::from_f32(3.0), half::bf16::from_f32(-0.25)]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            ..t.clone()
        };
        assert_eq!(b.to_f32().unwrap(), [3.0, -0.25]);
        let d = PthTensor {
            dtype: PthDType::F64,
            data: [0.1f64, 7.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..t.clone()
        };
        assert_eq!(d.to_f32().unwrap(), [0.1f32, 7.0]);
        let i = PthTensor {
            dtype: PthDType::I64,
            data: [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..t
        };
        assert!(matches!(
            i.to_f32(),
            Err(PthError::NotFloat {
                dtype: PthDType::I64,
                ..
            })
        ));
    }

    #[test]
    fn forbidden_globals_are_named_and_never_run() {
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("argparse", "Namespace"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_tensor"),
            ("numpy.core.multiarray", "_reconstruct"),
        ] {
            let pkl = P::new()
                .global(module, name)
                .str("echo pwned")
                .op(op::TUPLE1)
                .op(op::REDUCE)
                .stop();
            let err = read_pkl(&pkl, &[]).unwrap_err();
            assert!(
                matches!(&err, PthError::ForbiddenGlobal { module: m, name: n, offset: 2 } if m == module && n == name),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{module}.{name}")));
            // The same through STACK_GLOBAL (protocol 4).
            let pkl = P::new()
                .str(module)
                .str(name)
                .op(op::STACK_GLOBAL)
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE)
                .stop();
            assert!(matches!(
                read_pkl(&pkl, &[]),
                Err(PthError::ForbiddenGlobal { .. })
            ));
        }
    }

    #[test]
    fn unsupported_opcodes_are_named() {
        for (code, name) in [
            (b'i', "INST"),
            (b'o', "OBJ"),
            (0x81, "NEWOBJ"),
            (b'0', "POP"),
            (b'S', "STRING"),
            (0x8f, "EMPTY_SET"),
            (0xff, "unknown"),
        ] {
            let pkl = P::new().op(code).stop();
            let err = read_pkl(&pkl, &[]).unwrap_err();
            assert!(
                matches!(&err, PthError::UnsupportedOpcode { opcode, name: n, offset: 2 } if *opcode == code && *n == name),
                "{err}"
            );
        }
        let pkl = P(vec![op::PROTO, 6]).op(op::NONE).stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::UnsupportedProtocol { version: 6 })
        ));
    }

    #[test]
    fn every_truncation_of_the_pickle_is_an_error() {
        let pkl = simple_pickle();
        for cut in 0..pkl.len() {
            let res = read_pkl(&pkl[..cut], &[("0", &iota(6))]);
            assert!(res.is_err(), "cut at {cut} was accepted");
        }
        assert!(matches!(
            read_pkl(&pkl[..pkl.len() - 1], &[("0", &iota(6))]),
            Err(PthError::TruncatedPickle { .. })
        ));
    }

    #[test]
    fn every_truncation_of_the_archive_is_an_error() {
        let bytes = archive(&simple_pickle(), &[("0", &iota(6))]);
        for cut in 0..bytes.len() {
            assert!(read_pth_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // 200 000 nested lists, built without MARK: a list, not a dict.
        let n = 200_000;
        let mut pkl = P::new();
        pkl.0.extend(std::iter::repeat_n(op::EMPTY_LIST, n));
        pkl.0.extend(std::iter::repeat_n(op::APPEND, n - 1));
        let err = read_pkl(&pkl.stop(), &[]).unwrap_err();
        assert!(matches!(err, PthError::NotAStateDict { .. }), "{err}");
        // The same nested in tuples.
        let mut pkl = P::new().op(op::NONE);
        pkl.0.extend(std::iter::repeat_n(op::TUPLE1, n));
        assert!(matches!(
            read_pkl(&pkl.stop(), &[]),
            Err(PthError::NotAStateDict { .. })
        ));
        // Deeply nested MARKs hit the cap.
        let mut pkl = P::new();
        pkl.0
            .extend(std::iter::repeat_n(op::MARK, MAX_MARK_DEPTH + 1));
        assert!(matches!(
            read_pkl(&pkl.stop(), &[]),
            Err(PthError::PickleLimit {
                what: "nested MARKs",
                ..
            })
        ));
    }

    /// The pickle's memo, stack and containers are bounded relative to its
    /// length, and absolutely.
    #[test]
    fn memo_stack_and_objects_are_bounded_by_the_pickle_length() {
        let cap =
            |len: usize, abs: usize| (len / PICKLE_BYTES_PER_ENTRY + PICKLE_ENTRY_SLACK).min(abs);
        let limit_of = |pkl: &[u8]| match read_pkl(pkl, &[]) {
            Err(PthError::PickleLimit {
                what,
                limit,
                pickle_bytes,
                ..
            }) => (what, limit, pickle_bytes),
            other => panic!("expected a pickle limit, got {other:?}"),
        };
        // 20 000 MEMOIZE opcodes: over this pickle's share of memo entries.
        let n = 20_000;
        let mut pkl = P::new().op(op::NONE);
        pkl.0.extend(std::iter::repeat_n(op::MEMOIZE, n));
        let pkl = pkl.stop();
        assert_eq!(
            limit_of(&pkl),
            ("memo entries", cap(pkl.len(), MAX_MEMO), pkl.len())
        );
        // 2^21 of them (2 MiB): stopped at the absolute cap.
        let mut pkl = P::new().op(op::NONE);
        pkl.0.extend(std::iter::repeat_n(op::MEMOIZE, 1 << 21));
        let pkl = pkl.stop();
        assert_eq!(limit_of(&pkl).1, MAX_MEMO);
        let e = read_pkl(&pkl, &[]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("more than {MAX_MEMO} memo entries")),
            "{e}"
        );
        // 20 000 pushes without a pop: over the stack's share.
        let mut pkl = P::new();
        pkl.0.extend(std::iter::repeat_n(op::NONE, n));
        let pkl = pkl.stop();
        assert_eq!(
            limit_of(&pkl),
            ("stack values", cap(pkl.len(), MAX_STACK), pkl.len())
        );
        // Containers: one per byte at most, and never above MAX_OBJECTS.
        let mut pkl = P::new().op(op::NONE);
        pkl.0
            .extend(std::iter::repeat_n(op::TUPLE1, MAX_OBJECTS + 1));
        assert_eq!(limit_of(&pkl.stop()).1, MAX_OBJECTS);
    }

    #[test]
    fn huge_memo_indices_and_lengths() {
        // A sparse memo index is fine (Python's memo is a dict)...
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .raw(&[op::LONG_BINPUT, 0xff, 0xff, 0xff, 0xff])
            .raw(&[op::LONG_BINGET, 0xff, 0xff, 0xff, 0xff])
            .stop();
        assert_eq!(read_pkl(&pkl, &[]).unwrap(), []);
        // ...reading a slot never written is an error.
        let pkl = P::new()
            .raw(&[op::LONG_BINGET, 0xfe, 0xff, 0xff, 0xff])
            .stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::MemoMissing {
                index: 0xffff_fffe,
                offset: 2
            })
        ));
        // String lengths beyond the pickle.
        for head in [
            vec![op::BINUNICODE, 0xff, 0xff, 0xff, 0xff],
            vec![
                op::BINUNICODE8,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
            ],
            vec![op::SHORT_BINUNICODE, 200],
        ] {
            let pkl = P::new().raw(&head).raw(b"abc").stop();
            assert!(matches!(
                read_pkl(&pkl, &[]),
                Err(PthError::TruncatedPickle { .. })
            ));
        }
        // Integers wider than 64 bits.
        let pkl = P::new().raw(&[op::LONG1, 9]).raw(&[1; 9]).stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::MalformedPickle { .. })
        ));
    }

    #[test]
    fn long1_is_sign_extended() {
        let mut u = Unpickler::new(&[op::LONG1, 2, 0x00, 0x80, op::LONG1, 0, op::TUPLE2, op::STOP]);
        u.op_start = 0;
        let out = u.run().unwrap();
        let Value::Obj(id) = out.top else { panic!() };
        let Object::Tuple(items) = &out.objects[id] else {
            panic!()
        };
        assert!(matches!(items[..], [Value::Int(-32768), Value::Int(0)]));
    }

    #[test]
    fn stack_and_mark_misuse_are_errors() {
        for body in [
            vec![op::REDUCE],
            vec![op::TUPLE],
            vec![op::TUPLE3],
            vec![op::NONE, op::SETITEM],
            vec![op::NONE, op::NONE, op::NONE, op::SETITEM],
            vec![op::EMPTY_LIST, op::MARK, op::NONE, op::SETITEMS],
            vec![op::EMPTY_DICT, op::MARK, op::NONE, op::APPENDS],
            vec![op::EMPTY_DICT, op::MARK, op::NONE, op::SETITEMS],
            vec![op::NONE, op::EMPTY_TUPLE, op::REDUCE],
            vec![op::NONE, op::BINPERSID],
            vec![op::EMPTY_LIST, op::EMPTY_DICT, op::BUILD],
            vec![op::NONE, op::NONE, op::STACK_GLOBAL],
            vec![op::BINPUT, 3],
            vec![op::NONE, op::MARK, op::TUPLE1],
            vec![op::NONE, op::MARK, op::BINPUT, 0],
            vec![op::EMPTY_DICT, op::MARK, op::NONE, op::NONE, op::SETITEM],
        ] {
            let pkl = P::new().raw(&body).stop();
            let err = read_pkl(&pkl, &[]).unwrap_err();
            assert!(
                matches!(err, PthError::MalformedPickle { .. }),
                "{body:?}: {err}"
            );
        }
    }

    #[test]
    fn ordered_dict_with_metadata_and_overwrites() {
        // OrderedDict() with two items, "a" set twice (keeps its first
        // position, takes the last value), then BUILD {"_metadata": {...}}.
        let pkl = P::new()
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::MARK)
            .str("a")
            .f32_tensor("0", &[2])
            .str("b")
            .f32_tensor("1", &[1])
            .str("a")
            .f32_tensor("2", &[3])
            .op(op::SETITEMS)
            .op(op::EMPTY_DICT)
            .str("_metadata")
            .op(op::EMPTY_DICT)
            .str("")
            .op(op::EMPTY_DICT)
            .str("version")
            .int(1)
            .op(op::SETITEM)
            .op(op::SETITEM)
            .op(op::SETITEM)
            .op(op::BUILD)
            .stop();
        let t = read_pkl(&pkl, &[("0", &iota(2)), ("1", &iota(1)), ("2", &iota(3))]).unwrap();
        let summary: Vec<(&str, &[usize])> = t
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(summary, [("a", &[3][..]), ("b", &[1][..])]);
    }

    #[test]
    fn parameters_are_their_data() {
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .str("p")
            .global("torch._utils", "_rebuild_parameter")
            .f32_tensor("0", &[2])
            .op(op::NEWTRUE)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::TUPLE3)
            .op(op::REDUCE)
            .op(op::SETITEM)
            .stop();
        let t = read_pkl(&pkl, &[("0", &iota(2))]).unwrap();
        assert_eq!(t[0].to_f32().unwrap(), [0.0, 1.0]);
    }

    #[test]
    fn top_level_selection() {
        let sd = |p: P| {
            p.op(op::EMPTY_DICT)
                .str("w")
                .f32_tensor("0", &[2])
                .op(op::SETITEM)
        };
        let storage: &[(&str, &[u8])] = &[("0", &iota(2))];
        // {"epoch": 3, "model": {...}} and {"state_dict": {...}, "lr": 0.5}.
        for key in ["model", "state_dict"] {
            let pkl = sd(P::new()
                .op(op::EMPTY_DICT)
                .op(op::MARK)
                .str("epoch")
                .int(3)
                .str("opt")
                .op(op::NONE)
                .str(key))
            .str("lr")
            .raw(&[op::BINFLOAT, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0])
            .op(op::SETITEMS)
            .stop();
            let t = read_pkl(&pkl, storage).unwrap();
            assert_eq!(t[0].name, "w");
        }
        // A bad entry inside "model" is named with its prefix.
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .str("model")
            .op(op::EMPTY_DICT)
            .str("x")
            .op(op::EMPTY_LIST)
            .op(op::SETITEM)
            .op(op::SETITEM)
            .stop();
        let err = read_pkl(&pkl, &[]).unwrap_err();
        assert!(
            matches!(&err, PthError::NotATensor { key, found: "list" } if key == "model.x"),
            "{err}"
        );
        // Mixed tensors and other values, no "model".
        let pkl = sd(P::new()).str("step").int(1).op(op::SETITEM).stop();
        assert!(matches!(
            read_pkl(&pkl, storage),
            Err(PthError::NotATensor { key, found: "int" }) if key == "step"
        ));
        // No tensors at all.
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .str("epoch")
            .int(1)
            .op(op::SETITEM)
            .stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::NotAStateDict { .. })
        ));
        // A tensor under an integer key.
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .int(0)
            .f32_tensor("0", &[2])
            .op(op::SETITEM)
            .stop();
        assert!(matches!(
            read_pkl(&pkl, storage),
            Err(PthError::NonStringKey { found: "int" })
        ));
        // A bare tensor, not a dict.
        let pkl = P::new().f32_tensor("0", &[2]).stop();
        assert!(matches!(
            read_pkl(&pkl, storage),
            Err(PthError::NotAStateDict { found }) if found == "a tensor"
        ));
    }

    #[test]
    fn hostile_geometry_is_refused() {
        let s = iota(6);
        let storage: &[(&str, &[u8])] = &[("0", &s)];
        let read = |offset, size: &[i64], stride: &[i64]| {
            read_pkl(
                &one_tensor("FloatStorage", 6, offset, size, stride),
                storage,
            )
        };
        assert!(matches!(
            read(0, &[-1], &[1]),
            Err(PthError::InvalidTensor { .. })
        ));
        assert!(matches!(
            read(0, &[2], &[-1]),
            Err(PthError::InvalidTensor { .. })
        ));
        assert!(matches!(
            read(-1, &[2], &[1]),
            Err(PthError::InvalidTensor { .. })
        ));
        assert!(matches!(
            read(0, &[2, 3], &[3]),
            Err(PthError::InvalidTensor { .. })
        ));
        let rank = MAX_RANK + 1;
        assert!(matches!(
            read(0, &vec![1; rank], &vec![1; rank]),
            Err(PthError::InvalidTensor { .. })
        ));
        // Past the end, by offset, by extent, and by overflowing arithmetic.
        assert!(matches!(
            read(5, &[2], &[1]),
            Err(PthError::TensorOutOfBounds {
                end: 7,
                storage_elements: 6,
                ..
            })
        ));
        assert!(matches!(
            read(0, &[2, 3], &[4, 1]),
            Err(PthError::TensorOutOfBounds { end: 7, .. })
        ));
        assert!(matches!(
            read(i64::MAX, &[1], &[1]),
            Err(PthError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            read(0, &[4, 2], &[i64::MAX, 1]),
            Err(PthError::TensorOutOfBounds { end: u64::MAX, .. })
        ));
        assert!(matches!(
            read(7, &[0], &[1]),
            Err(PthError::TensorOutOfBounds { .. })
        ));
        // Absurd element counts, overflowing or not.
        assert!(matches!(
            read(0, &[1 << 62, 1 << 62], &[0, 0]),
            Err(PthError::TooManyElements {
                elements: u64::MAX,
                ..
            })
        ));
        assert!(matches!(
            read(0, &[1 << 33], &[0]),
            Err(PthError::TooManyElements { .. })
        ));
        // Broadcasting one element to 2^30 elements: too much expansion.
        assert!(matches!(
            read(0, &[1 << 30], &[0]),
            Err(PthError::ExpansionLimit { .. })
        ));
        // A size-1 dimension's stride does not matter.
        let t = read(1, &[1, 2], &[i64::MAX, 1]).unwrap();
        assert_eq!(t[0].to_f32().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn storage_files_must_match_the_pickle() {
        let pkl = simple_pickle();
        // Too short, too long, missing.
        for data in [iota(5), iota(7)] {
            assert!(matches!(
                read_pkl(&pkl, &[("0", &data)]),
                Err(PthError::StorageSize { elements: 6, .. })
            ));
        }
        assert!(matches!(
            read_pkl(&pkl, &[("1", &iota(6))]),
            Err(PthError::MissingEntry { entry }) if entry == "archive/data/0"
        ));
        // A huge declared storage.
        let pkl = one_tensor("FloatStorage", i64::MAX, 0, &[2], &[1]);
        assert!(matches!(
            read_pkl(&pkl, &[("0", &iota(2))]),
            Err(PthError::StorageSize { .. })
        ));
        // One storage seen as two dtypes, or with two sizes.
        let two = |c2: &str, n2: i64| {
            P::new()
                .op(op::EMPTY_DICT)
                .op(op::MARK)
                .str("a")
                .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
                .str("b")
                .tensor(c2, "0", n2, 0, &[2], &[1])
                .op(op::SETITEMS)
                .stop()
        };
        assert!(matches!(
            read_pkl(&two("IntStorage", 4), &[("0", &iota(4))]),
            Err(PthError::StorageDType {
                first: PthDType::F32,
                second: PthDType::I32,
                ..
            })
        ));
        assert!(matches!(
            read_pkl(&two("FloatStorage", 3), &[("0", &iota(4))]),
            Err(PthError::StorageSize { elements: 3, .. })
        ));
        // Storage keys cannot leave data/.
        let pkl = one_tensor("FloatStorage", 2, 0, &[2], &[1]);
        let at = pkl.windows(6).position(|w| w == b"X\x01\0\0\x000").unwrap();
        let mut evil = pkl[..at].to_vec();
        evil.extend_from_slice(b"X\x04\0\0\x00../0");
        evil.extend_from_slice(&pkl[at + 6..]);
        let err = read_pkl(&evil, &[("0", &iota(2))]).unwrap_err();
        assert!(
            matches!(&err, PthError::MalformedPickle { reason, .. } if reason.contains("../0")),
            "{err}"
        );
    }

    #[test]
    fn shared_storage_is_read_once_and_reused() {
        let pkl = P::new()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("a")
            .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
            .str("b")
            .tensor("FloatStorage", "0", 4, 2, &[2], &[1])
            .str("c")
            .tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
            .op(op::SETITEMS)
            .stop();
        let t = read_pkl(&pkl, &[("0", &iota(4))]).unwrap();
        assert_eq!(t[0].to_f32().unwrap(), [0., 1., 2., 3.]);
        assert_eq!(t[1].to_f32().unwrap(), [2., 3.]);
        assert_eq!(t[2].to_f32().unwrap(), [0., 1., 2., 3.]);
    }

    #[test]
    fn format_sniffing() {
        assert!(matches!(
            read_pth_bytes(b"\x80\x02\x8a\x0alegacy"),
            Err(PthError::Legacy)
        ));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(matches!(read_pth_bytes(&tar), Err(PthError::Legacy)));
        for junk in [&b""[..], b"hello, world", b"PK\x03\x04"] {
            assert!(matches!(read_pth_bytes(junk), Err(PthError::NotZip { .. })));
        }
        // A zip that is not a checkpoint.
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(
            "readme.txt",
            SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
        )
        .unwrap();
        zip.write_all(b"hi").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        assert!(matches!(
            read_pth_bytes(&bytes),
            Err(PthError::MissingEntry { .. })
        ));
    }

    #[test]
    fn io_errors_name_the_file() {
        let path = Path::new("/nonexistent/dir/model.pth");
        let err = read_pth(path).unwrap_err();
        assert!(matches!(&err, PthError::Io { path: p, .. } if p == path));
        assert!(err.to_string().contains("model.pth"));
    }

    #[test]
    fn is_contiguous_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[0, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        assert!(!is_contiguous(&[2], &[0]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes as data.pkl: an error or a result, never a panic.
        #[test]
        fn arbitrary_pickles_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut pkl = vec![op::PROTO, 2];
            pkl.extend(body);
            let _ = read_pkl(&pkl, &[("0", &iota(6))]);
        }

        /// A valid pickle with a few bytes changed.
        #[test]
        fn mutated_pickles_never_panic(edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..6)) {
            let mut pkl = simple_pickle();
            for (at, b) in edits {
                let n = pkl.len();
                pkl[at % n] = b;
            }
            let _ = read_pkl(&pkl, &[("0", &iota(6))]);
        }

        /// A valid archive with a few bytes changed.
        #[test]
        fn mutated_archives_never_panic(edits in proptest::collection::vec((0usize..8192, proptest::num::u8::ANY), 1..6)) {
            let mut bytes = archive(&simple_pickle(), &[("0", &iota(6))]);
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            let _ = read_pth_bytes(&bytes);
        }
    }
}
