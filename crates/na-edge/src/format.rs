//! The weight blob: one little-endian byte string holding the model's
//! configuration and every tensor, read in place ([`Blob::parse`]) and,
//! under the `alloc` feature, written by [`write_blob`].
//!
//! # Layout, byte by byte
//!
//! All integers are little-endian. Offsets are from the blob's first byte.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic, [`MAGIC`] = `b"NAEDGEWB"` |
//! | 8 | 4 | `u32` format version, [`VERSION`] = 1 |
//! | 12 | 4 | `u32` offset of the tensor table, [`HEADER_LEN`] = 624 |
//! | 16 | 4 | `u32` number of tensors `n` |
//! | 20 | 4 | `u32` reserved, written 0, ignored |
//! | 24 | 4 | `u32` arch: 0 NAT, 1 DiNAT (2 DiNAT_s, 3 isotropic: refused) |
//! | 28 | 4 | `u32` `in_chans` |
//! | 32 | 4 | `u32` `embed_dim` |
//! | 36 | 4 | `u32` `levels` (1..=4) |
//! | 40 | 4 | `u32` `kernel_size` |
//! | 44 | 4 | `u32` `num_classes` (0: no head) |
//! | 48 | 8 | `u32` × 2 `stem_strides` |
//! | 56 | 4 | `u32` layer scale: 0 no, 1 yes (`gamma1`/`gamma2` tensors) |
//! | 60 | 16 | `u32` × 4 `depths` (0 past `levels`) |
//! | 76 | 16 | `u32` × 4 `num_heads` (0 past `levels`) |
//! | 92 | 16 | `u32` × 4 `mlp_hidden` (0 past `levels`) |
//! | 108 | 512 | `u32` × 4 × 32 dilations, level-major (`[i][j]` at `108 + 4·(32 i + j)`; entries past a level's depth are ignored and written 1) |
//! | 620 | 4 | `u32` reserved, written 0, ignored |
//! | 624 | 104·n | the tensor table, `n` entries of [`ENTRY_LEN`] bytes |
//! | … | … | tensor data, each tensor at its own offset, a multiple of [`DATA_ALIGN`] (64); zero bytes between |
//!
//! One tensor table entry (104 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 64 | key name, UTF-8, padded with NUL bytes (no NUL inside the name) |
//! | 64 | 4 | `u32` dtype: 0 = f32, 1 = f16 (IEEE binary16), 2 = int8 per output channel (below) |
//! | 68 | 4 | `u32` rank, 1..=4 |
//! | 72 | 16 | `u32` × 4 dims (0 past the rank) |
//! | 88 | 8 | `u64` byte offset of the data (multiple of 64) |
//! | 96 | 8 | `u64` byte length of the data (`numel × 4`, `numel × 2`, or `dims[0] × 4 + numel` for int8) |
//!
//! An int8 tensor's data is `dims[0]` f32 scales, one per output channel
//! (row), then its `numel` values as `i8`: value `i` is `q[i] × scale[i /
//! (numel / dims[0])]` (symmetric, no zero point). [`write_blob`] with
//! [`DType::I8`] stores the linear layers' weights (the rank-2 `*.weight`
//! tensors: `qkv`, `proj`, `fc1`, `fc2`, `head`) so, scale = max |w| / 127
//! per row, and every other tensor as f16.
//!
//! Entries appear in the **canonical order** of the configuration's walk
//! ([`EdgeConfig::for_each_tensor`], the std model's `param_shapes` order),
//! with the authors' checkpoint key names:
//! `patch_embed.proj.{0,1}.{weight,bias}`, `patch_embed.norm.{weight,bias}`,
//! per level `i` and block `j` `levels.{i}.blocks.{j}.{norm1.weight,
//! norm1.bias, attn.qkv.weight, attn.qkv.bias, attn.rpb, attn.proj.weight,
//! attn.proj.bias, norm2.weight, norm2.bias, mlp.fc1.weight, mlp.fc1.bias,
//! mlp.fc2.weight, mlp.fc2.bias[, gamma1, gamma2]}`, then (not after the
//! last level) `levels.{i}.downsample.{reduction.weight, norm.weight,
//! norm.bias}`; then `norm.{weight,bias}` and `head.{weight,bias}`. Shapes
//! are PyTorch's (`[out, in]` linear, `[out, in, 3, 3]` conv,
//! `[heads, 2k-1, 2k-1]` rpb). Each tensor may have its own dtype.
//!
//! # Reading in place
//!
//! [`Blob::parse`] validates everything once (header, configuration,
//! every entry's name, shape, dtype, length, bounds and alignment), so that
//! inference never fails on the blob. Tensors are viewed in place, never
//! copied: this needs a little-endian target and the data's addresses
//! aligned to the dtype (4 bytes for f32), which holds whenever the blob's
//! first byte is 4-byte aligned (offsets are multiples of 64). A blob at
//! another address gets [`EdgeError::Misaligned`]; under `alloc`,
//! [`AlignedBlob`] copies bytes to a 64-byte aligned buffer.

use half::f16;

use crate::config::{Arch, EdgeConfig, MAX_DEPTH, MAX_LEVELS};
use crate::error::{EdgeError, KeyName, Shape};

/// The blob's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"NAEDGEWB";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the header (magic, counts, configuration): the table's offset.
pub const HEADER_LEN: usize = 624;
/// Bytes of one tensor table entry.
pub const ENTRY_LEN: usize = 104;
/// Bytes of a key name field (defined with the configuration's key walk).
pub use crate::config::NAME_LEN;
/// Alignment of every tensor's data offset.
pub const DATA_ALIGN: usize = 64;

/// Storage type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// int8 with one f32 scale per output channel (see the module docs).
    I8,
}

impl DType {
    /// The code stored in a table entry.
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::I8 => 2,
        }
    }

    /// Bytes per element (int8: the values only, without the scales).
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::I8 => 1,
        }
    }

    /// Bytes of a tensor of `numel` values and `rows` output channels
    /// (`dims[0]`), or `None` on overflow.
    pub fn byte_len(self, numel: u64, rows: u64) -> Option<u64> {
        let values = numel.checked_mul(self.size() as u64)?;
        match self {
            DType::I8 => rows.checked_mul(4)?.checked_add(values),
            _ => Some(values),
        }
    }
}

/// A tensor's values, borrowed from the blob.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'w> {
    /// f32 values.
    F32(&'w [f32]),
    /// f16 values (converted to f32 as they are used).
    F16(&'w [f16]),
    /// int8 values with one f32 scale per row of `q.len() / scales.len()`
    /// values (dequantised to f32 as they are used).
    I8 {
        /// One scale per output channel.
        scales: &'w [f32],
        /// The quantised values.
        q: &'w [i8],
    },
}

impl TensorData<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I8 { q, .. } => q.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as f32 (0 past the end; callers index within validated shapes).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            TensorData::F32(v) => v.get(i).copied().unwrap_or(0.0),
            TensorData::F16(v) => v.get(i).map_or(0.0, |x| x.to_f32()),
            TensorData::I8 { scales, q } => {
                // Parsing guarantees 1 <= scales.len() and that it divides q.len().
                let row = q.len() / scales.len().max(1);
                match (q.get(i), scales.get(i / row.max(1))) {
                    (Some(&v), Some(&sc)) => f32::from(v) * sc,
                    _ => 0.0,
                }
            }
        }
    }

    /// Values `start..start + out.len()` as f32 into `out` (zeros past the end).
    pub fn copy_into(&self, start: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.get(start + k);
        }
    }
}

/// One validated tensor of a blob.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'w> {
    /// Key name.
    pub name: &'w str,
    /// Shape.
    pub shape: Shape,
    /// Storage type.
    pub dtype: DType,
    /// The values, in place.
    pub data: TensorData<'w>,
}

/// A validated weight blob, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Blob<'w> {
    bytes: &'w [u8],
    config: EdgeConfig,
    count: usize,
}

fn truncated(what: &'static str, start: usize, n: usize, len: usize) -> EdgeError {
    EdgeError::Truncated {
        what,
        start: start as u64,
        end: start as u64 + n as u64,
        len,
    }
}

fn read_u32(b: &[u8], at: usize, what: &'static str) -> Result<u32, EdgeError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| truncated(what, at, 4, b.len()))
}

fn read_u64(b: &[u8], at: usize, what: &'static str) -> Result<u64, EdgeError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| truncated(what, at, 8, b.len()))
}

fn usize_of(v: u32) -> usize {
    // u32 fits in usize on every target this crate builds for (16-bit
    // targets are refused by the field ranges anyway).
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Reads the configuration section of a header.
fn read_config(b: &[u8]) -> Result<EdgeConfig, EdgeError> {
    let f = |at: usize, what| read_u32(b, at, what).map(usize_of);
    let code = read_u32(b, 24, "arch")?;
    let arch = Arch::from_code(code).ok_or(EdgeError::BadField {
        field: "arch",
        value: u64::from(code),
        reason: "0 (NAT), 1 (DiNAT), 2 (DiNAT_s) or 3 (isotropic)",
    })?;
    let ls = read_u32(b, 56, "layer_scale")?;
    if ls > 1 {
        return Err(EdgeError::BadField {
            field: "layer_scale",
            value: u64::from(ls),
            reason: "0 or 1",
        });
    }
    let levels = f(36, "levels")?;
    let mut cfg = EdgeConfig {
        arch,
        in_chans: f(28, "in_chans")?,
        embed_dim: f(32, "embed_dim")?,
        levels,
        depths: [0; MAX_LEVELS],
        num_heads: [0; MAX_LEVELS],
        mlp_hidden: [0; MAX_LEVELS],
        kernel_size: f(40, "kernel_size")?,
        dilations: [[1; MAX_DEPTH]; MAX_LEVELS],
        layer_scale: ls == 1,
        num_classes: f(44, "num_classes")?,
        stem_strides: [f(48, "stem_strides")?, f(52, "stem_strides")?],
    };
    for i in 0..MAX_LEVELS {
        cfg.depths[i] = f(60 + 4 * i, "depths")?;
        cfg.num_heads[i] = f(76 + 4 * i, "num_heads")?;
        cfg.mlp_hidden[i] = f(92 + 4 * i, "mlp_hidden")?;
        let depth = cfg.depths[i].min(MAX_DEPTH);
        for j in 0..depth {
            cfg.dilations[i][j] = f(108 + 4 * (MAX_DEPTH * i + j), "dilations")?;
        }
    }
    // Also makes sure the header is complete.
    read_u32(b, HEADER_LEN - 4, "header")?;
    cfg.validate()?;
    Ok(cfg)
}

impl<'w> Blob<'w> {
    /// Parses and validates a whole blob: header, configuration, and every
    /// tensor's name (canonical order), shape, dtype, byte length, bounds and
    /// alignment in memory. Never panics; every defect is a typed error.
    pub fn parse(bytes: &'w [u8]) -> Result<Self, EdgeError> {
        if cfg!(target_endian = "big") {
            return Err(EdgeError::BigEndian);
        }
        let mut found = [0u8; 8];
        let n = bytes.len().min(8);
        found[..n].copy_from_slice(&bytes[..n]);
        if found != MAGIC {
            return Err(EdgeError::BadMagic {
                found,
                expected: MAGIC,
            });
        }
        let version = read_u32(bytes, 8, "version")?;
        if version != VERSION {
            return Err(EdgeError::BadVersion {
                found: version,
                supported: VERSION,
            });
        }
        let table = read_u32(bytes, 12, "table offset")?;
        if usize_of(table) != HEADER_LEN {
            return Err(EdgeError::BadField {
                field: "table offset",
                value: u64::from(table),
                reason: "must be 624 in version 1",
            });
        }
        let count = usize_of(read_u32(bytes, 16, "tensor count")?);
        let config = read_config(bytes)?;
        let expected = config.tensor_count();
        if count != expected {
            return Err(EdgeError::TensorCount {
                expected,
                found: count,
            });
        }
        let table_len = count * ENTRY_LEN;
        if bytes.len() < HEADER_LEN + table_len {
            return Err(truncated(
                "tensor table",
                HEADER_LEN,
                table_len,
                bytes.len(),
            ));
        }
        let blob = Blob {
            bytes,
            config,
            count,
        };
        let mut index = 0;
        config.for_each_tensor(|key, shape| {
            let t = blob.read_entry(index)?;
            if t.name != key {
                return Err(EdgeError::UnexpectedTensor {
                    index,
                    expected: KeyName::new(key),
                    found: KeyName::new(t.name),
                });
            }
            if t.shape != shape {
                return Err(EdgeError::ShapeMismatch {
                    key: KeyName::new(key),
                    expected: shape,
                    found: t.shape,
                });
            }
            index += 1;
            Ok(())
        })?;
        Ok(blob)
    }

    /// The model's configuration.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the blob has no tensors (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The blob's bytes.
    pub fn bytes(&self) -> &'w [u8] {
        self.bytes
    }

    /// Tensor `index` of the table (in canonical order).
    pub fn tensor(&self, index: usize) -> Result<Tensor<'w>, EdgeError> {
        if index >= self.count {
            return Err(EdgeError::TensorCount {
                expected: index + 1,
                found: self.count,
            });
        }
        self.read_entry(index)
    }

    /// Reads and checks one table entry and views its data.
    fn read_entry(&self, index: usize) -> Result<Tensor<'w>, EdgeError> {
        let b = self.bytes;
        let at = HEADER_LEN + index * ENTRY_LEN;
        let e = b
            .get(at..at + ENTRY_LEN)
            .ok_or_else(|| truncated("tensor table entry", at, ENTRY_LEN, b.len()))?;
        let raw = &e[..NAME_LEN];
        let nlen = raw.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        if raw[nlen..].iter().any(|&c| c != 0) {
            return Err(EdgeError::BadName { index });
        }
        let name = core::str::from_utf8(&raw[..nlen]).map_err(|_| EdgeError::BadName { index })?;
        let key = KeyName::new(name);
        let code = read_u32(e, 64, "dtype")?;
        let dtype = match code {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::I8,
            _ => return Err(EdgeError::UnknownDtype { key, code }),
        };
        let rank = read_u32(e, 68, "rank")?;
        if !(1..=4).contains(&rank) {
            return Err(EdgeError::BadField {
                field: "rank",
                value: u64::from(rank),
                reason: "a tensor has 1 to 4 dimensions",
            });
        }
        let mut dims = [0usize; 4];
        for (k, d) in dims.iter_mut().enumerate() {
            *d = usize_of(read_u32(e, 72 + 4 * k, "dims")?);
        }
        let shape = Shape::new(&dims[..usize_of(rank)]);
        let offset = read_u64(e, 88, "offset")?;
        let len = read_u64(e, 96, "length")?;
        let numel = dims[..usize_of(rank)]
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let rows = dims[0] as u64;
        if dtype == DType::I8 && rows == 0 {
            return Err(EdgeError::BadField {
                field: "dims",
                value: 0,
                reason: "an int8 tensor needs at least one output channel for its scales",
            });
        }
        if numel.and_then(|n| dtype.byte_len(n, rows)) != Some(len) {
            return Err(EdgeError::TensorLength {
                key,
                shape,
                elem: dtype.size(),
                len,
            });
        }
        if offset % DATA_ALIGN as u64 != 0 {
            return Err(EdgeError::UnalignedOffset {
                key,
                offset,
                align: DATA_ALIGN,
            });
        }
        let oob = EdgeError::TensorOutOfBounds {
            key,
            offset,
            len,
            blob_len: b.len(),
        };
        let end = offset.checked_add(len).ok_or(oob.clone())?;
        if end > b.len() as u64 {
            return Err(oob);
        }
        // Both fit in usize: end <= b.len().
        let data = &b[offset as usize..end as usize];
        let misaligned = |align: usize| EdgeError::Misaligned {
            key,
            address: data.as_ptr() as usize,
            align,
        };
        let data = match dtype {
            DType::F32 => {
                // SAFETY: f32 is plain old data: every 4-byte pattern is a
                // valid f32, and align_to only hands out the correctly
                // aligned middle part; a non-empty prefix or suffix (checked
                // next) is refused rather than read.
                let (pre, mid, post) = unsafe { data.align_to::<f32>() };
                if !pre.is_empty() || !post.is_empty() {
                    return Err(misaligned(4));
                }
                TensorData::F32(mid)
            }
            DType::F16 => {
                // SAFETY: half::f16 is a `repr(transparent)` u16, every
                // 2-byte pattern is a valid f16; a misaligned prefix or a
                // suffix is refused just below.
                let (pre, mid, post) = unsafe { data.align_to::<f16>() };
                if !pre.is_empty() || !post.is_empty() {
                    return Err(misaligned(2));
                }
                TensorData::F16(mid)
            }
            DType::I8 => {
                let (sb, qb) = data.split_at(dims[0] * 4);
                // SAFETY: as for f32 above; a misaligned prefix or a suffix
                // is refused just below.
                let (pre, scales, post) = unsafe { sb.align_to::<f32>() };
                if !pre.is_empty() || !post.is_empty() {
                    return Err(misaligned(4));
                }
                // SAFETY: i8 has the size and alignment of u8 and every bit
                // pattern is valid, so the whole slice converts (no prefix or
                // suffix is possible).
                let (_, q, _) = unsafe { qb.align_to::<i8>() };
                TensorData::I8 { scales, q }
            }
        };
        Ok(Tensor {
            name,
            shape,
            dtype,
            data,
        })
    }
}

#[cfg(feature = "alloc")]
pub use writer::{write_blob, AlignedBlob};

#[cfg(feature = "alloc")]
mod writer {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    /// A copy of a blob at a 64-byte aligned address, so that
    /// [`Blob::parse`] can view its tensors in place.
    #[derive(Clone, Debug)]
    pub struct AlignedBlob {
        buf: Vec<u8>,
        start: usize,
        len: usize,
    }

    impl AlignedBlob {
        /// Copies `bytes` to a 64-byte aligned buffer.
        pub fn new(bytes: &[u8]) -> Self {
            let mut buf = vec![0u8; bytes.len() + DATA_ALIGN];
            let start = buf.as_ptr().align_offset(DATA_ALIGN);
            // `align_offset` may in principle give up (usize::MAX); then the
            // copy starts at 0 and a misaligned blob is reported by `parse`.
            let start = if start < DATA_ALIGN { start } else { 0 };
            buf[start..start + bytes.len()].copy_from_slice(bytes);
            AlignedBlob {
                buf,
                start,
                len: bytes.len(),
            }
        }

        /// The blob's bytes.
        pub fn as_bytes(&self) -> &[u8] {
            &self.buf[self.start..self.start + self.len]
        }
    }

    impl core::ops::Deref for AlignedBlob {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            self.as_bytes()
        }
    }

    /// Writes a blob for `cfg` from named f32 tensors, each stored as
    /// `dtype` (f16 rounds to nearest even). With [`DType::I8`], the linear
    /// layers' weights (rank-2 `*.weight`) are quantised per output channel
    /// (scale = max |w| / 127 per row, round to nearest) and every other
    /// tensor is stored as f16.
    ///
    /// `tensors` are `(key, shape, values)` under the authors' key names, in
    /// any order; every tensor the configuration names must be present with
    /// its exact shape ([`EdgeError::MissingTensor`],
    /// [`EdgeError::ShapeMismatch`], [`EdgeError::TensorLength`] when
    /// `values` does not fill `shape`). Tensors the configuration does not
    /// name are ignored (e.g. a backbone's `norm0..norm3`).
    pub fn write_blob(
        cfg: &EdgeConfig,
        tensors: &[(&str, &[usize], &[f32])],
        dtype: DType,
    ) -> Result<Vec<u8>, EdgeError> {
        cfg.validate()?;
        let count = cfg.tensor_count();
        let mut out = vec![0u8; HEADER_LEN + count * ENTRY_LEN];
        let put32 = |o: &mut Vec<u8>, at: usize, v: usize| {
            o[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
        };
        out[..8].copy_from_slice(&MAGIC);
        put32(&mut out, 8, VERSION as usize);
        put32(&mut out, 12, HEADER_LEN);
        put32(&mut out, 16, count);
        put32(&mut out, 24, cfg.arch.code() as usize);
        put32(&mut out, 28, cfg.in_chans);
        put32(&mut out, 32, cfg.embed_dim);
        put32(&mut out, 36, cfg.levels);
        put32(&mut out, 40, cfg.kernel_size);
        put32(&mut out, 44, cfg.num_classes);
        put32(&mut out, 48, cfg.stem_strides[0]);
        put32(&mut out, 52, cfg.stem_strides[1]);
        put32(&mut out, 56, usize::from(cfg.layer_scale));
        for i in 0..MAX_LEVELS {
            put32(&mut out, 60 + 4 * i, cfg.depths[i]);
            put32(&mut out, 76 + 4 * i, cfg.num_heads[i]);
            put32(&mut out, 92 + 4 * i, cfg.mlp_hidden[i]);
            for j in 0..MAX_DEPTH {
                let d = if j < cfg.depths[i] {
                    cfg.dilations[i][j]
                } else {
                    1
                };
                put32(&mut out, 108 + 4 * (MAX_DEPTH * i + j), d);
            }
        }
        let mut index = 0;
        cfg.for_each_tensor(|key, shape| {
            let kn = KeyName::new(key);
            let &(_, dims, values) = tensors
                .iter()
                .find(|t| t.0 == key)
                .ok_or(EdgeError::MissingTensor { key: kn })?;
            if !shape.is(dims) {
                return Err(EdgeError::ShapeMismatch {
                    key: kn,
                    expected: shape,
                    found: Shape::new(dims),
                });
            }
            if values.len() != shape.numel() {
                return Err(EdgeError::TensorLength {
                    key: kn,
                    shape,
                    elem: 4,
                    len: (values.len() * 4) as u64,
                });
            }
            let offset = out.len().next_multiple_of(DATA_ALIGN);
            out.resize(offset, 0);
            let linear = shape.dims().len() == 2 && key.ends_with(".weight");
            let dtype = match dtype {
                DType::I8 if !linear => DType::F16,
                d => d,
            };
            match dtype {
                DType::F32 => values
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
                DType::F16 => values
                    .iter()
                    .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
                DType::I8 => quantize_rows(values, shape.dims()[0] as usize, &mut out),
            }
            let at = HEADER_LEN + index * ENTRY_LEN;
            let e = &mut out[at..at + ENTRY_LEN];
            e[..key.len()].copy_from_slice(key.as_bytes());
            e[64..68].copy_from_slice(&dtype.code().to_le_bytes());
            e[68..72].copy_from_slice(&(shape.dims().len() as u32).to_le_bytes());
            for (k, &d) in shape.dims().iter().enumerate() {
                e[72 + 4 * k..76 + 4 * k].copy_from_slice(&d.to_le_bytes());
            }
            e[88..96].copy_from_slice(&(offset as u64).to_le_bytes());
            let len = dtype
                .byte_len(shape.numel() as u64, u64::from(shape.dims()[0]))
                .expect("validated shapes are small");
            e[96..104].copy_from_slice(&len.to_le_bytes());
            index += 1;
            Ok(())
        })?;
        Ok(out)
    }

    /// Appends `rows` f32 scales then the int8 values of `values` (`rows`
    /// rows of equal length), symmetric per row: scale = max |w| / 127
    /// (1 for an all-zero row), q = round(w / scale).
    fn quantize_rows(values: &[f32], rows: usize, out: &mut Vec<u8>) {
        let n = values.len() / rows.max(1);
        let scales: Vec<f32> = values
            .chunks(n.max(1))
            .map(|r| {
                let m = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if m > 0.0 && m.is_finite() {
                    m / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        scales
            .iter()
            .for_each(|sc| out.extend_from_slice(&sc.to_le_bytes()));
        for (r, row) in values.chunks(n.max(1)).enumerate() {
            for v in row {
                let q = libm::roundf(v / scales[r]).clamp(-127.0, 127.0);
                out.push(q as i8 as u8);
            }
        }
    }
}
