//! ImageNet pre-processing (being written).
