//! Load a published NAT/DiNAT checkpoint (a PyTorch `.pth` as the authors
//! released it, or safetensors with the authors' or HuggingFace's names)
//! and classify images with ImageNet's pre-processing.
//!
//! ```sh
//! # e.g. nat_mini_in1k.pth from the NAT authors' release
//! cargo run --release -p na-model --example checkpoint -- nat_mini nat_mini_in1k.pth cat.jpg
//! # without a download: a preset with random weights, to see the flow
//! cargo run --release -p na-model --example checkpoint -- nat_mini random examples/fashion/0018_Bag.png
//! ```

use na_model::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, weights, images @ ..] = &args[..] else {
        return Err("usage: checkpoint PRESET WEIGHTS|random IMAGE...".into());
    };
    let cfg = Config::preset(preset)?;
    let weights = if weights == "random" {
        WeightMap::random(&cfg, false, 0)
    } else {
        // The format is told by the file's first bytes; names are mapped.
        WeightMap::load(weights)?
    };
    let model = Model::load(Cpu::new(0), &cfg, weights, Head::Classifier)?;
    let info = na_model::analyze(&cfg, 224, 224)?;
    println!(
        "{preset}: {} parameters, {:.2} G multiply-adds per 224x224 image",
        info.params,
        info.macs as f64 / 1e9
    );
    let classifier = Classifier::new(model)?;
    for (path, top) in images.iter().zip(classifier.classify_files(images, 5)?) {
        println!("{path}:");
        for p in top {
            println!("  {:5.1}% {}", 100.0 * p.probability, p.label);
        }
    }
    Ok(())
}
