//! The plan's arena contract and the blob parser's typed errors: every
//! corruption is an error value, never a panic or an out-of-bounds read.

mod common;

use common::{blob, edge_config, random_weights, signed, Rng};
use na_edge::format::{ENTRY_LEN, HEADER_LEN};
use na_edge::{write_blob, AlignedBlob, Arch, DType, EdgeConfig, EdgeError, EdgeModel, Plan};
use na_model::Config;

fn small_cfg() -> Config {
    Config {
        arch: na_model::Arch::Nat,
        embed_dim: 16,
        mlp_ratio: 2.0,
        depths: vec![1, 1],
        num_heads: vec![1, 2],
        kernel_size: 3,
        dilations: Some(vec![vec![2], vec![1]]),
        layer_scale: Some(0.5),
        num_classes: 5,
        in_chans: 3,
        stem_strides: None,
    }
}

fn small_blob(dtype: DType) -> Vec<u8> {
    let cfg = small_cfg();
    blob(&edge_config(&cfg).unwrap(), &random_weights(&cfg, 3), dtype)
}

fn parse(bytes: &[u8]) -> Result<(), EdgeError> {
    let a = AlignedBlob::new(bytes);
    EdgeModel::new(&a).map(|_| ())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn arena_too_small_exact_and_nan_filled() {
    let bytes = AlignedBlob::new(&small_blob(DType::F32));
    let model = EdgeModel::new(&bytes).unwrap();
    let plan = model.plan(16, 16).unwrap();
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..plan.input_len()).map(|_| signed(&mut rng)).collect();
    let needed = plan.arena_len();
    assert_eq!(
        needed,
        plan.wrow_len() + plan.rpb_len() + plan.x_len() + plan.work_len()
    );
    let mut out = vec![0.0; plan.output_len()];

    let mut short = vec![0.0; needed - 1];
    let e = model.logits(&plan, &x, &mut short, &mut out).unwrap_err();
    assert_eq!(
        e,
        EdgeError::ArenaTooSmall {
            needed,
            got: needed - 1
        }
    );
    let msg = e.to_string();
    assert!(msg.contains(&needed.to_string()) && msg.contains(&(needed - 1).to_string()));

    let mut exact = vec![0.0; needed];
    model.logits(&plan, &x, &mut exact, &mut out).unwrap();
    let zero_filled = out.clone();
    assert!(zero_filled.iter().all(|v| v.is_finite()));

    for fill in [f32::NAN, f32::INFINITY, -1e30] {
        let mut arena = vec![fill; needed];
        model.logits(&plan, &x, &mut arena, &mut out).unwrap();
        assert_eq!(out, zero_filled, "arena filled with {fill}");
    }
    // A larger arena works and gives the same result.
    let mut big = vec![f32::NAN; needed + 100];
    model.logits(&plan, &x, &mut big, &mut out).unwrap();
    assert_eq!(out, zero_filled);

    // The same model again (its arena now holds the last call's values).
    model.logits(&plan, &x, &mut exact, &mut out).unwrap();
    assert_eq!(out, zero_filled);
}

#[test]
fn call_arguments_are_checked() {
    let bytes = AlignedBlob::new(&small_blob(DType::F16));
    let model = EdgeModel::new(&bytes).unwrap();
    let plan = model.plan(16, 12).unwrap();
    let mut arena = vec![0.0; plan.arena_len()];
    let mut out = vec![0.0; 5];
    let x = vec![0.0; plan.input_len()];
    assert_eq!(
        model.logits(&plan, &x[1..], &mut arena, &mut out),
        Err(EdgeError::InputLength {
            expected: 3 * 16 * 12,
            got: 3 * 16 * 12 - 1,
            chans: 3,
            height: 16,
            width: 12
        })
    );
    assert_eq!(
        model.logits(&plan, &x, &mut arena, &mut out[..4]),
        Err(EdgeError::OutputLength {
            expected: 5,
            got: 4
        })
    );
    let other = EdgeConfig::new(Arch::Nat, 3, 16, &[1, 1], &[1, 2], &[32, 64], 3, 5).unwrap();
    let plan2 = Plan::new(&other, 16, 12).unwrap();
    assert_eq!(
        model.logits(&plan2, &x, &mut arena, &mut out),
        Err(EdgeError::PlanMismatch)
    );
    model.logits(&plan, &x, &mut arena, &mut out).unwrap();
}

#[test]
fn truncated_blobs_are_typed_errors() {
    for dtype in [DType::F32, DType::F16, DType::I8] {
        let full = small_blob(dtype);
        assert!(parse(&full).is_ok());
        let mut cuts: Vec<usize> = (0..HEADER_LEN + 40 * ENTRY_LEN).step_by(3).collect();
        cuts.extend((0..full.len()).step_by(97));
        cuts.extend(full.len() - 9..full.len());
        for cut in cuts.into_iter().filter(|&c| c < full.len()) {
            let e = parse(&full[..cut]).unwrap_err();
            assert!(
                matches!(
                    e,
                    EdgeError::BadMagic { .. }
                        | EdgeError::Truncated { .. }
                        | EdgeError::TensorOutOfBounds { .. }
                ),
                "cut at {cut}: {e:?}"
            );
        }
    }
    // A blob shorter than the magic reports what it has.
    assert_eq!(
        parse(b"NAE"),
        Err(EdgeError::BadMagic {
            found: *b"NAE\0\0\0\0\0",
            expected: *b"NAEDGEWB"
        })
    );
}

#[test]
fn corrupted_fields_are_typed_errors() {
    let good = small_blob(DType::F32);
    let entry = |i: usize| HEADER_LEN + i * ENTRY_LEN;
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        parse(&b).unwrap_err()
    };
    assert!(matches!(edit(&|b| b[0] = b'X'), EdgeError::BadMagic { .. }));
    assert_eq!(
        edit(&|b| put_u32(b, 8, 2)),
        EdgeError::BadVersion {
            found: 2,
            supported: 1
        }
    );
    assert!(matches!(
        edit(&|b| put_u32(b, 16, 7)),
        EdgeError::TensorCount { found: 7, .. }
    ));
    assert!(matches!(
        edit(&|b| put_u32(b, 24, 2)),
        EdgeError::Unsupported { field: "arch", .. }
    ));
    assert!(matches!(
        edit(&|b| put_u32(b, 24, 9)),
        EdgeError::BadField {
            field: "arch",
            value: 9,
            ..
        }
    ));
    assert!(matches!(
        edit(&|b| put_u32(b, 40, 0)),
        EdgeError::Unsupported {
            field: "kernel_size",
            ..
        }
    ));
    // Offset past the end.
    match edit(&|b| put_u64(b, entry(2) + 88, 1 << 40)) {
        EdgeError::TensorOutOfBounds { key, offset, .. } => {
            assert_eq!(key.as_str(), "patch_embed.proj.1.weight");
            assert_eq!(offset, 1 << 40);
        }
        e => panic!("{e:?}"),
    }
    // Offset near u64::MAX (the end overflows).
    assert!(matches!(
        edit(&|b| put_u64(b, entry(0) + 88, u64::MAX - 63)),
        EdgeError::TensorOutOfBounds { .. }
    ));
    let mut b = good.clone();
    let off = u64::from_le_bytes(b[entry(0) + 88..entry(0) + 96].try_into().unwrap());
    put_u64(&mut b, entry(0) + 88, off + 4);
    assert!(matches!(
        parse(&b),
        Err(EdgeError::UnalignedOffset { align: 64, .. })
    ));
    assert!(matches!(
        edit(&|b| put_u32(b, entry(1) + 64, 7)),
        EdgeError::UnknownDtype { code: 7, .. }
    ));
    // Shape mismatch names the key and both shapes.
    match edit(&|b| {
        put_u32(b, entry(1) + 72, 9);
        put_u64(b, entry(1) + 96, 36);
    }) {
        EdgeError::ShapeMismatch {
            key,
            expected,
            found,
        } => {
            assert_eq!(key.as_str(), "patch_embed.proj.0.bias");
            assert_eq!((expected.dims(), found.dims()), (&[8][..], &[9][..]));
        }
        e => panic!("{e:?}"),
    }
    // Length that disagrees with the shape.
    assert!(matches!(
        edit(&|b| put_u64(b, entry(1) + 96, 4)),
        EdgeError::TensorLength { .. }
    ));
    // A renamed tensor.
    match edit(&|b| b[entry(4)] = b'q') {
        EdgeError::UnexpectedTensor {
            index,
            expected,
            found,
        } => {
            assert_eq!(index, 4);
            assert_eq!(expected.as_str(), "patch_embed.norm.weight");
            assert_eq!(found.as_str(), "qatch_embed.norm.weight");
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        edit(&|b| b[entry(4) + 63] = b'x'),
        EdgeError::BadName { index: 4 }
    ));
    assert!(matches!(
        edit(&|b| b[entry(4) + 1] = 0xFF),
        EdgeError::BadName { index: 4 }
    ));
    assert!(matches!(
        edit(&|b| put_u32(b, entry(4) + 68, 9)),
        EdgeError::BadField { field: "rank", .. }
    ));
}

#[test]
fn misaligned_memory_is_a_typed_error() {
    let good = small_blob(DType::F32);
    let a = AlignedBlob::new(&[&[0u8][..], &good].concat());
    match EdgeModel::new(&a[1..]) {
        Err(EdgeError::Misaligned { key, align: 4, .. }) => {
            assert_eq!(key.as_str(), "patch_embed.proj.0.weight")
        }
        other => panic!("{other:?}"),
    }
    let good16 = small_blob(DType::F16);
    let a = AlignedBlob::new(&[&[0u8][..], &good16].concat());
    assert!(matches!(
        EdgeModel::new(&a[1..]),
        Err(EdgeError::Misaligned { align: 2, .. })
    ));
}

#[test]
fn random_byte_flips_never_panic() {
    let good = small_blob(DType::F16);
    let mut rng = Rng::new(77);
    let header = HEADER_LEN + 40 * ENTRY_LEN;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let i = (rng.next_u64() as usize) % header.min(b.len());
            b[i] = rng.next_u64() as u8;
        }
        let a = AlignedBlob::new(&b);
        if let Ok(m) = EdgeModel::new(&a) {
            // Whatever parses runs without panicking.
            if let Ok(plan) = m.plan(12, 12) {
                if plan.arena_len() < 1 << 24 {
                    let mut arena = vec![0.0; plan.arena_len()];
                    let mut out = vec![0.0; plan.output_len()];
                    let x = vec![0.1; plan.input_len()];
                    m.logits(&plan, &x, &mut arena, &mut out).unwrap();
                }
            }
        }
    }
}

#[test]
fn writer_and_config_errors() {
    let cfg = small_cfg();
    let ecfg = edge_config(&cfg).unwrap();
    let wm = random_weights(&cfg, 1);
    let mut named: Vec<(&str, &[usize], &[f32])> = wm
        .names()
        .map(|n| {
            let t = wm.get(n).unwrap();
            (n, t.shape.as_slice(), t.data.as_slice())
        })
        .collect();
    named.retain(|t| t.0 != "levels.1.blocks.0.gamma2");
    match write_blob(&ecfg, &named, DType::F32) {
        Err(EdgeError::MissingTensor { key }) => {
            assert_eq!(key.to_string(), "levels.1.blocks.0.gamma2")
        }
        other => panic!("{other:?}"),
    }
    let bad_shape = [3usize, 3];
    let i = named.iter().position(|t| t.0 == "head.bias").unwrap();
    named[i].1 = &bad_shape;
    assert!(matches!(
        write_blob(&ecfg.with_layer_scale(false), &named, DType::F32),
        Err(EdgeError::ShapeMismatch { .. })
    ));
    // DiNAT_s and isotropic are refused with a typed error.
    for name in ["dinat_s_tiny", "nat_isotropic_small"] {
        let c = Config::preset(name).unwrap();
        assert!(matches!(
            edge_config(&c),
            Err(EdgeError::Unsupported { field: "arch", .. })
        ));
    }
    // Published presets convert; nat_mini plans at 224.
    let c = edge_config(&Config::preset("dinat_mini").unwrap()).unwrap();
    let plan = Plan::new(&c, 224, 224).unwrap();
    assert_eq!(
        plan.macs(),
        na_model::analyze(&Config::preset("dinat_mini").unwrap(), 224, 224)
            .unwrap()
            .macs
    );
    assert!(EdgeConfig::new(Arch::Nat, 1, 8, &[1, 1, 1, 1, 1], &[1; 5], &[8; 5], 3, 2).is_err());
    assert!(matches!(
        EdgeConfig::new(Arch::Nat, 1, 8, &[1], &[3], &[8], 3, 2),
        Err(EdgeError::Unsupported {
            field: "num_heads",
            ..
        })
    ));
}
