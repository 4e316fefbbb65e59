//! na-model's integration tests, in one test binary: the model and its
//! kernels are generic, and every test binary compiles its own copy of
//! them, so one binary compiles them once (`cargo test -p na-model --test
//! suite parity::` runs one part).

mod classify;
mod idx;
mod parity;
mod preprocess;
mod presets;
mod pth;
mod pth_handwritten;
mod train_grad;
mod train_net;
mod train_run;
mod train_step;
