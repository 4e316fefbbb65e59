//! Element types of stored tensors ([`PthDType`]) and the tensors read ([`PthTensor`]).

use super::PthError;

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
    pub(super) fn from_storage_class(name: &str) -> Option<Self> {
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
