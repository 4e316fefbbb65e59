//! Model configurations: JSON parse and validation, then everything `na
//! info` computes from a configuration (parameter count, multiply-adds,
//! per-level shapes) and the activation-memory plan, at an input size
//! decoded from the input. Never a panic; what a valid configuration
//! reports is consistent.
//!
//! Input: one byte `m`, then the input height and width (two `u16` LE when
//! `m < 0x80`, else two `u64` LE) and a batch byte, then the JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use na_model::{analyze, param_shapes, Arch, Config};

fn split(data: &[u8]) -> Option<(usize, usize, usize, &[u8])> {
    let (&m, rest) = data.split_first()?;
    let w = if m < 0x80 { 2 } else { 8 };
    let int = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x));
    let sizes = rest.get(..2 * w + 1)?;
    let h = int(&sizes[..w]) as usize;
    let wd = int(&sizes[w..2 * w]) as usize;
    let batch = usize::from(sizes[2 * w]) + 1;
    Some((h, wd, batch, &rest[2 * w + 1..]))
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fuzz_target!(|data: &[u8]| {
    let Some((h, w, batch, json)) = split(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(cfg) = Config::from_json(text) else {
        return;
    };
    cfg.validate()
        .expect("a parsed configuration was validated");

    // JSON round trip.
    let again = Config::from_json(&serde_json::to_string(&cfg).expect("serialises"))
        .expect("what we write, we read");
    assert!(close(again.mlp_ratio, cfg.mlp_ratio));
    assert_eq!(again.layer_scale.is_some(), cfg.layer_scale.is_some());
    let strip = |c: &Config| Config {
        mlp_ratio: 1.0,
        layer_scale: c.layer_scale.map(|_| 1.0),
        ..c.clone()
    };
    assert_eq!(strip(&again), strip(&cfg));

    // The parameter count of a valid configuration fits (and is below the limit).
    let params = cfg
        .param_count()
        .expect("a valid configuration's parameters are counted");
    assert!(params <= na_model::config::MAX_PARAMS);
    // It agrees with the list of shapes (built only for small models: the
    // list has a name per weight).
    let blocks: usize = cfg.depths.iter().sum();
    if blocks <= 64 {
        let shapes = param_shapes(&cfg, false);
        let sum: u128 = shapes
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        assert_eq!(
            sum,
            u128::from(params),
            "param_count agrees with param_shapes"
        );
        if cfg.arch != Arch::Isotropic {
            let _ = param_shapes(&cfg, true);
        }
    }

    // What `na info` prints.
    if let Ok(info) = analyze(&cfg, h, w) {
        assert_eq!(info.params, params);
        assert_eq!(info.levels.len(), cfg.levels());
        assert_eq!(info.flops(), 2 * info.macs);
        for (i, l) in info.levels.iter().enumerate() {
            assert!(l.height >= 1 && l.width >= 1, "level {i}: {l:?}");
            assert!(
                l.height <= h.max(1) && l.width <= w.max(1),
                "level {i} grows: {l:?}"
            );
            assert_eq!(l.dilations.len(), cfg.depths[i]);
            assert!(l.padded_blocks <= cfg.depths[i]);
        }
        // The activation plan of an analysable size is computed (and never
        // below the input itself).
        let plan = cfg
            .plan_bytes(h, w, batch)
            .expect("an analysable size is planned");
        let input = (h * w * cfg.in_chans * batch * 4) as u64;
        assert!(plan >= input, "plan {plan} below the input's {input} bytes");
    } else {
        let _ = cfg.plan_bytes(h, w, batch);
    }
});
