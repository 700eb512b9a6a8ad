//! The CUDA backend: kernels compiled by build.rs, launched through the driver API (cudarc).

pub mod abi;
pub mod kernels;
