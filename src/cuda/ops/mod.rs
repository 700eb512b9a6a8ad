//! One file per kernel family, beside its `kernels/<family>.cu` and the CPU's
//! `crates/lcm-cpu/src/<family>.rs`: launch planning (pure, unit-tested) and the family's record arm
//! (`record.rs` hands each op to its family).

pub mod attention;
pub mod eltwise;
pub mod gemm;
pub mod lcm_step;
pub mod lora;
pub mod norm;
