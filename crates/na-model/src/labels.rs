//! Class names and top-k selection for classifier outputs.
//!
//! The 1000 ImageNet-1k class names are embedded (`data/imagenet_classes.txt`,
//! written by `data/make_imagenet_classes.py` from torchvision's weight metadata);
//! other label sets are read from a file with [`read_labels`].

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The embedded class-name file: one name per line, in class-index order.
const IMAGENET_CLASSES: &str = include_str!("../data/imagenet_classes.txt");

/// The 1000 ImageNet-1k class names in class-index order (index 0 is `"tench"`,
/// 207 `"golden retriever"`), as torchvision names them.
pub fn imagenet_classes() -> &'static [&'static str] {
    static CLASSES: OnceLock<Vec<&'static str>> = OnceLock::new();
    CLASSES.get_or_init(|| IMAGENET_CLASSES.lines().collect())
}

/// Errors from [`read_labels`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// The file could not be read.
    #[error("cannot read label file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid UTF-8.
    #[error("label file {} is not valid UTF-8 (first bad byte at offset {offset})", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The file holds no names.
    #[error("label file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line before the last name is blank; skipping it would shift every later
    /// class index, so it is refused.
    #[error("label file {} has a blank line at line {line}", path.display())]
    BlankLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Reads class names from a text file, one per line, in class-index order.
///
/// Lines end with `\n` or `\r\n`; surrounding whitespace is trimmed from each
/// name, and blank lines at the end of the file are ignored.
///
/// # Errors
///
/// [`LabelsError`] when the file cannot be read, is not UTF-8, holds no names,
/// or has a blank line between names.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<String>, LabelsError> {
    let path = path.as_ref();
    let bytes =
        crate::limits::read_file(path, crate::limits::MAX_JSON_BYTES).map_err(|source| {
            LabelsError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| LabelsError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
    while names.last().is_some_and(String::is_empty) {
        names.pop();
    }
    if names.is_empty() {
        return Err(LabelsError::Empty {
            path: path.to_path_buf(),
        });
    }
    if let Some(i) = names.iter().position(String::is_empty) {
        return Err(LabelsError::BlankLine {
            path: path.to_path_buf(),
            line: i + 1,
        });
    }
    Ok(names)
}

/// Softmax of `logits`, computed stably (the maximum is subtracted first, and the
/// sum is accumulated in `f64`).
///
/// The result never holds `NaN`: large logits cannot overflow, `NaN` logits are
/// treated as `-inf` (probability 0), `+inf` logits share the probability
/// equally, and if every logit is `-inf` (or `NaN`) the result is uniform. Empty
/// input gives an empty output.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let clean = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let max = logits
        .iter()
        .map(|&v| clean(v))
        .fold(f32::NEG_INFINITY, f32::max);
    if max.is_infinite() {
        // Every finite logit is infinitely less likely than the +inf ones; with no
        // +inf (all -inf or NaN), no logit is preferred.
        let hits = |v: f32| clean(v) == max;
        let n = logits.iter().filter(|&&v| hits(v)).count().max(1);
        let p = 1.0 / n as f32;
        return logits
            .iter()
            .map(|&v| if hits(v) { p } else { 0.0 })
            .collect();
    }
    let exps: Vec<f64> = logits
        .iter()
        .map(|&v| (f64::from(clean(v)) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum(); // >= 1: the maximum contributes exp(0)
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// The `k` most probable classes: `(class index, probability)` by descending
/// probability, ties broken by the lower index; `k` is clamped to
/// `logits.len()`. Probabilities are [`softmax`] of `logits`; `NaN` logits rank
/// last.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let probs = softmax(logits);
    // Rank on the logits (exact, monotone in the probability), NaN last.
    let key = |i: usize| {
        let v = logits[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    let order = |&a: &usize, &b: &usize| -> Ordering {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(Ordering::Equal)
            .then_with(|| logits[a].is_nan().cmp(&logits[b].is_nan()))
            .then(a.cmp(&b))
    };
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx.into_iter().map(|i| (i, probs[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn imagenet_classes_are_1000_distinct_names() {
        let c = imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert!(c.iter().all(|n| !n.is_empty() && n.trim() == *n));
        assert_eq!(c.iter().collect::<HashSet<_>>().len(), 1000);
        assert_eq!(c[0], "tench");
        assert_eq!(c[1], "goldfish");
        assert_eq!(c[207], "golden retriever");
        assert_eq!(c[281], "tabby");
        assert_eq!(c[999], "toilet tissue");
        // Parsed once.
        assert!(std::ptr::eq(c, imagenet_classes()));
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, -1000.0, 0.0]);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6);
        assert_eq!(p[2], 0.0);
        let p = softmax(&[f32::MAX, f32::MIN, 3.0]);
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
        let p = softmax(&[1.0, 2.0, 3.0]);
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.665_240_94).abs() < 1e-6);
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn softmax_infinities_and_nan() {
        assert_eq!(
            softmax(&[f32::INFINITY, 1.0, f32::INFINITY]),
            vec![0.5, 0.0, 0.5]
        );
        assert_eq!(softmax(&[f32::NEG_INFINITY; 4]), vec![0.25; 4]);
        let p = softmax(&[f32::NAN, 0.0, 0.0]);
        assert_eq!(p, vec![0.0, 0.5, 0.5]);
    }

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0, f32::NAN];
        let t = top_k(&logits, 4);
        let idx: Vec<usize> = t.iter().map(|p| p.0).collect();
        assert_eq!(idx, vec![1, 3, 4, 0]);
        assert_eq!(t[0].1, t[1].1);
        assert!(t.windows(2).all(|w| w[0].1 >= w[1].1));
        // k clamped; NaN last.
        let all = top_k(&logits, 100);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 3, 4, 0, 2, 5]
        );
        assert!(top_k(&logits, 0).is_empty());
        assert!(top_k(&[], 5).is_empty());
    }

    #[test]
    fn top_k_on_1000_classes() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32 * 0.01).collect();
        let t = top_k(&logits, 5);
        // The largest logits (9.99, 9.98, ...) sit at i with i * 37 = 999, 998, ... (mod 1000).
        let want: Vec<usize> = (0..5)
            .map(|d| (0..1000).find(|i| (i * 37) % 1000 == 999 - d).unwrap())
            .collect();
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), want);
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("na-model-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn read_labels_parses_and_rejects() {
        let p = temp_file("ok.txt", b"\xef\xbb\xbfcat\r\n dog \nbird\n\n");
        assert_eq!(read_labels(&p).unwrap(), ["cat", "dog", "bird"]);
        let p = temp_file("empty.txt", b"");
        assert!(matches!(read_labels(&p), Err(LabelsError::Empty { .. })));
        let p = temp_file("blank_only.txt", b"\n \n");
        assert!(matches!(read_labels(&p), Err(LabelsError::Empty { .. })));
        let p = temp_file("gap.txt", b"cat\n\ndog\n");
        assert!(matches!(
            read_labels(&p),
            Err(LabelsError::BlankLine { line: 2, .. })
        ));
        let p = temp_file("latin1.txt", b"caf\xe9\n");
        assert!(matches!(
            read_labels(&p),
            Err(LabelsError::NotUtf8 { offset: 3, .. })
        ));
        let missing = p.with_file_name("does-not-exist.txt");
        let err = read_labels(&missing).unwrap_err();
        assert!(matches!(err, LabelsError::Io { .. }));
        assert!(err.to_string().contains("does-not-exist.txt"));
    }
}
