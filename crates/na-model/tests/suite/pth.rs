//! The checkpoint reader on files written by `torch.save` (torch 2.9.1, see
//! `tests/fixtures/pth/make_pth_fixtures.py`): every tensor equals what torch
//! recorded in `expected.json`, and every broken or hostile file gives the
//! matching typed error.

use std::path::{Path, PathBuf};

use na_model::pth::{read_pth, read_pth_bytes, PthDType, PthError, PthTensor};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(map) => map,
        other => panic!("expected.json is not an object: {other}"),
    }
}

/// Every element as f64 (exact for all the fixtures' values).
fn as_f64(t: &PthTensor) -> Vec<f64> {
    let d = &t.data;
    let w = t.dtype.size();
    assert_eq!(d.len(), t.shape.iter().product::<usize>() * w, "{}", t.name);
    d.chunks_exact(w)
        .map(|c| match t.dtype {
            PthDType::F32 => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
            PthDType::F16 => half::f16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            PthDType::BF16 => half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            PthDType::F64 => f64::from_le_bytes(c.try_into().unwrap()),
            PthDType::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            PthDType::I32 => f64::from(i32::from_le_bytes(c.try_into().unwrap())),
            PthDType::I16 => f64::from(i16::from_le_bytes(c.try_into().unwrap())),
            PthDType::I8 => f64::from(c[0] as i8),
            PthDType::U8 => f64::from(c[0]),
            PthDType::Bool => {
                assert!(c[0] <= 1, "{}: bool byte {}", t.name, c[0]);
                f64::from(c[0])
            }
        })
        .collect()
}

fn check_against_expected(file: &str, tensors: &[PthTensor], want: &Value) {
    let want = want.as_array().unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, want_names, "{file}: names or order");
    for (t, w) in tensors.iter().zip(want) {
        let what = format!("{file}: {}", t.name);
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "{what}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{what}");
        let values: Vec<f64> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(as_f64(t), values, "{what}");
        if t.dtype.is_float() {
            let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            assert_eq!(t.to_f32().unwrap(), f, "{what}");
        } else {
            assert!(
                matches!(t.to_f32(), Err(PthError::NotFloat { dtype, .. }) if dtype == t.dtype),
                "{what}"
            );
        }
    }
}

#[test]
fn torch_saved_files_match_what_torch_recorded() {
    let expected = expected();
    // serde_json's map is sorted by key.
    let files: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "dtypes.pth",
            "nested.pth",
            "proto4.pth",
            "state_f32.pth",
            "views.pth"
        ]
    );
    for (file, want) in &expected {
        let tensors = read_pth(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        check_against_expected(file, &tensors, want);
        // The in-memory reader agrees.
        let bytes = std::fs::read(fixture(file)).unwrap();
        assert_eq!(read_pth_bytes(&bytes).unwrap(), tensors, "{file}");
    }
}

#[test]
fn state_dict_keeps_module_order_and_int64_buffers() {
    let t = read_pth(fixture("state_f32.pth")).unwrap();
    let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv.weight",
            "conv.bias",
            "norm.weight",
            "norm.bias",
            "norm.running_mean",
            "norm.running_var",
            "norm.num_batches_tracked",
            "head.weight",
            "head.bias"
        ]
    );
    let nbt = &t[6];
    assert_eq!((nbt.dtype, nbt.shape.as_slice()), (PthDType::I64, &[][..]));
    assert_eq!(nbt.data, 7i64.to_le_bytes());
    assert_eq!(t[0].shape, [4, 3, 3, 3]);
    // The nested {"model": state_dict, ...} checkpoint holds the same tensors.
    assert_eq!(read_pth(fixture("nested.pth")).unwrap(), t);
}

#[test]
fn views_are_copied_out_contiguous() {
    let t = read_pth(fixture("views.pth")).unwrap();
    let get = |name: &str| {
        let t = t.iter().find(|t| t.name == name).unwrap();
        (t.shape.clone(), t.to_f32().unwrap())
    };
    let (base_shape, base) = get("base");
    assert_eq!(base_shape, [3, 4]);
    let (shape, transposed) = get("transposed");
    assert_eq!(shape, [4, 3]);
    for i in 0..3 {
        for j in 0..4 {
            assert_eq!(transposed[j * 3 + i], base[i * 4 + j]);
        }
    }
    assert_eq!(get("row").1, &base[4..8]);
    assert_eq!(get("col").1, [base[2], base[6], base[10]]);
    assert_eq!(get("tail").1, &base[5..]);
    assert_eq!(get("strided").1, [base[0], base[3], base[8], base[11]]);
    let (shape, bcast) = get("bcast");
    assert_eq!(shape, [2, 3]);
    assert_eq!(bcast[..3], bcast[3..]);
}

#[test]
fn broken_and_hostile_files_give_typed_errors() {
    let read = |name: &str| read_pth(fixture(name)).unwrap_err();

    assert!(matches!(read("legacy.pth"), PthError::Legacy));
    assert!(matches!(
        read("truncated_archive.pth"),
        PthError::NotZip { .. }
    ));
    assert!(matches!(
        read("truncated_pickle.pth"),
        PthError::TruncatedPickle { .. }
    ));
    let err = read("os_system.pth");
    assert!(
        matches!(&err, PthError::ForbiddenGlobal { module, name, offset: 2 } if module == "os" && name == "system"),
        "{err}"
    );
    assert!(err.to_string().contains("os.system"), "{err}");
    assert!(
        !Path::new("pwned.txt").exists() && !fixture("pwned.txt").exists(),
        "the pickle's command ran"
    );
    assert!(matches!(
        read("offset_past_end.pth"),
        PthError::TensorOutOfBounds {
            end: 1006,
            storage_elements: 6,
            ..
        }
    ));
    assert!(matches!(
        read("absurd_shape.pth"),
        PthError::TooManyElements {
            elements: u64::MAX,
            ..
        }
    ));
    assert!(matches!(
        read("short_storage.pth"),
        PthError::StorageSize {
            elements: 6,
            actual_bytes: 8,
            dtype: PthDType::F32,
            ..
        }
    ));
    let err = read("deflated.pth");
    assert!(
        matches!(&err, PthError::Compressed { entry, .. } if entry.ends_with("/byteorder") || entry.ends_with("/data.pkl")),
        "{err}"
    );
    assert!(matches!(read("big_endian.pth"), PthError::BigEndian));
    // The unedited original of the hostile files is fine.
    let single = read_pth(fixture("single.pth")).unwrap();
    assert_eq!(single[0].shape, [2, 3]);
}

#[test]
fn error_messages_are_one_line() {
    for name in [
        "legacy.pth",
        "truncated_archive.pth",
        "truncated_pickle.pth",
        "os_system.pth",
        "offset_past_end.pth",
        "absurd_shape.pth",
        "short_storage.pth",
        "deflated.pth",
        "big_endian.pth",
        "does_not_exist.pth",
    ] {
        let msg = read_pth(fixture(name)).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{name}: {msg:?}");
    }
    let msg = read_pth(fixture("legacy.pth")).unwrap_err().to_string();
    assert_eq!(
        msg,
        "legacy torch.save format (not a zip archive), re-save with torch >= 1.6"
    );
}

#[test]
fn fixtures_stay_small() {
    let total: u64 = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total < 200 * 1024, "fixtures take {total} bytes");
}
