//! Image classification end to end: decode, pre-process, run the model,
//! rank the classes.
//!
//! A [`Classifier`] holds a loaded classifier [`Model`], its class names and
//! its input pipeline, chosen from the model's configuration: grey
//! (`in_chans` 1) models take the Fashion-MNIST pipeline (28×28, the data
//! set's normalisation, [`preprocess::to_fashion_mnist`]), RGB models take
//! ImageNet's ([`Transform::imagenet`]).
//!
//! ```no_run
//! use na_model::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The built-in Fashion-MNIST model (cargo feature `fashion`).
//! let classifier = Classifier::builtin(Cpu::new(0))?;
//! for p in classifier.classify_file("shoe.png", 3)? {
//!     println!("{} {:.1}%", p.label, 100.0 * p.probability);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use image::RgbImage;

use crate::backend::Backend;
use crate::cpu::{logits_parallel, Cpu};
use crate::error::{ModelError, Result};
use crate::fashion;
use crate::labels;
use crate::model::Model;
use crate::ops::shape_err;
use crate::preprocess::{self, Polarity, PreprocessError, Transform};

/// One ranked class.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The class index (the model's output position).
    pub class: usize,
    /// Its name.
    pub label: String,
    /// Its softmax probability.
    pub probability: f32,
}

/// How images become the model's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pipeline {
    /// Fashion-MNIST's: grey 28×28 ([`preprocess::to_fashion_mnist`] with
    /// this polarity), normalised with the data set's mean and deviation.
    Grey(Polarity),
    /// An RGB transform (resize, centre crop, ImageNet normalisation).
    Rgb(Transform),
}

impl Pipeline {
    /// The input of one image, `[channels, height, width]`.
    pub fn dims(&self) -> [usize; 3] {
        match self {
            Pipeline::Grey(_) => [1, fashion::SIDE, fashion::SIDE],
            Pipeline::Rgb(t) => [3, t.crop, t.crop],
        }
    }

    /// The model input of `img` (`dims()` values, channel-major).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        match self {
            Pipeline::Grey(polarity) => preprocess::to_fashion_mnist(img, *polarity)
                .into_iter()
                .map(crate::fashion::normalize)
                .collect(),
            Pipeline::Rgb(t) => t.apply(img),
        }
    }
}

/// What can go wrong classifying images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The model is not a classifier of grey or RGB images.
    #[error(
        "classification needs an RGB (in_chans 3) or grey (in_chans 1) classifier; this \
         configuration has in_chans {in_chans} and num_classes {num_classes}"
    )]
    NotAClassifier {
        /// The configuration's input channels.
        in_chans: usize,
        /// The configuration's classes.
        num_classes: usize,
    },
    /// A list of class names of the wrong length.
    #[error("{got} class names for a {want}-class model")]
    Labels {
        /// Names given.
        got: usize,
        /// Classes of the model.
        want: usize,
    },
    /// An image that cannot be read or decoded.
    #[error(transparent)]
    Image(#[from] PreprocessError),
    /// A logit that is NaN or infinite: there is no ranking.
    #[error(
        "the model's logit {class} for {image} is {value}: the weights or the image give no \
         valid classification"
    )]
    NonFinite {
        /// The image (its path, or its position in the batch).
        image: String,
        /// The class whose logit it is.
        class: usize,
        /// The value.
        value: f32,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A classifier model with its class names and input pipeline.
pub struct Classifier {
    model: Model<Cpu>,
    labels: Vec<String>,
    pipeline: Pipeline,
    batch: Option<usize>,
    max_image_bytes: u64,
}

impl core::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Classifier")
            .field("config", self.model.config())
            .field("classes", &self.labels.len())
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

impl Classifier {
    /// Wraps a classifier model. Class names default to Fashion-MNIST's for
    /// a grey 10-class model, ImageNet-1k's for a 1000-class model and
    /// `class i` otherwise; the pipeline is [`Pipeline::Grey`] (polarity
    /// [`Polarity::Auto`]) for a grey model and [`Transform::imagenet`] for
    /// an RGB one.
    ///
    /// # Errors
    ///
    /// [`ClassifyError::NotAClassifier`] for a backbone, a model without
    /// classes or one whose input is neither grey nor RGB.
    pub fn new(model: Model<Cpu>) -> core::result::Result<Self, ClassifyError> {
        let cfg = model.config();
        let grey = cfg.in_chans == 1;
        if model.is_backbone() || cfg.num_classes == 0 || !(grey || cfg.in_chans == 3) {
            return Err(ClassifyError::NotAClassifier {
                in_chans: cfg.in_chans,
                num_classes: if model.is_backbone() {
                    0
                } else {
                    cfg.num_classes
                },
            });
        }
        let n = cfg.num_classes;
        let labels: Vec<String> = if grey && n == fashion::CLASSES.len() {
            fashion::CLASSES.iter().map(|s| s.to_string()).collect()
        } else if n == 1000 {
            labels::imagenet_classes()
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            (0..n).map(|i| format!("class {i}")).collect()
        };
        let pipeline = if grey {
            Pipeline::Grey(Polarity::Auto)
        } else {
            Pipeline::Rgb(Transform::imagenet())
        };
        Ok(Classifier {
            model,
            labels,
            pipeline,
            batch: None,
            max_image_bytes: crate::limits::DEFAULT_MAX_IMAGE_BYTES,
        })
    }

    /// The built-in Fashion-MNIST DiNAT ([`fashion::builtin_model`]) on
    /// `cpu`.
    #[cfg(feature = "fashion")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fashion")))]
    pub fn builtin(cpu: Cpu) -> core::result::Result<Self, ClassifyError> {
        Classifier::new(fashion::builtin_model(cpu)?)
    }

    /// Other class names (one per class).
    ///
    /// # Errors
    ///
    /// [`ClassifyError::Labels`] when their number is not the model's.
    pub fn with_labels(mut self, labels: Vec<String>) -> core::result::Result<Self, ClassifyError> {
        if labels.len() != self.labels.len() {
            return Err(ClassifyError::Labels {
                got: labels.len(),
                want: self.labels.len(),
            });
        }
        self.labels = labels;
        Ok(self)
    }

    /// The polarity of a grey pipeline (ignored by an RGB one).
    pub fn with_polarity(mut self, polarity: Polarity) -> Self {
        if let Pipeline::Grey(p) = &mut self.pipeline {
            *p = polarity;
        }
        self
    }

    /// Another RGB transform (ignored by a grey pipeline).
    pub fn with_transform(mut self, transform: Transform) -> Self {
        if let Pipeline::Rgb(t) = &mut self.pipeline {
            *t = transform;
        }
        self
    }

    /// Images per forward pass. Default: 64 per core for grey models, whose
    /// passes run one per core; 8 with all cores for RGB models.
    pub fn with_batch(mut self, images: usize) -> Self {
        self.batch = Some(images.max(1));
        self
    }

    /// The largest decoded image, in bytes
    /// ([`crate::limits::DEFAULT_MAX_IMAGE_BYTES`] by default).
    pub fn with_max_image_bytes(mut self, bytes: u64) -> Self {
        self.max_image_bytes = bytes;
        self
    }

    /// The model.
    pub fn model(&self) -> &Model<Cpu> {
        &self.model
    }

    /// The class names.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The input pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Decodes the image at `path` (bounded by the decoded-size limit) and
    /// applies the pipeline.
    pub fn load(&self, path: impl AsRef<Path>) -> core::result::Result<Vec<f32>, ClassifyError> {
        let img = preprocess::load_rgb_within(path, self.max_image_bytes)?;
        Ok(self.pipeline.apply(&img))
    }

    /// The logits `[n, classes]` of `n` prepared inputs laid end to end
    /// (each [`Pipeline::dims`] values).
    pub fn logits(&self, inputs: &[f32]) -> Result<Vec<f32>> {
        let dims = self.pipeline.dims();
        match self.pipeline {
            Pipeline::Grey(_) => {
                logits_parallel(&self.model, inputs, dims, self.batch.unwrap_or(64))
            }
            Pipeline::Rgb(_) => {
                let per: usize = dims.iter().product();
                if !inputs.len().is_multiple_of(per) {
                    return Err(shape_err(format!(
                        "{} values are not images of {dims:?}",
                        inputs.len()
                    )));
                }
                let be = self.model.backend();
                let mut all = Vec::new();
                for chunk in inputs.chunks(self.batch.unwrap_or(8) * per) {
                    let x = be.upload(&[chunk.len() / per, dims[0], dims[1], dims[2]], chunk)?;
                    all.extend(be.download(&self.model.forward(&x)?)?);
                }
                Ok(all)
            }
        }
    }

    /// The `k` most probable classes of one image's logits, by descending
    /// probability.
    ///
    /// # Errors
    ///
    /// [`ClassifyError::NonFinite`] (naming `image`) when a logit is NaN or
    /// infinite.
    pub fn rank(
        &self,
        logits: &[f32],
        k: usize,
        image: &str,
    ) -> core::result::Result<Vec<Prediction>, ClassifyError> {
        if let Some(class) = logits.iter().position(|v| !v.is_finite()) {
            return Err(ClassifyError::NonFinite {
                image: image.to_string(),
                class,
                value: logits[class],
            });
        }
        Ok(labels::top_k(logits, k)
            .into_iter()
            .map(|(class, probability)| Prediction {
                class,
                label: self.labels[class].clone(),
                probability,
            })
            .collect())
    }

    /// The `k` most probable classes of a decoded image.
    pub fn classify_image(
        &self,
        img: &RgbImage,
        k: usize,
    ) -> core::result::Result<Vec<Prediction>, ClassifyError> {
        let logits = self.logits(&self.pipeline.apply(img))?;
        self.rank(&logits, k, "the image")
    }

    /// The `k` most probable classes of the image at `path`.
    pub fn classify_file(
        &self,
        path: impl AsRef<Path>,
        k: usize,
    ) -> core::result::Result<Vec<Prediction>, ClassifyError> {
        let path = path.as_ref();
        let logits = self.logits(&self.load(path)?)?;
        self.rank(&logits, k, &path.display().to_string())
    }

    /// The `k` most probable classes of each image, in order. Every image is
    /// decoded (on all cores) before any is run: the first bad one, in the
    /// order given, is the error.
    pub fn classify_files<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        k: usize,
    ) -> core::result::Result<Vec<Vec<Prediction>>, ClassifyError> {
        let decoded: Vec<core::result::Result<Vec<f32>, ClassifyError>> =
            self.model.backend().install(|| {
                use rayon::prelude::*;
                paths.par_iter().map(|p| self.load(p)).collect()
            });
        let inputs = decoded
            .into_iter()
            .collect::<core::result::Result<Vec<_>, _>>()?;
        let logits = self.logits(&inputs.concat())?;
        let n = self.labels.len();
        paths
            .iter()
            .zip(logits.chunks(n))
            .map(|(p, l)| self.rank(l, k, &p.as_ref().display().to_string()))
            .collect()
    }
}
