//! `na convert` through the real binary, on the checkpoints written by
//! `crates/na-model/tests/fixtures/pth/make_pth_fixtures.py` (torch 2.9.1):
//! the safetensors output holds exactly the tensors the library reads, and
//! every bad input exits 1 with a one-line message and leaves no file behind.

use std::path::{Path, PathBuf};

use crate::util::{na, s};
use half::{bf16, f16};
use na_model::pth::{read_pth, PthDType, PthTensor};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

/// A fresh, empty directory under cargo's per-target temp dir.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("convert_cli")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Every file in the directory, sorted.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../na-model/tests/fixtures/pth")
        .join(name)
}

fn st_dtype(d: PthDType) -> Dtype {
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

/// Converts `input` into `dir/out.safetensors` and returns the output bytes.
fn convert(dir: &TestDir, input: &Path, extra: &[&str]) -> (Vec<u8>, String) {
    let out = dir.path("out.safetensors");
    let mut args = vec!["convert", s(input), s(&out)];
    args.extend(extra);
    let res = na(&args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(dir.files(), ["out.safetensors"], "temporary files left");
    (
        std::fs::read(&out).unwrap(),
        String::from_utf8(res.stdout).unwrap(),
    )
}

/// The output holds exactly `want`, value by value, plus the metadata.
fn assert_holds(bytes: &[u8], want: &[PthTensor], source: &str) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut want_names: Vec<&str> = want.iter().map(|t| t.name.as_str()).collect();
    want_names.sort();
    assert_eq!(names, want_names);
    for t in want {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), st_dtype(t.dtype), "{}", t.name);
        assert_eq!(v.shape(), t.shape.as_slice(), "{}", t.name);
        assert_eq!(v.data(), t.data.as_slice(), "{}", t.name);
    }
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = meta.metadata().as_ref().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(meta.get("source").map(String::as_str), Some(source));
}

#[test]
fn converts_a_state_dict_value_by_value() {
    let dir = TestDir::new("state");
    let input = fixture("state_f32.pth");
    let (bytes, stdout) = convert(&dir, &input, &[]);
    let want = read_pth(&input).unwrap();
    assert_holds(&bytes, &want, "state_f32.pth");
    // Spot-check against torch's own numbers (expected.json): the first
    // conv weight is -6.75 and num_batches_tracked is 7.
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("conv.weight").unwrap().data()[..4],
        (-6.75f32).to_le_bytes()
    );
    assert_eq!(
        st.tensor("norm.num_batches_tracked").unwrap().data(),
        7i64.to_le_bytes()
    );
    let params: usize = want.iter().map(PthTensor::numel).sum();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(&format!("9 tensors (f32 x8, i64 x1), {params} parameters")),
        "{stdout}"
    );
}

#[test]
fn keeps_every_dtype_and_reads_nested_and_viewed_checkpoints() {
    for (name, tensors) in [("dtypes.pth", 12), ("views.pth", 7), ("nested.pth", 9)] {
        let dir = TestDir::new(name);
        let input = fixture(name);
        let (bytes, stdout) = convert(&dir, &input, &[]);
        let want = read_pth(&input).unwrap();
        assert_eq!(want.len(), tensors);
        assert_holds(&bytes, &want, name);
        assert!(stdout.contains(&format!("{tensors} tensors")), "{stdout}");
    }
}

#[test]
fn dtype_f16_and_bf16_convert_floats_only() {
    let input = fixture("dtypes.pth");
    let src = read_pth(&input).unwrap();
    for (flag, to) in [
        ("f16", PthDType::F16),
        ("bf16", PthDType::BF16),
        ("f32", PthDType::F32),
    ] {
        let dir = TestDir::new(&format!("dtype_{flag}"));
        let (bytes, _) = convert(&dir, &input, &["--dtype", flag]);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), src.len());
        for t in &src {
            let v = st.tensor(&t.name).unwrap();
            assert_eq!(v.shape(), t.shape.as_slice(), "{}", t.name);
            if !t.dtype.is_float() {
                assert_eq!(v.dtype(), st_dtype(t.dtype), "{}", t.name);
                assert_eq!(v.data(), t.data.as_slice(), "{}", t.name);
                continue;
            }
            assert_eq!(v.dtype(), st_dtype(to), "{flag} {}", t.name);
            // The fixtures' values are exact in every float type.
            let want: Vec<u8> = t
                .to_f32()
                .unwrap()
                .iter()
                .flat_map(|&x| match to {
                    PthDType::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
                    PthDType::BF16 => bf16::from_f32(x).to_le_bytes().to_vec(),
                    _ => x.to_le_bytes().to_vec(),
                })
                .collect();
            assert_eq!(v.data(), want.as_slice(), "{flag} {}", t.name);
        }
    }
}

/// Asserts exit code 1, a one-line message containing every `needle`, and
/// that the directory holds only `keep` afterwards.
fn assert_fails(dir: &TestDir, args: &[&str], needles: &[&str], keep: &[&str]) {
    let res = na(args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{args:?}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    }
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(res.stdout.is_empty(), "{args:?} printed a summary");
    assert_eq!(dir.files(), keep, "{args:?} left files behind");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = TestDir::new("bad_inputs");
    let out = dir.path("out.safetensors");
    let text = dir.path("notes.txt");
    std::fs::write(&text, "not a checkpoint\n").unwrap();
    let missing = dir.path("missing.pth");
    let cases: &[(PathBuf, &[&str])] = &[
        (
            fixture("os_system.pth"),
            &["os_system.pth", "os.system", "not allowed"],
        ),
        (
            fixture("truncated_archive.pth"),
            &["truncated_archive.pth", "not a PyTorch zip checkpoint"],
        ),
        (
            fixture("truncated_pickle.pth"),
            &["truncated_pickle.pth", "truncated"],
        ),
        (
            fixture("legacy.pth"),
            &["legacy.pth", "re-save with torch >= 1.6"],
        ),
        (
            fixture("offset_past_end.pth"),
            &["offset_past_end.pth", "storage"],
        ),
        (
            fixture("absurd_shape.pth"),
            &["absurd_shape.pth", "elements"],
        ),
        (fixture("deflated.pth"), &["deflated.pth", "compressed"]),
        (fixture("big_endian.pth"), &["big-endian"]),
        (text.clone(), &["notes.txt", "not a PyTorch zip checkpoint"]),
        (missing.clone(), &["missing.pth", "No such file"]),
    ];
    for (input, needles) in cases {
        assert_fails(
            &dir,
            &["convert", s(input), s(&out)],
            needles,
            &["notes.txt"],
        );
    }
    assert!(
        !Path::new("pwned.txt").exists() && !dir.path("pwned.txt").exists(),
        "the hostile pickle's command ran"
    );

    // A failed conversion leaves an existing output untouched.
    std::fs::write(&out, "old").unwrap();
    assert_fails(
        &dir,
        &["convert", s(&fixture("os_system.pth")), s(&out)],
        &["os.system"],
        &["notes.txt", "out.safetensors"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
}

#[test]
fn bad_outputs_fail_cleanly() {
    let dir = TestDir::new("bad_outputs");
    let input = fixture("state_f32.pth");
    // A directory that does not exist.
    let nowhere = dir.path("no/such/dir/out.safetensors");
    assert_fails(
        &dir,
        &["convert", s(&input), s(&nowhere)],
        &["OUTPUT.safetensors", "out.safetensors", "does not exist"],
        &[],
    );
    // A directory in the way.
    let sub = dir.path("taken");
    std::fs::create_dir(&sub).unwrap();
    assert_fails(
        &dir,
        &["convert", s(&input), s(&sub)],
        &["OUTPUT.safetensors", "taken", "is a directory"],
        &["taken"],
    );
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    // The input itself.
    let copy = dir.path("copy.pth");
    std::fs::copy(&input, &copy).unwrap();
    assert_fails(
        &dir,
        &["convert", s(&copy), s(&copy)],
        &["copy.pth", "is the same file as the input"],
        &["copy.pth", "taken"],
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&input).unwrap()
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = TestDir::new("usage");
    let out = dir.path("out.safetensors");
    for args in [
        vec!["convert", s(&fixture("state_f32.pth"))],
        vec![
            "convert",
            s(&fixture("state_f32.pth")),
            s(&out),
            "--dtype",
            "f64",
        ],
    ] {
        let res = na(&args);
        assert_eq!(res.status.code(), Some(2), "{args:?}");
        assert_eq!(dir.files(), Vec::<String>::new());
    }
}
