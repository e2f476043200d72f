//! What the `icae` command shares with the benchmarks (`icae-bench`): loading a model and
//! adapter, printing JSON, and the example data.

pub mod common;
pub mod pwc;
