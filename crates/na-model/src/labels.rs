//! Class names and top-k (being written).
