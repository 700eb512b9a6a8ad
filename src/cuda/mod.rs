//! The CUDA backend: kernels compiled by build.rs, launched through the driver API (cudarc, loaded at
//! run time, so the binary starts where no driver is installed and reports that as an error).
//!
//! - `fatbin`: the embedded fatbin and ptxas report; `abi`: the kernel parameter structs;
//! - `kernel_table`: every kernel (name and parameter struct of each); `launch`: what a launch is
//!   (limits, precision, parameter structs); `ops/<family>.rs`: each kernel family's launch planning
//!   (tile tables, grids; pure, unit-tested) and record arm; `record`: a graph -> the launches of one
//!   run, one arm per family;
//! - `gpu_spec`, `work`, `cost`: the launch plan's cost model (`lcm bench --plan`): GPUs by name, what a
//!   launch asks of the GPU, its predicted time;
//! - `backend`: [`CudaBackend`], the `lcm_core::Backend`; `lora`: merged and unmerged LoRA;
//! - `device`: the seam below all of that — counted allocations, copies, launches, graph capture —
//!   over `driver` (a GPU through the driver API) or `emulator` (the same kernels compiled as host C++
//!   and run on the CPU).
//!
//! docs/kernels.md describes each kernel family, its tiling and its status.

pub mod abi;
mod backend;
pub mod cost;
mod device;
mod driver;
#[cfg(lcm_emulator)]
mod emulator;
pub mod fatbin;
pub mod gpu_spec;
pub mod kernel_table;
pub mod launch;
mod lora;
mod ops;
mod record;
pub mod self_check;
pub mod work;

pub use backend::{kernel_names, CudaArena, CudaBackend, CudaWeight};
pub use device::DeviceKind;
pub use gpu_spec::GpuSpec;
pub use kernel_table::Kernel;
pub use launch::Precision;
pub use lora::{LoraImage, LoraSlot};
pub use record::plan_launches;

/// Whether this build has the kernel emulator (it needs the CUDA headers nvcc brings at build time).
pub fn emulator_built() -> bool {
    cfg!(lcm_emulator)
}

/// How many GPUs the CUDA driver sees (0 without the driver library or a GPU): `lcm serve --devices all`.
pub fn gpu_count() -> usize {
    driver::device_count()
}
