//! Why a checkpoint could not be read: [`PthError`].

use std::io;
use std::path::PathBuf;

use zip::result::ZipError;
use zip::CompressionMethod;

use super::PthDType;

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
    /// [`PICKLE_BYTES_PER_ENTRY`](super::PICKLE_BYTES_PER_ENTRY)).
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

    /// A tensor has more elements than [`MAX_TENSOR_ELEMENTS`](super::MAX_TENSOR_ELEMENTS).
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
    /// (see [`MAX_EXPANSION`](super::MAX_EXPANSION)).
    #[error("the tensors would take {output_bytes} bytes from {storage_bytes} bytes of storage, more than the {limit} allowed")]
    ExpansionLimit {
        /// Total bytes of all tensors, copied out contiguous.
        output_bytes: u64,
        /// Total bytes of the storages they view.
        storage_bytes: u64,
        /// The cap.
        limit: u64,
    },

    /// [`PthTensor::to_f32`](super::PthTensor::to_f32) was called on an integer or boolean tensor.
    #[error("tensor {name:?} holds {dtype} values, not floating point")]
    NotFloat {
        /// The tensor's key.
        name: String,
        /// Its element type.
        dtype: PthDType,
    },
}

/// A count for an error message; `u64::MAX` stands for an overflow.
pub(super) fn at_least(n: u64) -> String {
    if n == u64::MAX {
        "2^64 or more".to_string()
    } else {
        n.to_string()
    }
}

/// The name of a zip compression method (whether or not the zip crate was
/// built to decode it).
pub(super) fn method_name(method: CompressionMethod) -> String {
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
