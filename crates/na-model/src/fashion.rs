//! Fashion-MNIST: the data set's facts (classes, image side, pixel
//! statistics) and, with the cargo feature `fashion`, the built-in model: a
//! DiNAT trained on it by `na train` (the command, time and accuracy are in
//! the repository's README), its weights and configuration embedded at
//! compile time, so it needs no files.
//!
//! ```
//! # #[cfg(feature = "fashion")] {
//! use na_model::{fashion, Cpu};
//! let model = fashion::builtin_model(Cpu::new(1)).unwrap();
//! assert_eq!(model.config().num_classes, fashion::CLASSES.len());
//! // A blank image, normalised as in training.
//! let x = vec![fashion::normalize(0); fashion::SIDE * fashion::SIDE];
//! let logits = model.infer(&[1, 1, fashion::SIDE, fashion::SIDE], &x).unwrap();
//! assert_eq!(logits.shape, [1, 10]);
//! # }
//! ```

/// The ten classes, by label.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Side of the (square, grey) images.
pub const SIDE: usize = 28;

/// Pixel mean (of `pixel / 255` over the training set).
pub const MEAN: f32 = 0.2860;

/// Pixel standard deviation.
pub const STD: f32 = 0.3530;

/// The model's input from a grey pixel: `(p / 255 - MEAN) / STD`.
pub fn normalize(px: u8) -> f32 {
    (f32::from(px) / 255.0 - MEAN) / STD
}

#[cfg(feature = "fashion")]
pub use self::builtin::*;

#[cfg(feature = "fashion")]
mod builtin {
    use crate::config::Config;
    use crate::cpu::Cpu;
    use crate::error::Result;
    use crate::model::{Head, Model};
    use crate::weights::WeightMap;

    /// The built-in model's weights (safetensors, f32, authors' key names).
    #[cfg_attr(docsrs, doc(cfg(feature = "fashion")))]
    pub const WEIGHTS: &[u8] = include_bytes!("../assets/fashion_dinat.safetensors");

    /// The built-in model's configuration (JSON, [`Config`]'s fields).
    #[cfg_attr(docsrs, doc(cfg(feature = "fashion")))]
    pub const CONFIG: &str = include_str!("../assets/fashion_dinat.json");

    /// The built-in model's configuration and weights.
    #[cfg_attr(docsrs, doc(cfg(feature = "fashion")))]
    pub fn builtin() -> Result<(Config, WeightMap)> {
        let cfg = Config::from_json(CONFIG)?;
        let weights = WeightMap::from_safetensors(WEIGHTS)?;
        Ok((cfg, weights))
    }

    /// The built-in model, loaded on `cpu`.
    #[cfg_attr(docsrs, doc(cfg(feature = "fashion")))]
    pub fn builtin_model(cpu: Cpu) -> Result<Model<Cpu>> {
        let (cfg, weights) = builtin()?;
        Model::load(cpu, &cfg, weights, Head::Classifier)
    }
}
