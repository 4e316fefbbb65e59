//! Every preset's parameter count equals MODELS.md, and the multiply-add
//! count of nat_mini at 224 px is the 2.7 G the NAT paper states.

use na_model::{analyze, config::preset_names, Config};

/// MODELS.md's table (millions, two decimals, 1000 classes).
const TABLE: &[(&str, f64)] = &[
    ("nat_mini", 19.98),
    ("nat_tiny", 27.90),
    ("nat_small", 50.74),
    ("nat_base", 89.77),
    ("dinat_mini", 19.98),
    ("dinat_tiny", 27.90),
    ("dinat_small", 50.72),
    ("dinat_base", 89.77),
    ("dinat_large", 200.94),
    ("dinat_s_tiny", 28.29),
    ("dinat_s_small", 49.61),
    ("dinat_s_base", 87.77),
    ("dinat_s_large", 196.53),
    ("nat_isotropic_small", 22.00),
    ("nat_isotropic_base", 86.47),
    ("dinat_isotropic_small", 22.00),
    ("dinat_isotropic_base", 86.47),
];

/// Our own presets (not in MODELS.md): the Fashion-MNIST models.
const OURS: &[(&str, usize)] = &[("fashion_dinat", 965_486), ("fashion_nat", 965_486)];

#[test]
fn parameter_counts_match_models_md() {
    let names: Vec<&str> = preset_names().collect();
    assert_eq!(
        names.len(),
        TABLE.len() + OURS.len(),
        "every preset is in a table"
    );
    for (name, n) in OURS {
        let cfg = Config::preset(name).unwrap();
        assert_eq!(cfg.param_count().unwrap(), *n as u64, "{name}");
        assert!(*n < 1_000_000, "{name}: under 1 M parameters");
        let info = analyze(&cfg, 28, 28).unwrap();
        assert_eq!(info.levels.len(), 3);
        assert_eq!((info.levels[0].height, info.levels[0].width), (14, 14));
    }
    // NA and DiNA versions cost the same.
    assert_eq!(
        analyze(&Config::preset("fashion_nat").unwrap(), 28, 28)
            .unwrap()
            .macs,
        analyze(&Config::preset("fashion_dinat").unwrap(), 28, 28)
            .unwrap()
            .macs
    );
    let mut bad = Vec::new();
    for (name, millions) in TABLE {
        let cfg = Config::preset(name).unwrap();
        let n = cfg.param_count().unwrap();
        let got = (n as f64 / 1e4).round() / 100.0;
        if (got - millions).abs() > 1e-9 {
            bad.push(format!(
                "{name}: {n} = {got} M, MODELS.md says {millions} M"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn nat_mini_is_2_7_gmacs_at_224() {
    let info = analyze(&Config::preset("nat_mini").unwrap(), 224, 224).unwrap();
    let g = info.macs as f64 / 1e9;
    assert!((g - 2.7).abs() < 0.05, "{g} GMACs");
    let dims: Vec<_> = info
        .levels
        .iter()
        .map(|l| (l.height, l.width, l.channels))
        .collect();
    assert_eq!(
        dims,
        [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
    );
}

#[test]
fn presets_round_trip_through_json() {
    for name in preset_names() {
        let cfg = Config::preset(name).unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(Config::from_json(&text).unwrap(), cfg, "{name}");
    }
    assert!(Config::preset("nat_huge").is_err());
}
