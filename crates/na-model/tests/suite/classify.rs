//! The classify pipeline and the prelude: the built-in model names the
//! sample images' classes, every entry point agrees with the model run by
//! hand, and misuse is a typed error.

use std::path::{Path, PathBuf};

use na_model::classify::{ClassifyError, Pipeline};
use na_model::prelude::*;

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fashion");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "sample images in {}", dir.display());
    v
}

fn assert_same(a: &[Prediction], b: &[Prediction]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.class, &x.label), (y.class, &y.label), "{a:?} vs {b:?}");
        assert!(
            (x.probability - y.probability).abs() < 1e-5,
            "{a:?} vs {b:?}"
        );
    }
}

#[test]
fn the_built_in_classifier_names_the_samples() {
    let c = Classifier::builtin(Cpu::new(2)).unwrap();
    assert_eq!(c.labels().len(), 10);
    assert_eq!(*c.pipeline(), Pipeline::Grey(Polarity::Auto));
    let paths = samples();
    let ranked = c.classify_files(&paths, 3).unwrap();
    for (p, top) in paths.iter().zip(&ranked) {
        // Sample names are `<index>_<class>.png`, class with '-' for ' ' and '/'.
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let class = stem.split_once('_').unwrap().1;
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0].label.replace(['/', ' '], "-"),
            class,
            "{}",
            p.display()
        );
        assert_eq!(top[0].label, na_model::fashion::CLASSES[top[0].class]);
        assert!(top[0].probability >= top[1].probability);
        // One file at a time, and a decoded image, give the same ranking
        // (the same probabilities up to the rounding of another batch size).
        assert_same(&c.classify_file(p, 3).unwrap(), top);
        let img = load_rgb(p).unwrap();
        assert_same(&c.classify_image(&img, 3).unwrap(), top);
    }
    // The logits are the model's, run by hand.
    let x = c.load(&paths[0]).unwrap();
    let by_hand = c.model().infer(&[1, 1, 28, 28], &x).unwrap();
    assert_eq!(by_hand.shape, [1, 10]);
    assert_eq!(c.logits(&x).unwrap(), by_hand.data);
    // Batches of one give the same logits as one batch.
    let all: Vec<f32> = paths.iter().flat_map(|p| c.load(p).unwrap()).collect();
    let one = Classifier::builtin(Cpu::new(1)).unwrap().with_batch(1);
    let a = c.logits(&all).unwrap();
    let b = one.logits(&all).unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn misuse_is_a_typed_error() {
    let c = Classifier::builtin(Cpu::new(1)).unwrap();
    // Class names of the wrong count.
    match c.with_labels(vec!["a".into(); 3]) {
        Err(ClassifyError::Labels { got: 3, want: 10 }) => {}
        other => panic!("{other:?}"),
    }
    // A missing image names its path.
    let c = Classifier::builtin(Cpu::new(1)).unwrap();
    let e = c.classify_file("/nonexistent/x.png", 1).unwrap_err();
    assert!(matches!(e, ClassifyError::Image(_)), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/x.png"), "{e}");
    // The first bad image of a list is the error, before any work.
    let mut paths = samples();
    paths.insert(1, PathBuf::from("/nonexistent/y.png"));
    let e = c.classify_files(&paths, 1).unwrap_err();
    assert!(e.to_string().contains("y.png"), "{e}");
    // NaN weights give no ranking.
    let (cfg, w) = na_model::fashion::builtin().unwrap();
    let mut nan = std::collections::BTreeMap::new();
    for name in w.names() {
        let mut t = w.get(name).unwrap().clone();
        t.data.iter_mut().for_each(|v| *v = f32::NAN);
        nan.insert(name.to_string(), t);
    }
    let model = Model::load(
        Cpu::new(1),
        &cfg,
        WeightMap::from_map(nan),
        Head::Classifier,
    )
    .unwrap();
    let e = Classifier::new(model)
        .unwrap()
        .classify_file(&samples()[0], 1)
        .unwrap_err();
    assert!(
        matches!(e, ClassifyError::NonFinite { class: 0, .. }),
        "{e:?}"
    );
    // A model of two input channels is no image classifier.
    let mut two = cfg.clone();
    two.in_chans = 2;
    let model = Model::load(
        Cpu::new(1),
        &two,
        WeightMap::random(&two, false, 1),
        Head::Classifier,
    )
    .unwrap();
    match Classifier::new(model) {
        Err(ClassifyError::NotAClassifier { in_chans: 2, .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}
