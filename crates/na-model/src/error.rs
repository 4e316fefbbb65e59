//! The error type of model construction, weight loading and inference.

use std::path::PathBuf;

/// Everything that can go wrong building or running a model.
///
/// Each variant carries the offending names and values, so the message alone
/// says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The configuration is inconsistent: `field` is the offending field
    /// (e.g. `num_heads`, `dilations`), `reason` names it and its value.
    #[error("invalid model configuration: {reason}")]
    Config {
        /// The field at fault, as spelled in [`crate::Config`].
        field: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A JSON configuration that does not parse as a [`crate::Config`].
    #[error("invalid model configuration: JSON: {0}")]
    ConfigJson(#[source] serde_json::Error),
    /// [`crate::Model::forward`] on a model loaded with
    /// [`crate::Head::Backbone`].
    #[error("this model was loaded as a backbone (Head::Backbone); use features()")]
    NotAClassifier,
    /// [`crate::Model::features`] on a model loaded with
    /// [`crate::Head::Classifier`].
    #[error("this model was loaded as a classifier; load it with Head::Backbone")]
    NotABackbone,
    /// A parameter name the model does not have.
    #[error("no parameter named {name}")]
    UnknownParameter {
        /// The name asked for.
        name: String,
    },
    /// Training or evaluation settings that cannot be used with this model
    /// or data: `field` is the setting at fault (e.g. `epochs`,
    /// `val_images`), `reason` names it and its value.
    #[error("invalid training settings: {reason}")]
    Training {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// A training run asked to resume from a checkpoint it cannot continue.
    #[error("{} {refusal}", path.display())]
    Resume {
        /// The checkpoint's manifest.
        path: PathBuf,
        /// Why it cannot be resumed.
        refusal: ResumeRefusal,
    },
    /// A configuration field outside its documented range (the `MAX_*`
    /// constants of [`crate::config`]).
    #[error("invalid model configuration: {field} = {value} is out of range ({range})")]
    OutOfRange {
        /// The field, e.g. `kernel_size` or `dilations[0][1]`.
        field: String,
        /// Its value, as written.
        value: String,
        /// The accepted range and the constant that sets it.
        range: String,
    },
    /// A size computed from a configuration and an input (parameters,
    /// multiply-adds, activation bytes) does not fit in 64 bits.
    #[error("{what} overflows 64 bits")]
    Overflow {
        /// What was being computed.
        what: String,
    },
    /// A forward pass would need more activation memory than allowed; refused
    /// before anything is allocated (see [`crate::Config::plan_bytes`]).
    #[error(
        "{what} needs {} of activations, over the {} limit (set {} to raise it)",
        crate::limits::human(u128::from(*needed)),
        crate::limits::human(u128::from(*limit)),
        crate::limits::MAX_MEMORY_ENV
    )]
    MemoryLimit {
        /// The model, input size and batch.
        what: String,
        /// Bytes the plan needs.
        needed: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A preset name that does not exist.
    #[error("unknown model `{name}` (known: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known preset names, comma separated.
        known: String,
    },
    /// The weights do not fit the model: every missing, unexpected and
    /// mis-shaped tensor is listed.
    #[error("{}", describe_mismatch(missing, unexpected, mis_shaped))]
    WeightsMismatch {
        /// Tensors the model needs that the file lacks.
        missing: Vec<String>,
        /// Tensors in the file that the model does not use.
        unexpected: Vec<String>,
        /// `(name, expected shape, shape in the file)`.
        mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
    /// Weights that cannot be read or written (I/O, bad format,
    /// unsupported dtype).
    #[error("{}: {source}", path.display())]
    WeightsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WeightsError,
    },
    /// A training checkpoint set that cannot be written or read back.
    #[error("{}: {source}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: CheckpointError,
    },
    /// An input tensor of the wrong shape.
    #[error("input has shape {got:?}, expected {expected}")]
    InputShape {
        /// What the model expects, in words.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// The neighborhood-attention operator refused a problem.
    #[error("neighborhood attention: {0}")]
    Attention(#[from] na_core::Error),
    /// An output file could not be planned, written or published (boxed:
    /// it carries paths, and every `Result` of the crate pays for the
    /// largest variant).
    #[error(transparent)]
    Output(Box<crate::output::OutputError>),
    /// A backend (device) failure.
    #[error("backend `{backend}`: {reason}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why a training run cannot resume from a checkpoint (inside
/// [`ModelError::Resume`], which names the manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeRefusal {
    /// The configuration, options or data differ from the checkpoint's run.
    #[error(
        "was written by another run (configuration, options or data differ); resume with the \
         same ones or choose another --out"
    )]
    OtherRun,
    /// The checkpoint was written inside an epoch (a `max_steps` stop).
    #[error(
        "was written in the middle of an epoch (a --max-steps run) and cannot be resumed \
         exactly; start a new run"
    )]
    MidEpoch,
}

/// Why a training checkpoint set could not be written or read back (inside
/// [`ModelError::Checkpoint`], which names the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file or folder could not be read, written or published.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The manifest (`checkpoint.json`) does not parse.
    #[error("not a checkpoint manifest of this version of na ({0})")]
    Manifest(#[source] serde_json::Error),
    /// The manifest could not be encoded.
    #[error("cannot encode the manifest: {0}")]
    Encode(#[source] serde_json::Error),
    /// The manifest names a set folder outside the checkpoint folder.
    #[error("names the set {0:?}")]
    SetName(String),
    /// The manifest does not list a file of the set.
    #[error("lists no {0}")]
    Unlisted(String),
    /// A file whose length or checksum differs from the manifest's.
    #[error(
        "damaged checkpoint: {got_bytes} bytes with CRC-32 {got_crc32:08x}, the manifest says \
         {want_bytes} bytes with CRC-32 {want_crc32:08x}"
    )]
    Damaged {
        /// Length found.
        got_bytes: u64,
        /// CRC-32 found.
        got_crc32: u32,
        /// Length the manifest records.
        want_bytes: u64,
        /// CRC-32 the manifest records.
        want_crc32: u32,
    },
    /// A file of the set that is not valid safetensors.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// An optimiser moment the set lacks, or of another shape.
    #[error("{0} is missing or mis-shaped")]
    Moment(String),
}

/// Why weights could not be parsed or written (inside
/// [`ModelError::WeightsFile`], which names the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// Not a safetensors file, or a damaged one.
    #[error("not a valid safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A PyTorch checkpoint that could not be read.
    #[cfg(feature = "pth")]
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
    /// A PyTorch checkpoint, in a build without the `pth` feature.
    #[error("a PyTorch checkpoint (zip archive): this build of na-model reads them only with its `pth` feature")]
    PthDisabled,
    /// A tensor of a type that is not a float.
    #[error(
        "tensor `{name}` has dtype {dtype}; only F32, F16, BF16 and F64 weights are supported"
    )]
    Dtype {
        /// The tensor.
        name: String,
        /// Its type, as the file names it.
        dtype: String,
    },
    /// A tensor whose data does not match its shape.
    #[error("tensor `{name}`: shape {shape:?} does not match its {len} values")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The values it holds.
        len: usize,
    },
}

impl From<crate::output::OutputError> for ModelError {
    fn from(e: crate::output::OutputError) -> Self {
        ModelError::Output(Box::new(e))
    }
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    mis_shaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    const SHOW: usize = 12;
    let list = |v: &[String]| {
        let mut s = v.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > SHOW {
            s.push_str(&format!(", ... ({} more)", v.len() - SHOW));
        }
        s
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing tensor(s): {}",
            missing.len(),
            list(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected tensor(s): {}",
            unexpected.len(),
            list(unexpected)
        ));
    }
    if !mis_shaped.is_empty() {
        let v: Vec<String> = mis_shaped
            .iter()
            .map(|(n, want, got)| format!("{n} (expected {want:?}, file has {got:?})"))
            .collect();
        parts.push(format!("{} mis-shaped tensor(s): {}", v.len(), list(&v)));
    }
    format!("the weights do not match the model: {}", parts.join("; "))
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = core::result::Result<T, E>;
