//! `--device`: CUDA when a GPU, its driver and the compiled kernels are present; else the CPU, with a
//! note on stderr saying why.

use clap::ValueEnum;
use lcm::cuda::CudaBackend;
use lcm_core::Result;
use lcm_cpu::CpuBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

pub enum Chosen {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

pub fn choose(requested: Option<Device>) -> Result<Chosen> {
    match requested {
        Some(Device::Cpu) => Ok(Chosen::Cpu(CpuBackend::new())),
        Some(Device::Cuda) => Ok(Chosen::Cuda(Box::new(CudaBackend::new()?))),
        None => match CudaBackend::new() {
            Ok(b) => Ok(Chosen::Cuda(Box::new(b))),
            Err(e) => {
                eprintln!("note: running on the CPU ({e})");
                Ok(Chosen::Cpu(CpuBackend::new()))
            }
        },
    }
}
