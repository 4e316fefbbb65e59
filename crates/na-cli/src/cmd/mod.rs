//! One module per command: its arguments (a clap `Args` struct) and the
//! function that does its work. Shared parsers are in [`crate::args`], the
//! benchmark harness in [`crate::harness`].

pub mod attn;
pub mod bench;
pub mod bench_model;
pub mod classify;
pub mod completions;
pub mod convert;
pub mod eval;
pub mod export_edge;
pub mod info;
pub mod run;
pub mod train;
