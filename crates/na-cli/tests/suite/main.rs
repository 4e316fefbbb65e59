//! The `na` binary's tests, in one test binary (one link, one copy of the
//! libraries' generic code): each module drives one command through the
//! real binary (`cargo test -p na-cli --test suite attn::` runs one part);
//! [`util`] holds what they share.

mod util;

mod attn;
mod convert;
mod device;
mod edge;
mod golden;
mod model;
mod reliability;
mod train;
