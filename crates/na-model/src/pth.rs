//! PyTorch checkpoint reader (being written).
