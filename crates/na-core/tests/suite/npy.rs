//! Tests of the `.npy` reader and writer against bytes written by numpy, and
//! of every error path on hostile input.
//!
//! The `const` fixtures below are exact `numpy.lib.format.write_array` output
//! from numpy 2.4.6 (Python 3), e.g. for `F4_2X3_V1`:
//!
//! ```python
//! f = io.BytesIO(); np.save(f, np.arange(6, dtype='<f4').reshape(2, 3)); f.getvalue()
//! ```
//!
//! `_V2`/`_V3` pass `version=(2, 0)`/`(3, 0)`; `F2_6` is
//! `[1.5, -2, 65504, inf, 6e-8, -0.0]` as `'<f2'`; `F8_4` is
//! `[1.25, -1e300, 0.1, nan]` as `'<f8'`; `F4_FORTRAN` is
//! `np.asfortranarray(...)`; `STRUCTURED` is `np.zeros(3, [('a', '<f4')])`.

use std::fs;
use std::path::PathBuf;

use na_core::npy::{
    encode_npy_f32, parse_npy, read_npy, IoOp, NpyArray, NpyDtype, NpyError, DEFAULT_MAX_ELEMENTS,
};
use proptest::prelude::*;

const F4_2X3_V1: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \x0a\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";
const F4_2X3_V2: &[u8] = b"\x93NUMPY\x02\x00t\x00\x00\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                        \x0a\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";
const F4_2X3_V3: &[u8] = b"\x93NUMPY\x03\x00t\x00\x00\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                        \x0a\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";
const F2_6: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f2', 'fortran_order': False, 'shape': (6,), }                                                            \x0a\x00>\x00\xc0\xff{\x00|\x01\x00\x00\x80";
const F8_4: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }                                                            \x0a\x00\x00\x00\x00\x00\x00\xf4?\x9cu\x00\x88<\xe47\xfe\x9a\x99\x99\x99\x99\x99\xb9?\x00\x00\x00\x00\x00\x00\xf8\x7f";
const F4_SCALAR: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (), }                                                              \x0a\x00\x00`@";
const F4_EMPTY: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }                                                            \x0a";
const F4_3X0: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 0), }                                                          \x0a";
const F4_BIG_ENDIAN: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }                                                            \x0a\x00\x00\x00\x00\x00\x00\x00\x00";
const F4_FORTRAN: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }                                                           \x0a\x00\x00\x00\x00\x00\x00@@\x00\x00\x80?\x00\x00\x80@\x00\x00\x00@\x00\x00\xa0@";
const STRUCTURED: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }                                                   \x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
const I4: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }                                                            \x0a\x00\x00\x00\x00\x00\x00\x00\x00";

const MAX: usize = DEFAULT_MAX_ELEMENTS;

/// Builds a version 1.0 file from a header dict (padded and terminated
/// with `\n` like numpy) and raw data bytes.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.as_bytes().to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    raw_npy(1, &header, data)
}

/// Builds a file from a version, verbatim header bytes and data bytes.
fn raw_npy(major: u8, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.push(major);
    out.push(0);
    if major == 1 {
        out.extend_from_slice(&u16::try_from(header.len()).expect("u16").to_le_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(header.len()).expect("u32").to_le_bytes());
    }
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// A v1 file whose header dict is `{'descr': D, 'fortran_order': F, 'shape': S, }`.
fn npy_with(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    npy_v1(
        &format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"),
        data,
    )
}

fn parse_err(bytes: &[u8]) -> NpyError {
    match parse_npy(bytes, MAX) {
        Ok(a) => panic!("expected an error, parsed {a:?}"),
        Err(e) => {
            check_message(&e);
            e
        }
    }
}

/// Error messages are one line and start with a lower-case letter or '.'.
fn check_message(e: &NpyError) {
    let msg = e.to_string();
    assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
    let first = msg.chars().next().expect("non-empty message");
    assert!(first.is_ascii_lowercase() || first == '.', "{msg:?}");
}

fn malformed(bytes: &[u8]) -> String {
    match parse_err(bytes) {
        NpyError::MalformedHeader { reason, .. } => reason,
        e => panic!("expected MalformedHeader, got {e:?}"),
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("na-core-npy-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// numpy-written files
// ---------------------------------------------------------------------------

#[test]
fn npy_reads_numpy_f4_all_versions() {
    for bytes in [F4_2X3_V1, F4_2X3_V2, F4_2X3_V3] {
        let a = parse_npy(bytes, MAX).expect("parse");
        assert_eq!(
            a,
            NpyArray {
                shape: vec![2, 3],
                dtype: NpyDtype::F32,
                data: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            }
        );
        assert_eq!(a.len(), 6);
        assert!(!a.is_empty());
    }
}

#[test]
fn npy_encode_is_byte_exact_with_numpy() {
    let data = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(encode_npy_f32(&[2, 3], &data).expect("encode"), F4_2X3_V1);
    assert_eq!(encode_npy_f32(&[], &[3.5]).expect("encode"), F4_SCALAR);
    assert_eq!(encode_npy_f32(&[0], &[]).expect("encode"), F4_EMPTY);
    assert_eq!(encode_npy_f32(&[3, 0], &[]).expect("encode"), F4_3X0);
}

#[test]
fn npy_encode_switches_to_version_2_for_huge_headers() {
    // numpy writes 1.0 up to 21817 unit dimensions and 2.0 from 21818 on.
    let v1 = encode_npy_f32(&vec![1; 21_817], &[1.0]).expect("encode");
    assert_eq!(v1[6], 1);
    assert_eq!(v1.len(), 65_536 + 4);
    let v2 = encode_npy_f32(&vec![1; 21_818], &[1.0]).expect("encode");
    assert_eq!(v2[6], 2);
    assert_eq!(v2.len(), 65_600 + 4);
    for bytes in [&v1, &v2] {
        let a = parse_npy(bytes, MAX).expect("parse");
        assert_eq!(a.data, vec![1.0]);
    }
}

#[test]
fn npy_reads_f2_values() {
    let a = parse_npy(F2_6, MAX).expect("parse");
    assert_eq!(a.dtype, NpyDtype::F16);
    assert_eq!(a.shape, vec![6]);
    assert_eq!(
        bits(&a.data),
        bits(&[1.5, -2.0, 65504.0, f32::INFINITY, 5.960_464_5e-8, -0.0])
    );
}

#[test]
fn npy_reads_f8_values() {
    let a = parse_npy(F8_4, MAX).expect("parse");
    assert_eq!(a.dtype, NpyDtype::F64);
    assert_eq!(a.shape, vec![4]);
    assert_eq!(a.data[0], 1.25);
    assert_eq!(a.data[1], f32::NEG_INFINITY);
    assert_eq!(a.data[2], 0.1_f32);
    assert!(a.data[3].is_nan());
}

#[test]
fn npy_reads_empty_and_scalar_arrays() {
    let a = parse_npy(F4_EMPTY, MAX).expect("parse");
    assert_eq!(a.shape, vec![0]);
    assert!(a.is_empty());
    assert_eq!(a.len(), 0);

    let a = parse_npy(F4_3X0, MAX).expect("parse");
    assert_eq!(a.shape, vec![3, 0]);
    assert!(a.is_empty());

    let a = parse_npy(F4_SCALAR, MAX).expect("parse");
    assert_eq!(a.shape, Vec::<usize>::new());
    assert_eq!(a.data, vec![3.5]);
    assert_eq!(a.len(), 1);

    // A zero dimension makes the count 0 even if the rest would overflow.
    let a = parse_npy(
        &npy_with("'<f4'", "False", "(0, 1099511627776, 1099511627776)", &[]),
        MAX,
    )
    .expect("parse");
    assert!(a.is_empty());
}

#[test]
fn npy_dtype_descr() {
    assert_eq!(NpyDtype::F16.descr(), "<f2");
    assert_eq!(NpyDtype::F32.descr(), "<f4");
    assert_eq!(NpyDtype::F64.descr(), "<f8");
    assert_eq!(NpyDtype::F64.item_size(), 8);
}

// ---------------------------------------------------------------------------
// Header syntax that must be accepted
// ---------------------------------------------------------------------------

#[test]
fn npy_accepts_header_variations() {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    for dict in [
        // Any key order, no trailing comma, double quotes, odd spacing.
        "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}",
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,)}",
        "{ 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 2 , ) , }",
        "{'descr': '<f4',\n 'fortran_order': False,\n 'shape': (2,)}",
        // Python 2 long literals.
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }",
    ] {
        let a = parse_npy(&npy_v1(dict, &data), MAX).unwrap_or_else(|e| panic!("{dict}: {e}"));
        assert_eq!(a.data, vec![1.0, 2.0], "{dict}");
    }
    let a = parse_npy(
        &npy_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2,)}",
            &data,
        ),
        MAX,
    )
    .expect("parse");
    assert_eq!(a.shape, vec![1, 2]);
}

#[test]
fn npy_v3_accepts_utf8_header() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (), }   \n";
    let a = parse_npy(&raw_npy(3, header.as_bytes(), &1.0f32.to_le_bytes()), MAX).expect("v3");
    assert_eq!(a.data, vec![1.0]);

    // UTF-8 is decoded, but the content must still parse.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'é': 1}\n";
    match parse_err(&raw_npy(3, header.as_bytes(), &[])) {
        NpyError::UnknownKey { key } => assert_eq!(key, "é"),
        e => panic!("{e:?}"),
    }
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (é,), }\n";
    malformed(&raw_npy(3, header.as_bytes(), &[]));
}

// ---------------------------------------------------------------------------
// Preamble errors
// ---------------------------------------------------------------------------

#[test]
fn npy_bad_magic() {
    for bytes in [
        &b"PK\x03\x04\x14\x00\x00\x00\x08\x00"[..],
        b"\x93NUMPZ\x01\x00v\x00",
        b"x",
    ] {
        match parse_err(bytes) {
            NpyError::BadMagic { found } => assert_eq!(found, bytes[..bytes.len().min(6)]),
            e => panic!("{e:?}"),
        }
    }
    let msg = parse_err(b"PK\x03\x04\x14\x00\x00\x00").to_string();
    assert!(msg.contains("PK\\x03\\x04"), "{msg}");
}

#[test]
fn npy_truncated_preamble() {
    for bytes in [
        &b""[..],
        b"\x93NUM",
        b"\x93NUMPY",
        b"\x93NUMPY\x01",
        b"\x93NUMPY\x01\x00v",
    ] {
        match parse_err(bytes) {
            NpyError::TruncatedHeader { actual, .. } => assert_eq!(actual, bytes.len() as u64),
            e => panic!("{e:?}"),
        }
    }
    match parse_err(b"\x93NUMPY\x02\x00\x10\x00\x00") {
        NpyError::TruncatedHeader { expected, actual } => assert_eq!((expected, actual), (12, 11)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn npy_bad_version() {
    for (major, minor) in [(0, 0), (1, 1), (2, 1), (4, 0), (255, 255)] {
        let mut bytes = F4_2X3_V1.to_vec();
        bytes[6] = major;
        bytes[7] = minor;
        match parse_err(&bytes) {
            NpyError::UnsupportedVersion { major: a, minor: b } => {
                assert_eq!((a, b), (major, minor))
            }
            e => panic!("{e:?}"),
        }
    }
    let mut bytes = F4_2X3_V1.to_vec();
    bytes[6] = 4;
    assert!(parse_err(&bytes).to_string().contains("version 4.0"));
}

#[test]
fn npy_truncated_header() {
    let bytes = &F4_2X3_V1[..60];
    match parse_err(bytes) {
        NpyError::TruncatedHeader { expected, actual } => assert_eq!((expected, actual), (128, 60)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn npy_header_len_beyond_file_or_cap() {
    // v2 header length far beyond the file, but under the cap.
    let mut bytes = F4_2X3_V2.to_vec();
    bytes[8..12].copy_from_slice(&500_000u32.to_le_bytes());
    match parse_err(&bytes) {
        NpyError::TruncatedHeader { expected, actual } => {
            assert_eq!((expected, actual), (500_012, bytes.len() as u64));
        }
        e => panic!("{e:?}"),
    }
    // Header length above the cap.
    bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    match parse_err(&bytes) {
        NpyError::HeaderTooLarge { len, .. } => assert_eq!(len, u64::from(u32::MAX)),
        e => panic!("{e:?}"),
    }
    // v1 header length beyond the file.
    let mut bytes = F4_2X3_V1.to_vec();
    bytes[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(
        parse_err(&bytes),
        NpyError::TruncatedHeader { .. }
    ));
}

// ---------------------------------------------------------------------------
// Header errors
// ---------------------------------------------------------------------------

#[test]
fn npy_header_encoding() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'é': 1}\n";
    match parse_err(&raw_npy(1, header.as_bytes(), &[])) {
        NpyError::HeaderEncoding { major, offset, .. } => {
            assert_eq!(major, 1);
            assert_eq!(offset, header.find('é').expect("é"));
        }
        e => panic!("{e:?}"),
    }
    let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n".to_vec();
    header[3] = 0xff;
    match parse_err(&raw_npy(3, &header, &[])) {
        NpyError::HeaderEncoding { major, offset, .. } => assert_eq!((major, offset), (3, 3)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn npy_header_without_newline() {
    let header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (), }    ";
    let reason = malformed(&raw_npy(1, header, &[0; 4]));
    assert!(reason.contains("newline"), "{reason}");
}

#[test]
fn npy_missing_keys() {
    for (dict, key) in [
        ("{'fortran_order': False, 'shape': (2,), }", "descr"),
        ("{'descr': '<f4', 'shape': (2,), }", "fortran_order"),
        ("{'descr': '<f4', 'fortran_order': False, }", "shape"),
        ("{}", "descr"),
    ] {
        match parse_err(&npy_v1(dict, &[0; 8])) {
            NpyError::MissingKey { key: k } => assert_eq!(k, key, "{dict}"),
            e => panic!("{dict}: {e:?}"),
        }
    }
}

#[test]
fn npy_duplicate_key() {
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'descr': '<f4'}";
    match parse_err(&npy_v1(dict, &[0; 8])) {
        NpyError::DuplicateKey { key } => assert_eq!(key, "descr"),
        e => panic!("{e:?}"),
    }
    let dict = "{'shape': (2,), 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}";
    assert!(matches!(
        parse_err(&npy_v1(dict, &[0; 8])),
        NpyError::DuplicateKey { .. }
    ));
}

#[test]
fn npy_unknown_key() {
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'order': 'C'}";
    let e = parse_err(&npy_v1(dict, &[0; 8]));
    assert!(e.to_string().contains("'order'"), "{e}");
    assert!(matches!(e, NpyError::UnknownKey { key } if key == "order"));
}

#[test]
fn npy_malformed_dicts() {
    for (dict, needle) in [
        (
            "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}",
            "expected ','",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x",
            "unterminated string",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
            "expected ','",
        ),
        (
            "{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}",
            "expected ':'",
        ),
        (
            "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}",
            "expected ','",
        ),
        (
            "{'descr': '<f4',, 'fortran_order': False, 'shape': (2,)}",
            "quoted key",
        ),
        (
            "{descr: '<f4', 'fortran_order': False, 'shape': (2,)}",
            "quoted key",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x",
            "padding",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}}",
            "padding",
        ),
        ("['descr', '<f4']", "expected '{'"),
        ("", "expected '{'"),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "True or False",
        ),
        (
            "{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}",
            "True or False",
        ),
        (
            "{'descr': <f4, 'fortran_order': False, 'shape': (2,)}",
            "unexpected character",
        ),
        (
            "{'descr': None, 'fortran_order': False, 'shape': (2,)}",
            "'descr'",
        ),
        (
            "{'descr': '<\\x66\\x34', 'fortran_order': False, 'shape': (2,)}",
            "escape",
        ),
        (
            "{'descr': '<f4\x01', 'fortran_order': False, 'shape': (2,)}",
            "control",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\0",
            "unexpected character",
        ),
        // Bad shape tuples.
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2)}",
            "(n,)",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': 2}",
            "expected '('",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': [2]}",
            "expected '('",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2 1)}",
            "',' or ')'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}",
            "dimension",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,,)}",
            "dimension",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, (1,))}",
            "dimension",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,",
            "dimension",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': ('2',)}",
            "dimension",
        ),
    ] {
        let reason = malformed(&npy_v1(dict, &[0; 8]));
        assert!(reason.contains(needle), "{dict}: {reason}");
    }
    // The offset points at the problem.
    match parse_err(&npy_v1("{'descr' '<f4'}", &[])) {
        NpyError::MalformedHeader { offset, .. } => assert_eq!(offset, 9),
        e => panic!("{e:?}"),
    }
}

#[test]
fn npy_deep_nesting_is_rejected_not_overflowing_the_stack() {
    let depth = 200_000;
    let dict = format!(
        "{{'descr': {}{}, 'fortran_order': False, 'shape': (2,)}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let mut header = dict.into_bytes();
    header.push(b'\n');
    let reason = malformed(&raw_npy(2, &header, &[]));
    assert!(reason.contains("nested"), "{reason}");
}

#[test]
fn npy_big_endian() {
    match parse_err(F4_BIG_ENDIAN) {
        NpyError::BigEndian { descr } => assert_eq!(descr, ">f4"),
        e => panic!("{e:?}"),
    }
    for descr in [">f2", ">f8"] {
        let e = parse_err(&npy_with(&format!("'{descr}'"), "False", "(2,)", &[0; 16]));
        assert!(e.to_string().contains(descr), "{e}");
        assert!(matches!(e, NpyError::BigEndian { descr: d } if d == descr));
    }
}

#[test]
fn npy_fortran_order() {
    assert!(matches!(parse_err(F4_FORTRAN), NpyError::FortranOrder));
}

#[test]
fn npy_unsupported_dtypes() {
    match parse_err(I4) {
        NpyError::UnsupportedDtype { descr } => assert_eq!(descr, "<i4"),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        parse_err(I4).to_string(),
        "unsupported .npy dtype '<i4' (expected '<f2', '<f4' or '<f8')"
    );
    for descr in [
        "<i4", "|u1", "<c8", "|O", "=f4", "|f4", "f4", "<f16", ">i4", "<f4 ", "<U3", "|b1",
        "<M8[ns]",
    ] {
        match parse_err(&npy_with(&format!("'{descr}'"), "False", "(2,)", &[0; 8])) {
            NpyError::UnsupportedDtype { descr: d } => assert_eq!(d, descr),
            e => panic!("{descr}: {e:?}"),
        }
    }
    match parse_err(STRUCTURED) {
        NpyError::UnsupportedDtype { descr } => assert_eq!(descr, "[('a', '<f4')]"),
        e => panic!("{e:?}"),
    }
    for descr in [
        "[('a', '<f4'), ('b', '<f8', (2, 3))]",
        "('<f4', (2,))",
        "{'names': ['a'], 'formats': ['<f4']}",
        "[]",
    ] {
        match parse_err(&npy_with(descr, "False", "(2,)", &[0; 8])) {
            NpyError::UnsupportedDtype { descr: d } => assert_eq!(d, descr),
            e => panic!("{descr}: {e:?}"),
        }
    }
    // A huge descr is shortened in the error.
    let long = "x".repeat(10_000);
    let e = parse_err(&npy_with(&format!("'{long}'"), "False", "(2,)", &[0; 8]));
    assert!(e.to_string().len() < 200, "{e}");
}

#[test]
fn npy_invalid_dimensions() {
    for dim in [
        "-1",
        "2.5",
        "1e3",
        "0x10",
        "99999999999999999999999",
        "True",
        "-0",
    ] {
        match parse_err(&npy_with("'<f4'", "False", &format!("({dim},)"), &[])) {
            NpyError::InvalidDimension { literal } => assert_eq!(literal, dim),
            e => panic!("{dim}: {e:?}"),
        }
    }
    let e = parse_err(&npy_with("'<f4'", "False", "(2, -3)", &[]));
    assert!(e.to_string().contains("'-3'"), "{e}");
}

#[test]
#[cfg(target_pointer_width = "64")]
fn npy_shape_overflow() {
    match parse_err(&npy_with(
        "'<f4'",
        "False",
        "(1099511627776, 1099511627776)",
        &[],
    )) {
        NpyError::ShapeOverflow { shape } => assert_eq!(shape, vec![1 << 40, 1 << 40]),
        e => panic!("{e:?}"),
    }
    // Element count fits, byte count does not.
    let bytes = npy_with("'<f8'", "False", "(2305843009213693952, 2)", &[]);
    match parse_npy(&bytes, usize::MAX) {
        Err(NpyError::ShapeOverflow { shape }) => assert_eq!(shape, vec![1 << 61, 2]),
        r => panic!("{r:?}"),
    }
}

#[test]
fn npy_too_many_elements() {
    let bytes = encode_npy_f32(&[10], &[0.0; 10]).expect("encode");
    match parse_npy(&bytes, 9) {
        Err(NpyError::TooManyElements { shape, count, max }) => {
            assert_eq!((shape, count, max), (vec![10], 10, 9));
        }
        r => panic!("{r:?}"),
    }
    assert!(parse_npy(&bytes, 10).is_ok());
    // The default cap rejects 2^31 + 1 elements before looking at the data.
    let bytes = npy_with("'<f2'", "False", "(2147483649,)", &[]);
    assert!(matches!(
        parse_err(&bytes),
        NpyError::TooManyElements {
            count: 2_147_483_649,
            ..
        }
    ));
}

#[test]
#[cfg(target_pointer_width = "64")]
fn npy_huge_shape_tiny_file_does_not_allocate() {
    // 2^60 elements of f4 = 2^62 bytes: allocating would abort the process.
    let bytes = npy_with("'<f4'", "False", "(1073741824, 1073741824)", &[0; 4]);
    match parse_npy(&bytes, usize::MAX) {
        Err(NpyError::Truncated {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (1 << 62, 4));
        }
        r => panic!("{r:?}"),
    }
    let dir = TestDir::new("huge");
    let path = dir.path("huge.npy");
    fs::write(&path, &bytes).expect("write");
    match read_npy(&path, usize::MAX) {
        Err(NpyError::Truncated {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (1 << 62, 4));
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn npy_truncated_data() {
    let bytes = &F4_2X3_V1[..F4_2X3_V1.len() - 4];
    let e = parse_err(bytes);
    assert_eq!(
        e.to_string(),
        ".npy data truncated: header declares shape (2, 3) of '<f4' = 24 bytes, file has 20"
    );
    match e {
        NpyError::Truncated {
            shape,
            dtype,
            expected,
            actual,
        } => {
            assert_eq!(
                (shape, dtype, expected, actual),
                (vec![2, 3], NpyDtype::F32, 24, 20)
            );
        }
        e => panic!("{e:?}"),
    }
    // Half an element short.
    assert!(matches!(
        parse_err(&F2_6[..F2_6.len() - 1]),
        NpyError::Truncated {
            expected: 12,
            actual: 11,
            ..
        }
    ));
    // No data at all for a 0-d array.
    assert!(matches!(
        parse_err(&F4_SCALAR[..128]),
        NpyError::Truncated {
            expected: 4,
            actual: 0,
            ..
        }
    ));
}

#[test]
fn npy_trailing_data() {
    let mut bytes = F4_2X3_V1.to_vec();
    bytes.extend_from_slice(&[0; 3]);
    let e = parse_err(&bytes);
    assert!(e.to_string().contains("file has 27"), "{e}");
    assert!(matches!(
        e,
        NpyError::TrailingData {
            expected: 24,
            actual: 27,
            ..
        }
    ));
    let mut bytes = F4_EMPTY.to_vec();
    bytes.push(0);
    assert!(matches!(
        parse_err(&bytes),
        NpyError::TrailingData {
            expected: 0,
            actual: 1,
            ..
        }
    ));
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

#[test]
fn npy_encode_shape_mismatch() {
    match encode_npy_f32(&[2, 3], &[0.0; 5]) {
        Err(NpyError::ShapeMismatch {
            shape,
            expected,
            actual,
        }) => {
            assert_eq!((shape, expected, actual), (vec![2, 3], 6, 5));
        }
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        encode_npy_f32(&[], &[]),
        Err(NpyError::ShapeMismatch {
            expected: 1,
            actual: 0,
            ..
        })
    ));
    assert!(matches!(
        encode_npy_f32(&[usize::MAX, 2], &[]),
        Err(NpyError::ShapeOverflow { .. })
    ));
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

#[test]
fn npy_write_then_read_file() {
    let dir = TestDir::new("roundtrip");
    let path = dir.path("a.npy");
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    fs::write(&path, encode_npy_f32(&[2, 3, 4], &data).expect("encode")).expect("write");
    assert_eq!(dir.entries(), vec!["a.npy".to_owned()]);
    assert_eq!(
        fs::read(&path).expect("read"),
        encode_npy_f32(&[2, 3, 4], &data).expect("encode")
    );
    let a = read_npy(&path, MAX).expect("read_npy");
    assert_eq!(a.shape, vec![2, 3, 4]);
    assert_eq!(a.data, data);

    // Overwrites an existing file.
    fs::write(&path, encode_npy_f32(&[], &[7.0]).expect("encode")).expect("rewrite");
    assert_eq!(read_npy(&path, MAX).expect("read").data, vec![7.0]);
    assert_eq!(dir.entries(), vec!["a.npy".to_owned()]);
}

#[test]
fn npy_read_file_errors() {
    let dir = TestDir::new("read-errors");
    let missing = dir.path("missing.npy");
    let e = read_npy(&missing, MAX).expect_err("missing");
    check_message(&e);
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    assert!(matches!(e, NpyError::Io { op: IoOp::Open, .. }));
    assert!(std::error::Error::source(&e).is_some());

    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated.npy", F4_2X3_V1[..F4_2X3_V1.len() - 4].to_vec()),
        ("trailing.npy", [F4_2X3_V1, &[1, 2]].concat()),
        ("header.npy", F4_2X3_V1[..50].to_vec()),
        ("magic.npy", b"hello world".to_vec()),
        ("empty.npy", Vec::new()),
    ];
    for (name, bytes) in &cases {
        let path = dir.path(name);
        fs::write(&path, bytes).expect("write");
        let from_file = read_npy(&path, MAX).expect_err(name).to_string();
        let from_memory = parse_npy(bytes, MAX).expect_err(name).to_string();
        assert_eq!(from_file, from_memory, "{name}");
    }
    for (bytes, name) in [(F2_6, "f2.npy"), (F8_4, "f8.npy"), (F4_2X3_V3, "v3.npy")] {
        let path = dir.path(name);
        fs::write(&path, bytes).expect("write");
        let (a, b) = (
            read_npy(&path, MAX).expect(name),
            parse_npy(bytes, MAX).expect(name),
        );
        assert_eq!((a.shape, bits(&a.data)), (b.shape, bits(&b.data)));
    }
}

#[cfg(unix)]
#[test]
fn npy_read_directory_is_an_io_error() {
    let dir = TestDir::new("read-dir");
    let e = read_npy(&dir.0, MAX).expect_err("directory");
    assert!(matches!(e, NpyError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains(&*dir.0.to_string_lossy()), "{e}");
}

#[test]
fn npy_read_from_fifo() {
    let dir = TestDir::new("fifo");
    let mut trailing = F4_2X3_V1.to_vec();
    trailing.extend_from_slice(&[0; 100]);
    let cases: [(&[u8], Option<&str>); 4] = [
        (F4_2X3_V1, None),
        (&F4_2X3_V1[..F4_2X3_V1.len() - 4], Some("file has 20")),
        (&trailing, Some("file has 124")),
        (&F4_2X3_V1[..40], Some("header truncated")),
    ];
    for (i, (bytes, error)) in cases.into_iter().enumerate() {
        let path = dir.path(&format!("fifo{i}"));
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !matches!(made, Ok(status) if status.success()) {
            eprintln!("mkfifo unavailable; skipping");
            return;
        }
        let writer = {
            let (path, bytes) = (path.clone(), bytes.to_vec());
            std::thread::spawn(move || fs::write(path, bytes))
        };
        let result = read_npy(&path, MAX);
        // The reader may stop early; the writer then sees a broken pipe.
        let _ = writer.join().expect("writer thread");
        match (result, error) {
            (Ok(a), None) => assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            (Err(e), Some(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (r, _) => panic!("case {i}: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn shape_and_data() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    prop::collection::vec(0usize..5, 0..5).prop_flat_map(|shape| {
        let n = shape.iter().product::<usize>();
        let values = prop::collection::vec(any::<u32>().prop_map(f32::from_bits), n);
        (Just(shape), values)
    })
}

proptest! {
    #[test]
    fn npy_round_trip((shape, data) in shape_and_data()) {
        let bytes = encode_npy_f32(&shape, &data).expect("encode");
        let header_len = bytes.len() - 4 * data.len();
        prop_assert_eq!(header_len % 64, 0);
        prop_assert_eq!(bytes[header_len - 1], b'\n');
        let a = parse_npy(&bytes, MAX).expect("parse");
        prop_assert_eq!(&a.shape, &shape);
        prop_assert_eq!(a.dtype, NpyDtype::F32);
        prop_assert_eq!(bits(&a.data), bits(&data));
    }

    #[test]
    fn npy_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = parse_npy(&bytes, MAX) {
            check_message(&e);
        }
    }

    #[test]
    fn npy_mutated_files_never_panic(
        edits in prop::collection::vec((0usize..200, any::<u8>()), 1..6),
        cut in 0usize..200,
    ) {
        let mut bytes = F4_2X3_V1.to_vec();
        for (at, byte) in edits {
            if let Some(b) = bytes.get_mut(at % F4_2X3_V1.len()) {
                *b = byte;
            }
        }
        bytes.truncate(F4_2X3_V1.len() - cut.min(F4_2X3_V1.len()) / 4);
        if let Err(e) = parse_npy(&bytes, MAX) {
            check_message(&e);
        }
    }

    #[test]
    fn npy_arbitrary_headers_never_panic(header in "[{}()\\[\\]:, '\"a-z0-9<>|_.\\-\\\\\n]{0,120}") {
        for major in [1, 3] {
            if let Err(e) = parse_npy(&raw_npy(major, header.as_bytes(), &[0; 8]), MAX) {
                check_message(&e);
            }
        }
    }
}
