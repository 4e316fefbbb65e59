//! Weight files: safetensors (authors' or HuggingFace key names, detected)
//! and PyTorch `.pth` checkpoints, all turned into `f32` host tensors under
//! the authors' key names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
pub use crate::error::WeightsError;
use crate::error::{ModelError, Result};

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

/// The key-name convention a weight file used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// The authors' names (`patch_embed.*`, `levels.i.blocks.j.*`, `head`).
    Authors,
    /// The HuggingFace port's names (`nat.embeddings.*`, split q/k/v, `classifier`).
    HuggingFace,
}

/// Named weights under the authors' key names.
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    tensors: BTreeMap<String, HostTensor>,
    naming: Option<Naming>,
}

/// Largest weights file read (16 GiB): a bound against absurd sizes.
const MAX_FILE_BYTES: u64 = 16 << 30;

impl WeightMap {
    /// Reads a weights file: a PyTorch checkpoint (a zip archive, as written
    /// by `torch.save`) or safetensors, told apart by their first bytes.
    /// HuggingFace names are detected and mapped to the authors' names.
    ///
    /// ```
    /// use na_model::{Config, ModelError, WeightMap, WeightsError};
    /// let dir = std::env::temp_dir().join(format!("na-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let cfg = Config::preset("nat_mini")?;
    /// let path = dir.join("nat_mini.safetensors");
    /// WeightMap::random(&cfg, false, 7).save_safetensors(&path)?;
    /// let w = WeightMap::load(&path)?;
    /// assert!(w.check(&na_model::param_shapes(&cfg, false)).is_ok());
    ///
    /// // A file that is neither format: a typed error naming the file.
    /// std::fs::write(&path, b"not weights").unwrap();
    /// match WeightMap::load(&path) {
    ///     Err(ModelError::WeightsFile { path: p, source: WeightsError::Safetensors(_) }) => {
    ///         assert_eq!(p, path)
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), ModelError>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file_err = |source: WeightsError| ModelError::WeightsFile {
            path: path.to_path_buf(),
            source,
        };
        let bytes = crate::limits::read_file(path, MAX_FILE_BYTES)
            .map_err(|e| file_err(WeightsError::Io(e)))?;
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            #[cfg(feature = "pth")]
            return Self::from_pth(&bytes).map_err(file_err);
            #[cfg(not(feature = "pth"))]
            return Err(file_err(WeightsError::PthDisabled));
        }
        Self::parse_safetensors(&bytes).map_err(file_err)
    }

    /// Parses a PyTorch checkpoint (zip archive) in memory.
    #[cfg(feature = "pth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "pth")))]
    pub fn from_pth(bytes: &[u8]) -> core::result::Result<Self, WeightsError> {
        let list = crate::pth::read_pth_bytes(bytes)?;
        let mut map = BTreeMap::new();
        // Integer and bool buffers (e.g. `num_batches_tracked`) are never
        // weights of these models: they are left out rather than refused.
        for t in list.into_iter().filter(|t| t.dtype.is_float()) {
            let data = t.to_f32()?;
            map.insert(
                t.name,
                HostTensor {
                    shape: t.shape,
                    data,
                },
            );
        }
        Ok(Self::from_map(map))
    }

    /// Parses safetensors bytes (float tensors of any width become `f32`).
    ///
    /// # Errors
    ///
    /// [`ModelError::WeightsFile`] (the path reads `(safetensors bytes)`)
    /// with the [`WeightsError`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        Self::parse_safetensors(bytes).map_err(|source| ModelError::WeightsFile {
            path: PathBuf::from("(safetensors bytes)"),
            source,
        })
    }

    /// [`WeightMap::from_safetensors`] with the bare [`WeightsError`].
    pub fn parse_safetensors(bytes: &[u8]) -> core::result::Result<Self, WeightsError> {
        use safetensors::Dtype;
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let mut map = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
                other => {
                    return Err(WeightsError::Dtype {
                        name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            let shape = view.shape().to_vec();
            if shape.iter().product::<usize>() != data.len() {
                return Err(WeightsError::Shape {
                    name,
                    shape,
                    len: data.len(),
                });
            }
            map.insert(name, HostTensor { shape, data });
        }
        Ok(Self::from_map(map))
    }

    /// Wraps named tensors, mapping HuggingFace names to the authors' names
    /// when the names are HuggingFace's.
    pub fn from_map(map: BTreeMap<String, HostTensor>) -> Self {
        if map.keys().any(|k| is_hf_name(k)) {
            WeightMap {
                tensors: hf_to_authors(map),
                naming: Some(Naming::HuggingFace),
            }
        } else {
            WeightMap {
                tensors: map,
                naming: Some(Naming::Authors),
            }
        }
    }

    /// Random weights for `cfg` (normal, std 0.02; norms 1 and 0; layer
    /// scale gammas at `layer_scale`): for benchmarks and tests.
    pub fn random(cfg: &Config, backbone: bool, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut tensors = BTreeMap::new();
        for (name, shape) in crate::config::param_shapes(cfg, backbone) {
            let n: usize = shape.iter().product();
            let is_norm = name.contains("norm");
            let data = if name.ends_with("gamma1") || name.ends_with("gamma2") {
                vec![cfg.layer_scale.unwrap_or(1.0) as f32; n]
            } else if is_norm && name.ends_with(".weight") {
                vec![1.0; n]
            } else if is_norm || name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| 0.02 * rng.normal()).collect()
            };
            tensors.insert(name, HostTensor { shape, data });
        }
        WeightMap {
            tensors,
            naming: Some(Naming::Authors),
        }
    }

    /// The naming convention of the file these weights came from.
    pub fn naming(&self) -> Option<Naming> {
        self.naming
    }

    /// A tensor by its authors' name.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// Removes and returns a tensor.
    pub fn take(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }

    /// Names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of values.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Inserts a tensor under an authors' name.
    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }

    /// Checks these weights against the names and shapes `expected`; the
    /// error lists every missing, unexpected and mis-shaped tensor.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        let mut missing = Vec::new();
        let mut mis_shaped = Vec::new();
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => missing.push(name.clone()),
                Some(t) if &t.shape != shape => {
                    mis_shaped.push((name.clone(), shape.clone(), t.shape.clone()))
                }
                Some(_) => {}
            }
        }
        let want: std::collections::BTreeSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !want.contains(k.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty() {
            Ok(())
        } else {
            Err(ModelError::WeightsMismatch {
                missing,
                unexpected,
                mis_shaped,
            })
        }
    }

    /// These weights (f32, authors' names) as a safetensors file's bytes.
    ///
    /// ```
    /// use na_model::{Config, WeightMap};
    /// let cfg = Config::preset("fashion_dinat")?;
    /// let w = WeightMap::random(&cfg, false, 7);
    /// let back = WeightMap::from_safetensors(&w.to_safetensors()?)?;
    /// assert_eq!(back.numel(), w.numel());
    /// assert!(back.check(&na_model::param_shapes(&cfg, false)).is_ok());
    /// # Ok::<(), na_model::ModelError>(())
    /// ```
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    t.shape.clone(),
                )
            })
            .collect();
        let bad = |e: safetensors::SafeTensorError| ModelError::WeightsFile {
            path: PathBuf::from("(safetensors)"),
            source: WeightsError::Safetensors(e),
        };
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<core::result::Result<_, _>>()
            .map_err(bad)?;
        safetensors::serialize(views, None).map_err(bad)
    }

    /// Writes these weights as safetensors to `path`, all or nothing (through
    /// [`crate::output::Outputs`]).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let data = self.to_safetensors()?;
        let mut out = crate::output::Outputs::new();
        let id = out.output("weights file", path)?;
        out.stage(id, &data)?;
        Ok(out.commit()?)
    }
}

/// Whether a key uses the HuggingFace port's names.
fn is_hf_name(k: &str) -> bool {
    let k = strip_hf_prefix(k);
    k.starts_with("encoder.levels.")
        || k.starts_with("embeddings.patch_embeddings.")
        || k.starts_with("classifier.")
}

fn strip_hf_prefix(k: &str) -> &str {
    k.strip_prefix("nat.")
        .or_else(|| k.strip_prefix("dinat."))
        .unwrap_or(k)
}

/// Maps a HuggingFace name to the authors' name; `Err(name)` for q/k/v parts
/// and layer-scale pairs, which need combining.
fn hf_name(k: &str) -> String {
    let k = strip_hf_prefix(k);
    if let Some(r) = k.strip_prefix("embeddings.patch_embeddings.projection.") {
        return format!("patch_embed.proj.{r}");
    }
    if let Some(r) = k.strip_prefix("embeddings.norm.") {
        return format!("patch_embed.norm.{r}");
    }
    if let Some(r) = k.strip_prefix("layernorm.") {
        return format!("norm.{r}");
    }
    if let Some(r) = k.strip_prefix("classifier.") {
        return format!("head.{r}");
    }
    if let Some(r) = k.strip_prefix("encoder.levels.") {
        if let Some((i, rest)) = r.split_once('.') {
            if let Some(d) = rest.strip_prefix("downsample.") {
                return format!("levels.{i}.downsample.{d}");
            }
            if let Some(rest) = rest.strip_prefix("layers.") {
                if let Some((j, part)) = rest.split_once('.') {
                    const MAP: [(&str, &str); 6] = [
                        ("layernorm_before.", "norm1."),
                        ("attention.self.rpb", "attn.rpb"),
                        ("attention.output.dense.", "attn.proj."),
                        ("layernorm_after.", "norm2."),
                        ("intermediate.dense.", "mlp.fc1."),
                        ("output.dense.", "mlp.fc2."),
                    ];
                    for (from, to) in MAP {
                        if let Some(tail) = part.strip_prefix(from) {
                            return format!("levels.{i}.blocks.{j}.{to}{tail}");
                        }
                    }
                }
            }
        }
    }
    k.to_string()
}

/// Renames a HuggingFace state dict to the authors' names: q/k/v are
/// concatenated into `qkv`, `layer_scale_parameters [2, C]` split into
/// `gamma1`/`gamma2`. Parts that cannot be combined keep their names (and
/// are then reported as unexpected).
/// The HuggingFace query, key and value tensors of one block (name, tensor).
type QkvParts = [Option<(String, HostTensor)>; 3];

fn hf_to_authors(map: BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    // (block prefix, weight|bias) -> [q, k, v]
    let mut qkv: BTreeMap<(String, String), QkvParts> = BTreeMap::new();
    for (k, t) in map {
        let s = strip_hf_prefix(&k);
        if let Some(pos) = s.find(".attention.self.") {
            let (block, tail) = (&s[..pos], &s[pos + ".attention.self.".len()..]);
            let part = ["query.", "key.", "value."]
                .iter()
                .position(|p| tail.starts_with(p));
            if let (Some(p), Some(block)) = (part, block.strip_prefix("encoder.levels.")) {
                if let Some((i, rest)) = block.split_once('.') {
                    if let Some(j) = rest.strip_prefix("layers.") {
                        let which = tail.split_once('.').map_or("", |x| x.1).to_string();
                        let slot = qkv
                            .entry((format!("levels.{i}.blocks.{j}"), which))
                            .or_default();
                        slot[p] = Some((k.clone(), t));
                        continue;
                    }
                }
            }
        }
        if s.ends_with(".layer_scale_parameters") && t.shape.len() == 2 && t.shape[0] == 2 {
            let name = hf_name(&s.replace(".layer_scale_parameters", ".layernorm_before.x"));
            if let Some(prefix) = name.strip_suffix(".norm1.x") {
                let c = t.shape[1];
                for (g, half) in ["gamma1", "gamma2"].iter().zip(t.data.chunks(c)) {
                    out.insert(
                        format!("{prefix}.{g}"),
                        HostTensor {
                            shape: vec![c],
                            data: half.to_vec(),
                        },
                    );
                }
                continue;
            }
        }
        out.insert(hf_name(&k), t);
    }
    for ((block, which), parts) in qkv {
        let complete = parts.iter().all(|p| p.is_some())
            && parts
                .iter()
                .flatten()
                .all(|(_, t)| t.shape[1..] == parts[0].as_ref().expect("some").1.shape[1..]);
        if complete {
            let ts: Vec<HostTensor> = parts.into_iter().map(|p| p.expect("complete").1).collect();
            let mut shape = ts[0].shape.clone();
            shape[0] = ts.iter().map(|t| t.shape[0]).sum();
            let data = ts.into_iter().flat_map(|t| t.data).collect();
            out.insert(
                format!("{block}.attn.qkv.{which}"),
                HostTensor { shape, data },
            );
        } else {
            for (name, t) in parts.into_iter().flatten() {
                out.insert(name, t);
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift64*, Box-Muller normals).
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next_f32(), self.next_f32());
        (-2.0 * u.ln()).sqrt() * (core::f32::consts::TAU * v).cos()
    }
}
