//! The training loop on a small synthetic data set: it learns, a seed
//! reproduces a run bit for bit whatever the thread count, and a run resumed
//! from its checkpoint ends exactly where an uninterrupted one does.

use std::path::PathBuf;

use na_model::train::idx::Dataset;
use na_model::train::optim::{AdamW, Schedule};
use na_model::train::{train, Event, RunPaths, TrainOptions, TrainResult};
use na_model::ParamSet;
use na_model::{Arch, Config};

/// 12×12 images of 10 classes: class `c` is a bright 3×3 square at one of
/// ten positions, on noise.
fn data(n: usize, seed: u64) -> Dataset {
    let mut rng = na_model::train::Rng::new(seed);
    let (rows, cols) = (12, 12);
    let mut images = vec![0u8; n * rows * cols];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = i % 10;
        labels[i] = c as u8;
        let img = &mut images[i * rows * cols..][..rows * cols];
        for v in img.iter_mut() {
            *v = rng.below(60) as u8;
        }
        let (y0, x0) = ((c / 5) * 6 + 1, (c % 5) * 2 + 1);
        for y in y0..y0 + 3 {
            for x in x0..x0 + 3 {
                img[y * cols + x] = 200 + rng.below(55) as u8;
            }
        }
    }
    Dataset {
        images,
        labels,
        rows,
        cols,
    }
}

fn tiny() -> Config {
    Config {
        arch: Arch::Dinat,
        embed_dim: 8,
        mlp_ratio: 2.0,
        depths: vec![2, 1],
        num_heads: vec![1, 2],
        kernel_size: 3,
        dilations: Some(vec![vec![1, 2], vec![1]]),
        layer_scale: None,
        num_classes: 10,
        in_chans: 1,
        stem_strides: Some([1, 2]),
    }
}

fn opts(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 40,
        lr: 5e-3,
        warmup_epochs: 0.5,
        seed: 3,
        // The classes are positions: no flips, small shifts.
        hflip: false,
        shift: 1,
        // 200 images to fit (5 steps of 40), 40 to validate.
        val_images: 40,
        ..TrainOptions::default()
    }
}

/// A scratch folder; emptied unless `keep`.
fn out_dir(name: &str, keep: bool) -> PathBuf {
    let d = std::env::temp_dir().join(format!("na-train-{}-{name}", std::process::id()));
    if !keep {
        let _ = std::fs::remove_dir_all(&d);
    }
    d
}

fn run(o: &TrainOptions, dir: &str, resume: bool, threads: usize) -> TrainResult {
    let (tr, te) = (data(240, 1), data(50, 2));
    let paths = RunPaths {
        out: out_dir(dir, resume),
        resume,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| train(&tiny(), o, &tr, &te, &paths, &mut |_: &Event| {}))
        .unwrap()
}

#[test]
fn it_learns_and_reports() {
    let (tr, te) = (data(240, 1), data(50, 2));
    let mut events = Vec::new();
    let paths = RunPaths {
        out: out_dir("learns", false),
        resume: false,
    };
    let mut o = opts(20);
    o.lr = 1e-2;
    let r = train(&tiny(), &o, &tr, &te, &paths, &mut |e: &Event| {
        events.push(e.clone())
    })
    .unwrap();
    let first: f64 = r.losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = r.losses[r.losses.len() - 5..].iter().sum::<f64>() / 5.0;
    println!(
        "loss {first:.3} -> {last:.3}; history {:?}",
        r.state.history
    );
    assert!(last < 0.7 * first, "{first} -> {last}");
    let acc = r.state.test.unwrap().accuracy;
    assert!(acc > 0.5, "test accuracy {acc}");
    // The test set is evaluated once, the validation split every epoch.
    let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(count(|e| matches!(e, Event::Testing)), 1);
    assert_eq!(count(|e| matches!(e, Event::Validating)), 20);
    // The chosen weights are those of the first epoch with the best
    // validation accuracy, and the test result names that epoch.
    let vals: Vec<f64> = r
        .state
        .history
        .iter()
        .map(|h| h.val_accuracy.unwrap())
        .collect();
    let best = vals.iter().cloned().fold(f64::MIN, f64::max);
    let epoch = 1 + vals.iter().position(|&v| v == best).unwrap();
    let chosen = r.state.chosen.unwrap();
    assert_eq!((chosen.epoch, chosen.val_accuracy), (epoch, Some(best)));
    assert_eq!(r.state.test.unwrap().epoch, epoch);
    assert!(r
        .state
        .history
        .iter()
        .all(|h| h.test_accuracy.is_none() && h.lr > 0.0 && h.images_per_s > 0.0));
    assert_eq!(r.state.step, 20 * 5);
    assert!(matches!(
        events[0],
        Event::Start {
            step: 0,
            total_steps: 100,
            ..
        }
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Epoch(_)))
            .count(),
        20
    );
    // The folder: the weights, the manifest and one checkpoint set, nothing else.
    let mut names: Vec<String> = std::fs::read_dir(&paths.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].starts_with("checkpoint-s"), "{names:?}");
    assert_eq!(names[1..], ["checkpoint.json", "model.safetensors"]);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "chosen.safetensors",
        "ema.safetensors",
    ] {
        assert!(paths.out.join(&names[0]).join(f).is_file(), "{f}");
    }
    // The published weights are the chosen ones (a moving average, not the
    // raw weights), and they load for inference.
    let w = na_model::WeightMap::load(paths.out.join("model.safetensors")).unwrap();
    assert_eq!(ParamSet::from_weights(&tiny(), &w).unwrap().data, r.chosen);
    assert_ne!(r.chosen, r.params.data);
}

#[test]
fn a_seed_reproduces_a_run_whatever_the_threads() {
    let a = run(&opts(2), "seed-a", false, 1);
    let b = run(&opts(2), "seed-b", false, 2);
    assert_eq!(a.params.data, b.params.data);
    assert_eq!(a.losses, b.losses);
    let mut o = opts(2);
    o.seed = 4;
    let c = run(&o, "seed-c", false, 2);
    assert_ne!(a.params.data, c.params.data);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let full = run(&opts(3), "full", false, 2);
    // Stop after the first epoch (5 steps of 40 images), then resume.
    let mut o = opts(3);
    o.max_steps = Some(5);
    let part = run(&o, "part", false, 2);
    assert_eq!(part.state.epochs_done, 1);
    let rest = run(&opts(3), "part", true, 2);
    assert_eq!(rest.state.step, 15);
    assert_eq!(rest.params.data, full.params.data);
    assert_eq!(rest.chosen, full.chosen);
    assert_eq!(rest.state.chosen, full.state.chosen);
    assert_eq!(rest.state.test, full.state.test);
    assert_eq!(rest.losses[..], full.losses[5..]);
    assert_eq!(rest.state.history.len(), 3);
    // Resuming with other options is refused.
    let (tr, te) = (data(240, 1), data(50, 2));
    let paths = RunPaths {
        out: out_dir("part", true),
        resume: true,
    };
    let mut o = opts(3);
    o.lr = 1e-3;
    let e = train(&tiny(), &o, &tr, &te, &paths, &mut |_: &Event| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("another run"), "{e}");
    // A mid-epoch checkpoint cannot be resumed exactly.
    let mut o = opts(3);
    o.max_steps = Some(7);
    let _ = run(&o, "mid", false, 1);
    let paths = RunPaths {
        out: out_dir("mid", true),
        resume: true,
    };
    let e = train(&tiny(), &opts(3), &tr, &te, &paths, &mut |_: &Event| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("middle of an epoch"), "{e}");
}

#[test]
fn a_warm_start_begins_from_the_given_weights() {
    let first = run(&opts(3), "warm-src", false, 2);
    let src = out_dir("warm-src", true).join("model.safetensors");
    let chosen = first.state.chosen.unwrap();
    // With a vanishing learning rate the evaluated average stays at the
    // initial weights: the warm start's first validation is the source's.
    let mut o = opts(2);
    o.lr = 1e-12;
    o.min_lr = 0.0;
    o.init = Some(src.clone());
    // The first of two epochs; the second is resumed below.
    o.max_steps = Some(5);
    let warm = run(&o, "warm", false, 2);
    assert_eq!(
        warm.state.history[0].val_accuracy, chosen.val_accuracy,
        "{:?} vs {chosen:?}",
        warm.state.history
    );
    // A cold start of the same options lands elsewhere.
    o.init = None;
    let cold = run(&o, "warm-cold", false, 2);
    assert_ne!(cold.params.data, warm.params.data);
    // The init is part of the options: it is recorded and a resume needs it.
    o.init = Some(src);
    o.max_steps = None;
    let resumed = run(&o, "warm", true, 2);
    assert_eq!(resumed.state.options.init, o.init);
    assert_eq!(resumed.state.history.len(), 2);
    // Weights of another configuration are refused with the offending name.
    let mut other = tiny();
    other.embed_dim = 16;
    let (tr, te) = (data(240, 1), data(50, 2));
    let paths = RunPaths {
        out: out_dir("warm-bad", false),
        resume: false,
    };
    let e = train(
        &other,
        &opts_with_init(&o),
        &tr,
        &te,
        &paths,
        &mut |_: &Event| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("shape"), "{e}");
}

fn opts_with_init(o: &TrainOptions) -> TrainOptions {
    TrainOptions {
        epochs: 1,
        ..o.clone()
    }
}

#[test]
fn adamw_and_the_schedule_follow_their_formulas() {
    let cfg = tiny();
    let mut p = ParamSet::zeros(&cfg).unwrap();
    p.data
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = 0.5 + (i % 7) as f32 * 0.1);
    let before = p.data.clone();
    let g: Vec<f32> = (0..p.len())
        .map(|i| ((i % 5) as f32 - 2.0) * 0.01)
        .collect();
    let mut opt = AdamW::new(p.len(), 0.1);
    opt.update(&mut p, &g, 1e-2).unwrap();
    for e in &p.entries {
        for i in e.range.clone() {
            let decayed = if e.decay {
                before[i] * (1.0 - 1e-2 * 0.1)
            } else {
                before[i]
            };
            // First step: m̂ = g, v̂ = g², update lr·g/(|g| + ε).
            let want = decayed - 1e-2 * g[i] / (g[i].abs() + 1e-8);
            assert!(
                (p.data[i] - want).abs() < 1e-6,
                "{}: {} vs {want}",
                e.name,
                p.data[i]
            );
        }
    }
    // Norms, biases and rpb do not decay; matrices do.
    let decays: Vec<(String, bool)> = p
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.decay))
        .collect();
    for (n, d) in &decays {
        let want = !(n.ends_with(".bias") || n.contains("norm") || n.ends_with(".rpb"));
        assert_eq!(*d, want, "{n}");
    }
    let s = Schedule {
        base: 1.0,
        min: 0.1,
        warmup: 10,
        total: 110,
    };
    assert!((s.lr(0) - 0.1).abs() < 1e-6);
    assert!((s.lr(9) - 1.0).abs() < 1e-6);
    assert!((s.lr(10) - 1.0).abs() < 1e-6);
    assert!((s.lr(60) - 0.55).abs() < 1e-6);
    assert!((s.lr(110) - 0.1).abs() < 1e-6);
    assert!(s.lr(35) > s.lr(85));
}
