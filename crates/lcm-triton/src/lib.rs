//! A Triton Inference Server backend for lcm: `libtriton_lcm.so`, loaded by Triton for a model whose
//! `config.pbtxt` says `backend: "lcm"` (docs/triton.md).
//!
//! The tensors are the contract of [`lcm_pipeline::infer`] (the same as `lcm serve`'s Open Inference
//! Protocol routes); `config.pbtxt` is written from it ([`config::config_pbtxt`]). Each instance of the
//! model's `instance_group` loads its own pipeline on its device through [`lcm::Opened`], as the CLI
//! does; an `execute` runs the requests Triton's dynamic batcher gathered as few generations as
//! [`lcm_pipeline::spec::Request::batches_with`] allows ([`run::run`]).
//!
//! Layers: [`config`] and [`run`] are plain Rust (tested without Triton); `api` declares the C
//! functions the backend calls and finds them in the server process at load; `backend` (the entry
//! points) and `tensors` (inputs in, response out) are the thin FFI layer.

mod api;
mod backend;
pub mod config;
pub mod run;
mod tensors;
