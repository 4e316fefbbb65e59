//! Classify images with the built-in Fashion-MNIST DiNAT: the whole
//! pipeline (decode, grey 28x28, normalise, run, rank) is
//! [`na_model::classify::Classifier`].
//!
//! ```sh
//! cargo run --release -p na-model --example classify -- examples/fashion/*.png
//! ```

use na_model::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: Vec<String> = std::env::args().skip(1).collect();
    if images.is_empty() {
        return Err("usage: classify IMAGE... (e.g. examples/fashion/*.png)".into());
    }
    // All cores; the weights are embedded (cargo feature `fashion`).
    let classifier = Classifier::builtin(Cpu::new(0))?;
    for (path, top) in images.iter().zip(classifier.classify_files(&images, 3)?) {
        let top: Vec<String> = top
            .iter()
            .map(|p| format!("{} {:.1}%", p.label, 100.0 * p.probability))
            .collect();
        println!("{path}: {}", top.join(", "));
    }
    Ok(())
}
