//! na-core's integration tests, in one test binary: the kernels are
//! generic, and every test binary compiles its own copy of them, so one
//! binary compiles them once (`cargo test -p na-core --test suite fused::`
//! runs one part).

mod common;
mod fused;
mod golden;
mod nonfinite;
mod npy;
mod reference;
mod window;
