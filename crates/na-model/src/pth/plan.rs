//! From the unpickled tensors to bytes: each tensor's geometry checked
//! against its storage with checked arithmetic ([`plan_tensors`]), then the
//! storages read one at a time and the tensors copied out contiguous
//! ([`materialize`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::rc::Rc;

use super::archive::Archive;
use super::unpickle::{Object, StorageRef, TensorRef, Unpickled};
use super::{
    PthDType, PthError, PthTensor, EXPANSION_SLACK_BYTES, MAX_EXPANSION, MAX_RANK,
    MAX_TENSOR_ELEMENTS,
};

/// One tensor, validated against its storage.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) name: String,
    pub(super) dtype: PthDType,
    pub(super) key: Rc<str>,
    pub(super) shape: Vec<usize>,
    /// Element strides; 0 for dimensions of size 1.
    pub(super) strides: Vec<usize>,
    pub(super) offset: usize,
    pub(super) numel: usize,
    /// Elements of the storage, as the pickle declares them.
    pub(super) storage_elements: u64,
}

/// A storage used by at least one tensor.
#[derive(Debug)]
pub(super) struct StoragePlan {
    pub(super) dtype: PthDType,
    pub(super) numel: u64,
    /// Zip index and byte size of `data/<key>`.
    pub(super) index: usize,
    pub(super) bytes: u64,
    /// Tensors still to be copied from it.
    pub(super) users: usize,
}

pub(super) fn invalid(name: &str, reason: impl Into<String>) -> PthError {
    PthError::InvalidTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn non_negative(name: &str, what: &str, v: i64) -> Result<u64, PthError> {
    u64::try_from(v).map_err(|_| invalid(name, format!("negative {what} {v}")))
}

pub(super) fn to_usize(name: &str, v: u64) -> Result<usize, PthError> {
    usize::try_from(v).map_err(|_| invalid(name, format!("{v} does not fit in memory addresses")))
}

/// Checks one tensor's geometry (everything but the storage file itself).
pub(super) fn plan_tensor(
    name: String,
    t: &TensorRef,
    storage: &StorageRef,
) -> Result<Plan, PthError> {
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

pub(super) fn plan_tensors(
    u: &Unpickled,
    entries: Vec<(String, &TensorRef)>,
) -> Result<Vec<Plan>, PthError> {
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
pub(super) fn materialize<R: Read + Seek>(
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
pub(super) fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
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
pub(super) fn gather(p: &Plan, storage: &[u8]) -> Result<Vec<u8>, PthError> {
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

    #[test]
    fn is_contiguous_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[0, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        assert!(!is_contiguous(&[2], &[0]));
    }
}
