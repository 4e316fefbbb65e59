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
//!
//! # Layout
//!
//! `mod.rs` (limits, entry points) → `archive.rs` (the zip archive and its
//! entries) → `unpickle.rs` (the restricted unpickler and the state dict's
//! selection) → `plan.rs` (each tensor checked against its storage, then
//! copied out) ; `tensor.rs` (element types, the tensors read) and `error.rs`
//! ([`PthError`]) under all of them.

mod archive;
mod error;
mod plan;
mod tensor;
mod unpickle;

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::ZipArchive;

use archive::Archive;
pub use error::PthError;
use plan::{materialize, plan_tensors};
pub use tensor::{PthDType, PthTensor};
use unpickle::{select_state_dict, Unpickler};

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
pub(crate) const MAX_VALUES: usize = 1 << 23;

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

/// Deepest nesting of MARKs the unpickler accepts (a state dict needs 3).
pub const MAX_MARK_DEPTH: usize = 1024;

/// How many bytes of the file are looked at to recognise its format.
pub(crate) const SNIFF_BYTES: usize = 512;

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
pub fn read_pth(path: impl AsRef<Path>) -> Result<Vec<PthTensor>, PthError> {
    let path = path.as_ref();
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
