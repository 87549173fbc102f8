//! Development tools around straw, not part of the proxy; the `straw`
//! binary (crates/straw-cli) runs them as `straw linksim` and `straw bench`.
//!
//! - [`linksim`]: the satellite-link emulator used by tests and benchmarks,
//!   a tokio driver of the [`straw_linkmodel`] link model.
//! - [`bench`]: codec and throughput benchmarks, dictionary training.

pub mod bench;
pub mod linksim;
