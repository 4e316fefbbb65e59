//! The on-disk module cache.
//!
//! A compiled image is stored under a file name derived from its key; the
//! key itself is the full description of what was compiled: a hash of the
//! source (which carries the specialisation's `#define`s), the NVRTC options,
//! the device architecture, the driver version and the NVRTC version. The
//! file repeats the key in a header and ends the header with a checksum of
//! everything it stores, so an entry written for another key (a hash
//! collision, a stale file), a truncated file or a flipped bit is detected
//! and rebuilt, never loaded.
//!
//! File layout (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `NACUBIN1` |
//! | 4 | key length `n` |
//! | n | key (UTF-8) |
//! | 1 | kind: 0 cubin, 1 PTX |
//! | 8 | payload length `m` |
//! | 8 | FNV-1a 64 of key, kind and payload |
//! | m | payload |
//!
//! The directory is `$NA_CUDA_CACHE_DIR`, else `$XDG_CACHE_HOME/na-cuda`,
//! else `$HOME/.cache/na-cuda`; `NA_CUDA_CACHE=0` turns the disk cache off.
//! Writes go to a temporary file that is renamed into place.

use std::path::{Path, PathBuf};

use crate::nvrtc::{Image, ImageKind};

const MAGIC: &[u8; 8] = b"NACUBIN1";

/// FNV-1a, 64 bits: a stable hash (unlike `std`'s `DefaultHasher`, whose
/// output may change between Rust releases).
pub fn fnv1a64(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for &b in *c {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The cache key of a compilation.
pub fn cache_key(
    source: &str,
    options: &[String],
    arch: u32,
    driver_version: i32,
    nvrtc_version: (i32, i32),
) -> String {
    format!(
        "na-cuda {} src={:016x}/{} opts=[{}] arch=sm_{arch} driver={driver_version} nvrtc={}.{}",
        env!("CARGO_PKG_VERSION"),
        fnv1a64(&[source.as_bytes()]),
        source.len(),
        options.join(" "),
        nvrtc_version.0,
        nvrtc_version.1
    )
}

fn kind_byte(k: ImageKind) -> u8 {
    match k {
        ImageKind::Cubin => 0,
        ImageKind::Ptx => 1,
    }
}

/// Serialises an entry.
pub fn encode(key: &str, img: &Image) -> Vec<u8> {
    let kind = [kind_byte(img.kind)];
    let sum = fnv1a64(&[key.as_bytes(), &kind, &img.bytes]);
    let mut out = Vec::with_capacity(29 + key.len() + img.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.push(kind[0]);
    out.extend_from_slice(&(img.bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&img.bytes);
    out
}

/// Why an entry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Too short, or not starting with the magic.
    Malformed,
    /// Written for another key.
    OtherKey,
    /// The length or the checksum does not match the payload.
    Corrupt,
}

/// Parses an entry, accepting it only for exactly `key` and only when its
/// checksum and length hold.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Image, Reject> {
    let take = |at: usize, n: usize| bytes.get(at..at + n).ok_or(Reject::Malformed);
    if take(0, 8)? != MAGIC {
        return Err(Reject::Malformed);
    }
    let n = u32::from_le_bytes(take(8, 4)?.try_into().unwrap()) as usize;
    if take(12, n)? != key.as_bytes() {
        return Err(Reject::OtherKey);
    }
    let at = 12 + n;
    let kind = match take(at, 1)?[0] {
        0 => ImageKind::Cubin,
        1 => ImageKind::Ptx,
        _ => return Err(Reject::Corrupt),
    };
    let m = u64::from_le_bytes(take(at + 1, 8)?.try_into().unwrap());
    let sum = u64::from_le_bytes(take(at + 9, 8)?.try_into().unwrap());
    let payload = &bytes[at + 17..];
    if payload.len() as u64 != m || fnv1a64(&[key.as_bytes(), &[kind_byte(kind)], payload]) != sum {
        return Err(Reject::Corrupt);
    }
    let img = Image {
        kind,
        bytes: payload.to_vec(),
    };
    if img.looks_valid() {
        Ok(img)
    } else {
        Err(Reject::Corrupt)
    }
}

/// A directory of cached images.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskCache { dir: dir.into() }
    }

    /// The cache the environment asks for (see the module docs), if any.
    pub fn from_env() -> Option<Self> {
        if std::env::var_os("NA_CUDA_CACHE").is_some_and(|v| v == "0") {
            return None;
        }
        let dir = if let Some(d) = std::env::var_os("NA_CUDA_CACHE_DIR") {
            PathBuf::from(d)
        } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(d).join("na-cuda")
        } else {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/na-cuda")
        };
        Some(DiskCache::new(dir))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an entry for `key` lives in.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{:016x}.nacubin", fnv1a64(&[key.as_bytes()])))
    }

    /// The image stored for `key`, if there is a valid one. An invalid file
    /// is removed (it will be rebuilt and rewritten).
    pub fn load(&self, key: &str) -> Option<Image> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match decode(key, &bytes) {
            Ok(img) => Some(img),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `img` for `key`. Failures are ignored: the cache is an
    /// optimisation, never a requirement.
    pub fn store(&self, key: &str, img: &Image) {
        let _ = self.try_store(key, img);
    }

    fn try_store(&self, key: &str, img: &Image) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, encode(key, img))?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cubin() -> Image {
        Image {
            kind: ImageKind::Cubin,
            bytes: b"\x7fELF and some machine code".to_vec(),
        }
    }

    #[test]
    fn keys_change_with_every_input() {
        let o = vec!["--gpu-architecture=sm_90".to_string()];
        let k = cache_key("src", &o, 90, 13000, (12, 8));
        assert!(k.contains("arch=sm_90") && k.contains("driver=13000") && k.contains("nvrtc=12.8"));
        assert_eq!(k, cache_key("src", &o, 90, 13000, (12, 8)));
        assert_ne!(k, cache_key("src2", &o, 90, 13000, (12, 8)));
        assert_ne!(k, cache_key("src", &[], 90, 13000, (12, 8)));
        assert_ne!(k, cache_key("src", &o, 80, 13000, (12, 8)));
        assert_ne!(k, cache_key("src", &o, 90, 12080, (12, 8)));
        assert_ne!(k, cache_key("src", &o, 90, 13000, (12, 9)));
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(&[b""]), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(&[b"fo", b"o"]), fnv1a64(&[b"foo"]));
    }

    #[test]
    fn entries_round_trip_and_reject_everything_else() {
        let key = "key one";
        let bytes = encode(key, &cubin());
        assert_eq!(decode(key, &bytes), Ok(cubin()));
        assert_eq!(decode("key two", &bytes), Err(Reject::OtherKey));
        assert_eq!(decode(key, &bytes[..bytes.len() - 1]), Err(Reject::Corrupt));
        assert_eq!(decode(key, &bytes[..10]), Err(Reject::Malformed));
        assert_eq!(decode(key, b""), Err(Reject::Malformed));
        for i in 8..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(key, &bad).is_err(), "flipped byte {i} accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(key, &extra), Err(Reject::Corrupt));
        // A PTX image whose payload is not PTX is refused too.
        let junk = Image {
            kind: ImageKind::Ptx,
            bytes: b"not ptx".to_vec(),
        };
        assert_eq!(decode(key, &encode(key, &junk)), Err(Reject::Corrupt));
    }

    #[test]
    fn disk_entries_are_rebuilt_when_invalid() {
        let dir = std::env::temp_dir().join(format!("na-cuda-cache-test-{}", std::process::id()));
        let cache = DiskCache::new(&dir);
        let key = "k";
        assert_eq!(cache.load(key), None);
        cache.store(key, &cubin());
        assert_eq!(cache.load(key), Some(cubin()));
        // Corrupt the file: the load refuses it and removes it.
        let path = cache.path(key);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.load(key), None);
        assert!(!path.exists());
        // A file for another key under this key's name (a collision) is refused.
        std::fs::write(&path, encode("other", &cubin())).unwrap();
        assert_eq!(cache.load(key), None);
        cache.store(key, &cubin());
        assert_eq!(cache.load(key), Some(cubin()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
