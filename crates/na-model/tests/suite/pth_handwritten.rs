//! `na_model::pth` against hand-written checkpoints (the files `torch.save`
//! wrote are checked in `pth.rs`): a protocol-2 pickle writer and
//! `torch.save`'s zip layout built here, valid state dicts read back, and
//! every kind of broken or hostile file refused with a typed error
//! (truncations, forbidden globals and opcodes, deep nesting, bounded memo,
//! stack and objects, hostile geometry, mismatched storages), never a panic.

use na_model::pth::*;
use std::io::{Cursor, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

/// The pickle opcodes these tests write, with their values from Python's
/// `pickletools` (written out here rather than taken from the reader, so
/// the tests check it against the format, not against itself).
mod op {
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BINPERSID: u8 = b'Q';
    pub const BINPUT: u8 = b'q';
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BUILD: u8 = b'b';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const GLOBAL: u8 = b'c';
    pub const LONG1: u8 = 0x8a;
    pub const LONG_BINGET: u8 = b'j';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MARK: u8 = b'(';
    pub const MEMOIZE: u8 = 0x94;
    pub const NEWFALSE: u8 = 0x89;
    pub const NEWTRUE: u8 = 0x88;
    pub const NONE: u8 = b'N';
    pub const PROTO: u8 = 0x80;
    pub const REDUCE: u8 = b'R';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const STOP: u8 = b'.';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE3: u8 = 0x87;
}

/// A hand-written protocol-2 pickle.
#[derive(Clone, Default)]
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        P(vec![op::PROTO, 2])
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn op(self, code: u8) -> Self {
        self.raw(&[code])
    }
    fn str(self, s: &str) -> Self {
        let len = u32::try_from(s.len()).unwrap().to_le_bytes();
        self.op(op::BINUNICODE).raw(&len).raw(s.as_bytes())
    }
    fn int(self, v: i64) -> Self {
        match i32::try_from(v) {
            Ok(v) => self.op(op::BININT).raw(&v.to_le_bytes()),
            Err(_) => self.raw(&[op::LONG1, 8]).raw(&v.to_le_bytes()),
        }
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(op::GLOBAL)
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    fn ints(self, v: &[i64]) -> Self {
        v.iter()
            .fold(self.op(op::MARK), |p, &x| p.int(x))
            .op(op::TUPLE)
    }
    /// `_rebuild_tensor_v2(storage(class, key, numel), offset, size, stride, False, OrderedDict())`.
    fn tensor(
        self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(op::MARK)
            .op(op::MARK)
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(op::TUPLE)
            .op(op::BINPERSID)
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(op::NEWFALSE)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::TUPLE)
            .op(op::REDUCE)
    }
    /// A contiguous f32 tensor on its own storage `key`.
    fn f32_tensor(self, key: &str, shape: &[i64]) -> Self {
        let numel = shape.iter().product();
        let mut stride = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        self.tensor("FloatStorage", key, numel, 0, shape, &stride)
    }
    fn stop(self) -> Vec<u8> {
        self.op(op::STOP).0
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn iota(n: usize) -> Vec<u8> {
    f32_bytes(&(0..n).map(|i| i as f32).collect::<Vec<_>>())
}

/// A stored zip archive `archive/...` as torch.save lays it out.
fn archive_with(pkl: &[u8], storages: &[(&str, &[u8])], byteorder: Option<&[u8]>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    if let Some(order) = byteorder {
        zip.start_file("archive/byteorder", opts).unwrap();
        zip.write_all(order).unwrap();
    }
    for (key, data) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}

fn archive(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    archive_with(pkl, storages, Some(b"little"))
}

/// `{"w": f32[2, 3]}` with values 0..6.
fn simple_pickle() -> Vec<u8> {
    P::new()
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("w")
        .f32_tensor("0", &[2, 3])
        .op(op::SETITEMS)
        .stop()
}

fn read_pkl(pkl: &[u8], storages: &[(&str, &[u8])]) -> Result<Vec<PthTensor>, PthError> {
    read_pth_bytes(&archive(pkl, storages))
}

fn one_tensor(class: &str, key_numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    P::new()
        .op(op::EMPTY_DICT)
        .str("w")
        .tensor(class, "0", key_numel, offset, size, stride)
        .op(op::SETITEM)
        .stop()
}

#[test]
fn dtype_sizes_and_names() {
    let all = [
        (PthDType::F32, 4, "f32"),
        (PthDType::F16, 2, "f16"),
        (PthDType::BF16, 2, "bf16"),
        (PthDType::F64, 8, "f64"),
        (PthDType::I64, 8, "i64"),
        (PthDType::I32, 4, "i32"),
        (PthDType::I16, 2, "i16"),
        (PthDType::I8, 1, "i8"),
        (PthDType::U8, 1, "u8"),
        (PthDType::Bool, 1, "bool"),
    ];
    for (d, size, name) in all {
        assert_eq!(d.size(), size);
        assert_eq!(d.name(), name);
        assert_eq!(d.is_float(), name.starts_with('f') || name == "bf16");
    }
}

#[test]
fn reads_a_hand_written_state_dict() {
    let t = read_pkl(&simple_pickle(), &[("0", &iota(6))]).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].name, "w");
    assert_eq!(t[0].dtype, PthDType::F32);
    assert_eq!(t[0].shape, [2, 3]);
    assert_eq!(t[0].numel(), 6);
    assert_eq!(t[0].to_f32().unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn missing_byteorder_means_little_endian() {
    let bytes = archive_with(&simple_pickle(), &[("0", &iota(6))], None);
    assert_eq!(read_pth_bytes(&bytes).unwrap()[0].shape, [2, 3]);
    let big = archive_with(&simple_pickle(), &[("0", &iota(6))], Some(b"big"));
    assert!(matches!(read_pth_bytes(&big), Err(PthError::BigEndian)));
    let odd = archive_with(&simple_pickle(), &[("0", &iota(6))], Some(b"middle"));
    assert!(matches!(
        read_pth_bytes(&odd),
        Err(PthError::BadByteOrder { value }) if value == "middle"
    ));
}

#[test]
fn strided_views_are_copied_out_contiguous() {
    // base [3, 4] = 0..12, its transpose, a column, a broadcast row,
    // a 0-d element and an empty slice, all on storage "0".
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("t")
        .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4])
        .str("col")
        .tensor("FloatStorage", "0", 12, 2, &[3], &[4])
        .str("bcast")
        .tensor("FloatStorage", "0", 12, 4, &[2, 4], &[0, 1])
        .str("scalar")
        .tensor("FloatStorage", "0", 12, 11, &[], &[])
        .str("empty")
        .tensor("FloatStorage", "0", 12, 12, &[0, 4], &[4, 1])
        .str("base")
        .tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
        .op(op::SETITEMS)
        .stop();
    let t = read_pkl(&pkl, &[("0", &iota(12))]).unwrap();
    let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["t", "col", "bcast", "scalar", "empty", "base"]);
    let v = |i: usize| t[i].to_f32().unwrap();
    assert_eq!(v(0), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(v(1), [2., 6., 10.]);
    assert_eq!(v(2), [4., 5., 6., 7., 4., 5., 6., 7.]);
    assert_eq!((t[3].shape.as_slice(), v(3)), (&[][..], vec![11.0]));
    assert_eq!((t[4].shape.as_slice(), v(4)), (&[0, 4][..], vec![]));
    assert_eq!(v(5), (0..12).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn float_conversions_and_not_float() {
    let h = [half::f16::from_f32(1.5), half::f16::from_f32(-2.0)];
    let t = PthTensor {
        name: "h".into(),
        dtype: PthDType::F16,
        shape: vec![2],
        data: h.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    assert_eq!(t.to_f32().unwrap(), [1.5, -2.0]);
    let b = PthTensor {
        dtype: PthDType::BF16,
        data: [half::bf16::from_f32(3.0), half::bf16::from_f32(-0.25)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        ..t.clone()
    };
    assert_eq!(b.to_f32().unwrap(), [3.0, -0.25]);
    let d = PthTensor {
        dtype: PthDType::F64,
        data: [0.1f64, 7.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..t.clone()
    };
    assert_eq!(d.to_f32().unwrap(), [0.1f32, 7.0]);
    let i = PthTensor {
        dtype: PthDType::I64,
        data: [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..t
    };
    assert!(matches!(
        i.to_f32(),
        Err(PthError::NotFloat {
            dtype: PthDType::I64,
            ..
        })
    ));
}

#[test]
fn forbidden_globals_are_named_and_never_run() {
    for (module, name) in [
        ("os", "system"),
        ("builtins", "eval"),
        ("argparse", "Namespace"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_tensor"),
        ("numpy.core.multiarray", "_reconstruct"),
    ] {
        let pkl = P::new()
            .global(module, name)
            .str("echo pwned")
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .stop();
        let err = read_pkl(&pkl, &[]).unwrap_err();
        assert!(
            matches!(&err, PthError::ForbiddenGlobal { module: m, name: n, offset: 2 } if m == module && n == name),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{module}.{name}")));
        // The same through STACK_GLOBAL (protocol 4).
        let pkl = P::new()
            .str(module)
            .str(name)
            .op(op::STACK_GLOBAL)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::ForbiddenGlobal { .. })
        ));
    }
}

#[test]
fn unsupported_opcodes_are_named() {
    for (code, name) in [
        (b'i', "INST"),
        (b'o', "OBJ"),
        (0x81, "NEWOBJ"),
        (b'0', "POP"),
        (b'S', "STRING"),
        (0x8f, "EMPTY_SET"),
        (0xff, "unknown"),
    ] {
        let pkl = P::new().op(code).stop();
        let err = read_pkl(&pkl, &[]).unwrap_err();
        assert!(
            matches!(&err, PthError::UnsupportedOpcode { opcode, name: n, offset: 2 } if *opcode == code && *n == name),
            "{err}"
        );
    }
    let pkl = P(vec![op::PROTO, 6]).op(op::NONE).stop();
    assert!(matches!(
        read_pkl(&pkl, &[]),
        Err(PthError::UnsupportedProtocol { version: 6 })
    ));
}

#[test]
fn every_truncation_of_the_pickle_is_an_error() {
    let pkl = simple_pickle();
    for cut in 0..pkl.len() {
        let res = read_pkl(&pkl[..cut], &[("0", &iota(6))]);
        assert!(res.is_err(), "cut at {cut} was accepted");
    }
    assert!(matches!(
        read_pkl(&pkl[..pkl.len() - 1], &[("0", &iota(6))]),
        Err(PthError::TruncatedPickle { .. })
    ));
}

#[test]
fn every_truncation_of_the_archive_is_an_error() {
    let bytes = archive(&simple_pickle(), &[("0", &iota(6))]);
    for cut in 0..bytes.len() {
        assert!(read_pth_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // 200 000 nested lists, built without MARK: a list, not a dict.
    let n = 200_000;
    let mut pkl = P::new();
    pkl.0.extend(std::iter::repeat_n(op::EMPTY_LIST, n));
    pkl.0.extend(std::iter::repeat_n(op::APPEND, n - 1));
    let err = read_pkl(&pkl.stop(), &[]).unwrap_err();
    assert!(matches!(err, PthError::NotAStateDict { .. }), "{err}");
    // The same nested in tuples.
    let mut pkl = P::new().op(op::NONE);
    pkl.0.extend(std::iter::repeat_n(op::TUPLE1, n));
    assert!(matches!(
        read_pkl(&pkl.stop(), &[]),
        Err(PthError::NotAStateDict { .. })
    ));
    // Deeply nested MARKs hit the cap.
    let mut pkl = P::new();
    pkl.0
        .extend(std::iter::repeat_n(op::MARK, MAX_MARK_DEPTH + 1));
    assert!(matches!(
        read_pkl(&pkl.stop(), &[]),
        Err(PthError::PickleLimit {
            what: "nested MARKs",
            ..
        })
    ));
}

/// The pickle's memo, stack and containers are bounded relative to its
/// length, and absolutely.
#[test]
fn memo_stack_and_objects_are_bounded_by_the_pickle_length() {
    let cap = |len: usize, abs: usize| (len / PICKLE_BYTES_PER_ENTRY + PICKLE_ENTRY_SLACK).min(abs);
    let limit_of = |pkl: &[u8]| match read_pkl(pkl, &[]) {
        Err(PthError::PickleLimit {
            what,
            limit,
            pickle_bytes,
            ..
        }) => (what, limit, pickle_bytes),
        other => panic!("expected a pickle limit, got {other:?}"),
    };
    // 20 000 MEMOIZE opcodes: over this pickle's share of memo entries.
    let n = 20_000;
    let mut pkl = P::new().op(op::NONE);
    pkl.0.extend(std::iter::repeat_n(op::MEMOIZE, n));
    let pkl = pkl.stop();
    assert_eq!(
        limit_of(&pkl),
        ("memo entries", cap(pkl.len(), MAX_MEMO), pkl.len())
    );
    // 2^21 of them (2 MiB): stopped at the absolute cap.
    let mut pkl = P::new().op(op::NONE);
    pkl.0.extend(std::iter::repeat_n(op::MEMOIZE, 1 << 21));
    let pkl = pkl.stop();
    assert_eq!(limit_of(&pkl).1, MAX_MEMO);
    let e = read_pkl(&pkl, &[]).unwrap_err().to_string();
    assert!(
        e.contains(&format!("more than {MAX_MEMO} memo entries")),
        "{e}"
    );
    // 20 000 pushes without a pop: over the stack's share.
    let mut pkl = P::new();
    pkl.0.extend(std::iter::repeat_n(op::NONE, n));
    let pkl = pkl.stop();
    assert_eq!(
        limit_of(&pkl),
        ("stack values", cap(pkl.len(), MAX_STACK), pkl.len())
    );
    // Containers: one per byte at most, and never above MAX_OBJECTS.
    let mut pkl = P::new().op(op::NONE);
    pkl.0
        .extend(std::iter::repeat_n(op::TUPLE1, MAX_OBJECTS + 1));
    assert_eq!(limit_of(&pkl.stop()).1, MAX_OBJECTS);
}

#[test]
fn huge_memo_indices_and_lengths() {
    // A sparse memo index is fine (Python's memo is a dict)...
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .raw(&[op::LONG_BINPUT, 0xff, 0xff, 0xff, 0xff])
        .raw(&[op::LONG_BINGET, 0xff, 0xff, 0xff, 0xff])
        .stop();
    assert_eq!(read_pkl(&pkl, &[]).unwrap(), []);
    // ...reading a slot never written is an error.
    let pkl = P::new()
        .raw(&[op::LONG_BINGET, 0xfe, 0xff, 0xff, 0xff])
        .stop();
    assert!(matches!(
        read_pkl(&pkl, &[]),
        Err(PthError::MemoMissing {
            index: 0xffff_fffe,
            offset: 2
        })
    ));
    // String lengths beyond the pickle.
    for head in [
        vec![op::BINUNICODE, 0xff, 0xff, 0xff, 0xff],
        vec![
            op::BINUNICODE8,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ],
        vec![op::SHORT_BINUNICODE, 200],
    ] {
        let pkl = P::new().raw(&head).raw(b"abc").stop();
        assert!(matches!(
            read_pkl(&pkl, &[]),
            Err(PthError::TruncatedPickle { .. })
        ));
    }
    // Integers wider than 64 bits.
    let pkl = P::new().raw(&[op::LONG1, 9]).raw(&[1; 9]).stop();
    assert!(matches!(
        read_pkl(&pkl, &[]),
        Err(PthError::MalformedPickle { .. })
    ));
}

#[test]
fn stack_and_mark_misuse_are_errors() {
    for body in [
        vec![op::REDUCE],
        vec![op::TUPLE],
        vec![op::TUPLE3],
        vec![op::NONE, op::SETITEM],
        vec![op::NONE, op::NONE, op::NONE, op::SETITEM],
        vec![op::EMPTY_LIST, op::MARK, op::NONE, op::SETITEMS],
        vec![op::EMPTY_DICT, op::MARK, op::NONE, op::APPENDS],
        vec![op::EMPTY_DICT, op::MARK, op::NONE, op::SETITEMS],
        vec![op::NONE, op::EMPTY_TUPLE, op::REDUCE],
        vec![op::NONE, op::BINPERSID],
        vec![op::EMPTY_LIST, op::EMPTY_DICT, op::BUILD],
        vec![op::NONE, op::NONE, op::STACK_GLOBAL],
        vec![op::BINPUT, 3],
        vec![op::NONE, op::MARK, op::TUPLE1],
        vec![op::NONE, op::MARK, op::BINPUT, 0],
        vec![op::EMPTY_DICT, op::MARK, op::NONE, op::NONE, op::SETITEM],
    ] {
        let pkl = P::new().raw(&body).stop();
        let err = read_pkl(&pkl, &[]).unwrap_err();
        assert!(
            matches!(err, PthError::MalformedPickle { .. }),
            "{body:?}: {err}"
        );
    }
}

#[test]
fn ordered_dict_with_metadata_and_overwrites() {
    // OrderedDict() with two items, "a" set twice (keeps its first
    // position, takes the last value), then BUILD {"_metadata": {...}}.
    let pkl = P::new()
        .global("collections", "OrderedDict")
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE)
        .op(op::MARK)
        .str("a")
        .f32_tensor("0", &[2])
        .str("b")
        .f32_tensor("1", &[1])
        .str("a")
        .f32_tensor("2", &[3])
        .op(op::SETITEMS)
        .op(op::EMPTY_DICT)
        .str("_metadata")
        .op(op::EMPTY_DICT)
        .str("")
        .op(op::EMPTY_DICT)
        .str("version")
        .int(1)
        .op(op::SETITEM)
        .op(op::SETITEM)
        .op(op::SETITEM)
        .op(op::BUILD)
        .stop();
    let t = read_pkl(&pkl, &[("0", &iota(2)), ("1", &iota(1)), ("2", &iota(3))]).unwrap();
    let summary: Vec<(&str, &[usize])> = t
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(summary, [("a", &[3][..]), ("b", &[1][..])]);
}

#[test]
fn parameters_are_their_data() {
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .str("p")
        .global("torch._utils", "_rebuild_parameter")
        .f32_tensor("0", &[2])
        .op(op::NEWTRUE)
        .global("collections", "OrderedDict")
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE)
        .op(op::TUPLE3)
        .op(op::REDUCE)
        .op(op::SETITEM)
        .stop();
    let t = read_pkl(&pkl, &[("0", &iota(2))]).unwrap();
    assert_eq!(t[0].to_f32().unwrap(), [0.0, 1.0]);
}

#[test]
fn top_level_selection() {
    let sd = |p: P| {
        p.op(op::EMPTY_DICT)
            .str("w")
            .f32_tensor("0", &[2])
            .op(op::SETITEM)
    };
    let storage: &[(&str, &[u8])] = &[("0", &iota(2))];
    // {"epoch": 3, "model": {...}} and {"state_dict": {...}, "lr": 0.5}.
    for key in ["model", "state_dict"] {
        let pkl = sd(P::new()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("epoch")
            .int(3)
            .str("opt")
            .op(op::NONE)
            .str(key))
        .str("lr")
        .raw(&[op::BINFLOAT, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0])
        .op(op::SETITEMS)
        .stop();
        let t = read_pkl(&pkl, storage).unwrap();
        assert_eq!(t[0].name, "w");
    }
    // A bad entry inside "model" is named with its prefix.
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .str("model")
        .op(op::EMPTY_DICT)
        .str("x")
        .op(op::EMPTY_LIST)
        .op(op::SETITEM)
        .op(op::SETITEM)
        .stop();
    let err = read_pkl(&pkl, &[]).unwrap_err();
    assert!(
        matches!(&err, PthError::NotATensor { key, found: "list" } if key == "model.x"),
        "{err}"
    );
    // Mixed tensors and other values, no "model".
    let pkl = sd(P::new()).str("step").int(1).op(op::SETITEM).stop();
    assert!(matches!(
        read_pkl(&pkl, storage),
        Err(PthError::NotATensor { key, found: "int" }) if key == "step"
    ));
    // No tensors at all.
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .str("epoch")
        .int(1)
        .op(op::SETITEM)
        .stop();
    assert!(matches!(
        read_pkl(&pkl, &[]),
        Err(PthError::NotAStateDict { .. })
    ));
    // A tensor under an integer key.
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .int(0)
        .f32_tensor("0", &[2])
        .op(op::SETITEM)
        .stop();
    assert!(matches!(
        read_pkl(&pkl, storage),
        Err(PthError::NonStringKey { found: "int" })
    ));
    // A bare tensor, not a dict.
    let pkl = P::new().f32_tensor("0", &[2]).stop();
    assert!(matches!(
        read_pkl(&pkl, storage),
        Err(PthError::NotAStateDict { found }) if found == "a tensor"
    ));
}

#[test]
fn hostile_geometry_is_refused() {
    let s = iota(6);
    let storage: &[(&str, &[u8])] = &[("0", &s)];
    let read = |offset, size: &[i64], stride: &[i64]| {
        read_pkl(
            &one_tensor("FloatStorage", 6, offset, size, stride),
            storage,
        )
    };
    assert!(matches!(
        read(0, &[-1], &[1]),
        Err(PthError::InvalidTensor { .. })
    ));
    assert!(matches!(
        read(0, &[2], &[-1]),
        Err(PthError::InvalidTensor { .. })
    ));
    assert!(matches!(
        read(-1, &[2], &[1]),
        Err(PthError::InvalidTensor { .. })
    ));
    assert!(matches!(
        read(0, &[2, 3], &[3]),
        Err(PthError::InvalidTensor { .. })
    ));
    let rank = MAX_RANK + 1;
    assert!(matches!(
        read(0, &vec![1; rank], &vec![1; rank]),
        Err(PthError::InvalidTensor { .. })
    ));
    // Past the end, by offset, by extent, and by overflowing arithmetic.
    assert!(matches!(
        read(5, &[2], &[1]),
        Err(PthError::TensorOutOfBounds {
            end: 7,
            storage_elements: 6,
            ..
        })
    ));
    assert!(matches!(
        read(0, &[2, 3], &[4, 1]),
        Err(PthError::TensorOutOfBounds { end: 7, .. })
    ));
    assert!(matches!(
        read(i64::MAX, &[1], &[1]),
        Err(PthError::TensorOutOfBounds { .. })
    ));
    assert!(matches!(
        read(0, &[4, 2], &[i64::MAX, 1]),
        Err(PthError::TensorOutOfBounds { end: u64::MAX, .. })
    ));
    assert!(matches!(
        read(7, &[0], &[1]),
        Err(PthError::TensorOutOfBounds { .. })
    ));
    // Absurd element counts, overflowing or not.
    assert!(matches!(
        read(0, &[1 << 62, 1 << 62], &[0, 0]),
        Err(PthError::TooManyElements {
            elements: u64::MAX,
            ..
        })
    ));
    assert!(matches!(
        read(0, &[1 << 33], &[0]),
        Err(PthError::TooManyElements { .. })
    ));
    // Broadcasting one element to 2^30 elements: too much expansion.
    assert!(matches!(
        read(0, &[1 << 30], &[0]),
        Err(PthError::ExpansionLimit { .. })
    ));
    // A size-1 dimension's stride does not matter.
    let t = read(1, &[1, 2], &[i64::MAX, 1]).unwrap();
    assert_eq!(t[0].to_f32().unwrap(), [1.0, 2.0]);
}

#[test]
fn storage_files_must_match_the_pickle() {
    let pkl = simple_pickle();
    // Too short, too long, missing.
    for data in [iota(5), iota(7)] {
        assert!(matches!(
            read_pkl(&pkl, &[("0", &data)]),
            Err(PthError::StorageSize { elements: 6, .. })
        ));
    }
    assert!(matches!(
        read_pkl(&pkl, &[("1", &iota(6))]),
        Err(PthError::MissingEntry { entry }) if entry == "archive/data/0"
    ));
    // A huge declared storage.
    let pkl = one_tensor("FloatStorage", i64::MAX, 0, &[2], &[1]);
    assert!(matches!(
        read_pkl(&pkl, &[("0", &iota(2))]),
        Err(PthError::StorageSize { .. })
    ));
    // One storage seen as two dtypes, or with two sizes.
    let two = |c2: &str, n2: i64| {
        P::new()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("a")
            .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
            .str("b")
            .tensor(c2, "0", n2, 0, &[2], &[1])
            .op(op::SETITEMS)
            .stop()
    };
    assert!(matches!(
        read_pkl(&two("IntStorage", 4), &[("0", &iota(4))]),
        Err(PthError::StorageDType {
            first: PthDType::F32,
            second: PthDType::I32,
            ..
        })
    ));
    assert!(matches!(
        read_pkl(&two("FloatStorage", 3), &[("0", &iota(4))]),
        Err(PthError::StorageSize { elements: 3, .. })
    ));
    // Storage keys cannot leave data/.
    let pkl = one_tensor("FloatStorage", 2, 0, &[2], &[1]);
    let at = pkl.windows(6).position(|w| w == b"X\x01\0\0\x000").unwrap();
    let mut evil = pkl[..at].to_vec();
    evil.extend_from_slice(b"X\x04\0\0\x00../0");
    evil.extend_from_slice(&pkl[at + 6..]);
    let err = read_pkl(&evil, &[("0", &iota(2))]).unwrap_err();
    assert!(
        matches!(&err, PthError::MalformedPickle { reason, .. } if reason.contains("../0")),
        "{err}"
    );
}

#[test]
fn shared_storage_is_read_once_and_reused() {
    let pkl = P::new()
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("a")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .str("b")
        .tensor("FloatStorage", "0", 4, 2, &[2], &[1])
        .str("c")
        .tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
        .op(op::SETITEMS)
        .stop();
    let t = read_pkl(&pkl, &[("0", &iota(4))]).unwrap();
    assert_eq!(t[0].to_f32().unwrap(), [0., 1., 2., 3.]);
    assert_eq!(t[1].to_f32().unwrap(), [2., 3.]);
    assert_eq!(t[2].to_f32().unwrap(), [0., 1., 2., 3.]);
}

#[test]
fn format_sniffing() {
    assert!(matches!(
        read_pth_bytes(b"\x80\x02\x8a\x0alegacy"),
        Err(PthError::Legacy)
    ));
    let mut tar = vec![0u8; 512];
    tar[257..262].copy_from_slice(b"ustar");
    assert!(matches!(read_pth_bytes(&tar), Err(PthError::Legacy)));
    for junk in [&b""[..], b"hello, world", b"PK\x03\x04"] {
        assert!(matches!(read_pth_bytes(junk), Err(PthError::NotZip { .. })));
    }
    // A zip that is not a checkpoint.
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file(
        "readme.txt",
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
    )
    .unwrap();
    zip.write_all(b"hi").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    assert!(matches!(
        read_pth_bytes(&bytes),
        Err(PthError::MissingEntry { .. })
    ));
}

#[test]
fn io_errors_name_the_file() {
    let path = Path::new("/nonexistent/dir/model.pth");
    let err = read_pth(path).unwrap_err();
    assert!(matches!(&err, PthError::Io { path: p, .. } if p == path));
    assert!(err.to_string().contains("model.pth"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Arbitrary bytes as data.pkl: an error or a result, never a panic.
    #[test]
    fn arbitrary_pickles_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let mut pkl = vec![op::PROTO, 2];
        pkl.extend(body);
        let _ = read_pkl(&pkl, &[("0", &iota(6))]);
    }

    /// A valid pickle with a few bytes changed.
    #[test]
    fn mutated_pickles_never_panic(edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..6)) {
        let mut pkl = simple_pickle();
        for (at, b) in edits {
            let n = pkl.len();
            pkl[at % n] = b;
        }
        let _ = read_pkl(&pkl, &[("0", &iota(6))]);
    }

    /// A valid archive with a few bytes changed.
    #[test]
    fn mutated_archives_never_panic(edits in proptest::collection::vec((0usize..8192, proptest::num::u8::ANY), 1..6)) {
        let mut bytes = archive(&simple_pickle(), &[("0", &iota(6))]);
        for (at, b) in edits {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        let _ = read_pth_bytes(&bytes);
    }
}
