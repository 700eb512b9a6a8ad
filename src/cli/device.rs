//! `--device`: CUDA when a GPU, its driver and the compiled kernels are present; else the CPU, with a
//! note on stderr saying why. `emulated` runs the CUDA backend on the kernel emulator (the same kernels
//! compiled for the CPU; slow — meant for debugging kernels on tiny models, see docs/kernels.md).

use clap::ValueEnum;
use lcm::cuda::{CudaBackend, DeviceKind};
use lcm_core::Result;
use lcm_cpu::CpuBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    Emulated,
}

pub enum Chosen {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

pub fn choose(requested: Option<Device>) -> Result<Chosen> {
    match requested {
        Some(Device::Cpu) => Ok(Chosen::Cpu(CpuBackend::new())),
        Some(Device::Cuda) => Ok(Chosen::Cuda(Box::new(CudaBackend::new()?))),
        Some(Device::Emulated) => Ok(Chosen::Cuda(Box::new(CudaBackend::open(DeviceKind::Emulated)?))),
        None => match CudaBackend::new() {
            Ok(b) => Ok(Chosen::Cuda(Box::new(b))),
            Err(e) => {
                eprintln!("note: running on the CPU ({e})");
                Ok(Chosen::Cpu(CpuBackend::new()))
            }
        },
    }
}
