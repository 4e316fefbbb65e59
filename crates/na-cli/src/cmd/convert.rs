//! `na convert`: a PyTorch checkpoint (`.pth`, `torch.save` zip format) to a
//! safetensors file, keeping tensor names, shapes and (unless `--dtype` says
//! otherwise) element types.
//!
//! The checkpoint is read by [`na_model::pth`], which models the few pickle
//! operations a state dict needs and executes nothing; a checkpoint holding
//! anything else (an `argparse.Namespace`, custom classes) is refused. The
//! output gets the safetensors `__metadata__` `{"format": "pt", "source":
//! "<input file name>"}`. It is written to a hidden temporary file beside the
//! target and renamed into place once complete, so a failed run never leaves
//! a partial or missing-but-truncated output; an existing target is replaced
//! only on success.
//!
//! Memory: the tensors plus the encoded file, about twice the checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use na_core::{bf16, f16};
use na_model::output::Outputs;
use na_model::pth::{read_pth, PthDType, PthTensor};
use safetensors::tensor::{Dtype, TensorView};

/// Element type of the floating-point tensors in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// As stored in the checkpoint.
    Keep,
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (round to nearest even; out-of-range values become ±inf).
    F16,
    /// bfloat16 (round to nearest even).
    Bf16,
}

impl DTypeArg {
    /// The checkpoint dtype floats are converted to, or `None` for `keep`.
    fn target(self) -> Option<PthDType> {
        match self {
            DTypeArg::Keep => None,
            DTypeArg::F32 => Some(PthDType::F32),
            DTypeArg::F16 => Some(PthDType::F16),
            DTypeArg::Bf16 => Some(PthDType::BF16),
        }
    }
}

/// Arguments of `na convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint: a state dict, or a dict holding one under "model" or "state_dict".
    #[arg(value_name = "INPUT.pth")]
    pub input: PathBuf,
    /// The safetensors file to write (replaced if it exists).
    #[arg(value_name = "OUTPUT.safetensors")]
    pub output: PathBuf,
    /// Element type of floating-point tensors in the output; integer and bool tensors are kept.
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: DTypeArg,
}

/// The safetensors dtype of a checkpoint dtype (every one has an equivalent).
fn safetensors_dtype(d: PthDType) -> Dtype {
    match d {
        PthDType::F32 => Dtype::F32,
        PthDType::F16 => Dtype::F16,
        PthDType::BF16 => Dtype::BF16,
        PthDType::F64 => Dtype::F64,
        PthDType::I64 => Dtype::I64,
        PthDType::I32 => Dtype::I32,
        PthDType::I16 => Dtype::I16,
        PthDType::I8 => Dtype::I8,
        PthDType::U8 => Dtype::U8,
        PthDType::Bool => Dtype::BOOL,
    }
}

/// One little-endian float element as f64 (exact for every float dtype).
fn float_at(dtype: PthDType, c: &[u8]) -> f64 {
    match (dtype, c) {
        (PthDType::F32, &[a, b, c, d]) => f64::from(f32::from_le_bytes([a, b, c, d])),
        (PthDType::F16, &[a, b]) => f16::from_le_bytes([a, b]).to_f64(),
        (PthDType::BF16, &[a, b]) => bf16::from_le_bytes([a, b]).to_f64(),
        (PthDType::F64, &[a, b, c, d, e, f, g, h]) => f64::from_le_bytes([a, b, c, d, e, f, g, h]),
        // Only called on float dtypes, with chunks of their size.
        _ => f64::NAN,
    }
}

/// Converts a floating-point tensor to `to` with a single rounding; other
/// tensors are returned unchanged.
fn cast(t: PthTensor, to: PthDType) -> PthTensor {
    if !t.dtype.is_float() || t.dtype == to {
        return t;
    }
    let from = t.dtype;
    let values = t.data.chunks_exact(from.size()).map(|c| float_at(from, c));
    let mut data = Vec::with_capacity(t.numel() * to.size());
    match to {
        PthDType::F32 => values.for_each(|v| data.extend_from_slice(&(v as f32).to_le_bytes())),
        PthDType::F16 => {
            values.for_each(|v| data.extend_from_slice(&f16::from_f64(v).to_le_bytes()))
        }
        PthDType::BF16 => {
            values.for_each(|v| data.extend_from_slice(&bf16::from_f64(v).to_le_bytes()))
        }
        PthDType::F64 => values.for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
        // Not a float target: `DTypeArg::target` never gives one.
        _ => return t,
    }
    PthTensor {
        dtype: to,
        data,
        ..t
    }
}

/// Runs `na convert`.
pub fn run(args: &ConvertArgs) -> Result<()> {
    let (input, output) = (&args.input, &args.output);
    let mut outs = Outputs::new();
    outs.input("INPUT.pth", input);
    let out_id = outs.output("OUTPUT.safetensors", output)?;
    let mut tensors =
        read_pth(input).with_context(|| format!("cannot convert {}", input.display()))?;
    if let Some(to) = args.dtype.target() {
        tensors = tensors.into_iter().map(|t| cast(t, to)).collect();
    }

    let parameters: usize = tensors.iter().map(PthTensor::numel).sum();
    // Dtype counts in order of first appearance, for the summary.
    let mut dtypes: Vec<(PthDType, usize)> = Vec::new();
    for t in &tensors {
        match dtypes.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n += 1,
            None => dtypes.push((t.dtype, 1)),
        }
    }

    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(safetensors_dtype(t.dtype), t.shape.clone(), &t.data)
                .map(|v| (t.name.as_str(), v))
                .with_context(|| format!("tensor {:?}", t.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let source = input.file_name().map_or_else(
        || input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source".to_string(), source),
    ]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .with_context(|| format!("cannot encode {} as safetensors", input.display()))?;
    outs.stage(out_id, &bytes)?;
    outs.commit()?;

    let dtype_summary: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{} x{n}", d.name()))
        .collect();
    crate::outln!(
        "na convert: {} tensors ({}), {parameters} parameters, wrote {} ({})",
        tensors.len(),
        dtype_summary.join(", "),
        output.display(),
        na_model::limits::human(bytes.len() as u128)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: PthDType, data: Vec<u8>) -> PthTensor {
        PthTensor {
            name: "t".into(),
            dtype,
            shape: vec![data.len() / dtype.size()],
            data,
        }
    }

    #[test]
    fn casts_round_once_and_keep_integers() {
        let x = [1.0f32, -0.1, 65504.0, 1e6];
        let t = tensor(
            PthDType::F32,
            x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let h = cast(t.clone(), PthDType::F16);
        assert_eq!(h.dtype, PthDType::F16);
        let back: Vec<f32> = h.to_f32().unwrap();
        let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(back, want);
        assert!(back[3].is_infinite());
        let b = cast(t.clone(), PthDType::BF16);
        assert_eq!(
            b.to_f32().unwrap(),
            x.iter()
                .map(|&v| bf16::from_f32(v).to_f32())
                .collect::<Vec<_>>()
        );
        // f64 -> f16 rounds once, directly.
        let d = tensor(PthDType::F64, 0.1f64.to_le_bytes().to_vec());
        assert_eq!(
            cast(d, PthDType::F16).data,
            f16::from_f64(0.1).to_le_bytes()
        );
        // Identity and integers.
        assert_eq!(cast(t.clone(), PthDType::F32), t);
        let i = tensor(PthDType::I64, 7i64.to_le_bytes().to_vec());
        assert_eq!(cast(i.clone(), PthDType::F16), i);
    }
}
