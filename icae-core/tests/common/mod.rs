//! Helpers shared by icae-core's integration tests.
#![allow(dead_code)]

pub mod gguf_builder;
pub mod real_model;
pub mod tiny_model;
