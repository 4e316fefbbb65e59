//! The workspace's resource limits, in one place: the largest inputs read,
//! images decoded, memory planned and threads started. Each limit refuses
//! with a message naming it; the ones a user may need to raise can be raised
//! (the environment variable or flag is named in the message and in
//! `RELIABILITY.md`).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Largest JSON file read (configurations, checkpoint manifests): 64 MiB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Largest image file read by `na classify`: 256 MiB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Default bound on one decoded image (`na classify --max-image-mib`):
/// 256 MiB, e.g. an 8-bit RGB photo of 89 megapixels or a 16-bit RGBA one of
/// 33 megapixels.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Default bound on the memory a command plans to allocate for one step of
/// work (tensors, activations, scratch): 16 GiB, raised with the environment
/// variable [`MAX_MEMORY_ENV`] (in GiB).
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 16 << 30;

/// The environment variable that raises (or lowers) the memory bound, in GiB.
pub const MAX_MEMORY_ENV: &str = "NA_MAX_MEMORY_GIB";

/// Threads per available core at most (`--threads`): more only slows a
/// run down and, in the hundreds of thousands, exhausts the system.
pub const MAX_THREADS_PER_CORE: usize = 8;

/// The memory bound in bytes: [`MAX_MEMORY_ENV`] when set to a positive
/// number of GiB, else [`DEFAULT_MAX_MEMORY_BYTES`].
pub fn max_memory_bytes() -> u64 {
    std::env::var(MAX_MEMORY_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|g| g.is_finite() && *g > 0.0)
        .map_or(DEFAULT_MAX_MEMORY_BYTES, |g| {
            (g * (1u64 << 30) as f64).min(u64::MAX as f64) as u64
        })
}

/// Refuses a plan of `bytes` (described by `what`) over [`max_memory_bytes`].
pub fn check_memory(what: &str, bytes: u128) -> Result<(), String> {
    let max = max_memory_bytes();
    if bytes > u128::from(max) {
        return Err(format!(
            "{what} needs {} of memory, over the {} limit (set {MAX_MEMORY_ENV} to raise it)",
            human(bytes),
            human(u128::from(max))
        ));
    }
    Ok(())
}

/// The most threads a command starts: [`MAX_THREADS_PER_CORE`] per core.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_mul(MAX_THREADS_PER_CORE)
}

/// Refuses a thread count above [`max_threads`]; 0 means one per core.
pub fn check_threads(n: usize) -> Result<usize, String> {
    let max = max_threads();
    if n > max {
        return Err(format!(
            "{n} threads is more than {max} ({MAX_THREADS_PER_CORE} per core on this machine)"
        ));
    }
    Ok(n)
}

/// Reads a whole file of at most `limit` bytes. Directories are refused, and
/// the read stops one byte past the limit, so an endless device
/// (`/dev/zero`) or a file that grows while read costs at most the limit.
pub fn read_file(path: impl AsRef<Path>, limit: u64) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than the {} limit for this kind of file",
                human(u128::from(limit))
            ),
        )
    };
    if meta.is_file() && meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() {
        meta.len() as usize
    } else {
        0
    });
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// `1536` -> `1.5 KiB`.
pub fn human(n: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_device_costs_at_most_the_limit() {
        let e = read_file(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("1.0 MiB limit"), "{e}");
        let e = read_file(Path::new("/"), 10).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn plans_and_threads_over_the_limits_are_refused() {
        assert!(check_memory("x", 1 << 20).is_ok());
        let e = check_memory("the problem", 137 << 30).unwrap_err();
        assert!(e.contains("137.0 GiB") && e.contains(MAX_MEMORY_ENV), "{e}");
        assert!(check_threads(0).is_ok());
        assert!(check_threads(100_000)
            .unwrap_err()
            .contains("100000 threads"));
        assert_eq!(human(999), "999 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
