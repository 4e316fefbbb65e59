//! The zip archive `torch.save` writes: the directory of `data.pkl`, the
//! byte order, and stored entries read with their size checked first.

use std::io::{self, Read, Seek};

use zip::{CompressionMethod, ZipArchive};

use super::error::method_name;
use super::PthError;

pub(super) struct Archive<R> {
    pub(super) zip: ZipArchive<R>,
    /// Length of the whole archive: no stored entry can be longer.
    pub(super) len: u64,
}

impl<R: Read + Seek> Archive<R> {
    /// The directory holding `data.pkl`.
    pub(super) fn find_prefix(&self) -> Result<String, PthError> {
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
    pub(super) fn stat(&self, name: &str) -> Result<Option<(usize, u64)>, PthError> {
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
    pub(super) fn read_entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, PthError> {
        let Some((index, size)) = self.stat(name)? else {
            return Err(PthError::MissingEntry {
                entry: name.to_string(),
            });
        };
        self.read_index(name, index, size, limit)
    }

    pub(super) fn read_index(
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
    pub(super) fn check_byteorder(&mut self, prefix: &str) -> Result<(), PthError> {
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
