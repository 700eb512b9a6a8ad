//! `--device`: the CLI's names for the engine's [`lcm::Device`]; the choice itself (auto = CUDA when a
//! GPU, its driver and the compiled kernels are present, else the CPU; the weight precision each loads)
//! is the engine's ([`lcm::Opened`]).

use clap::ValueEnum;
use lcm::{Device, Opened};
use lcm_core::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a GPU and the kernels are present, else the CPU (with a note saying why).
    #[default]
    Auto,
    /// The f32 CPU reference backend.
    Cpu,
    /// The GPU through the CUDA driver.
    Cuda,
    /// The CUDA kernels run on the CPU by the emulator: slow, for debugging on tiny models.
    Emulated,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
            DeviceArg::Emulated => Device::Emulated,
        }
    }
}

/// Opens the device, saying on stderr why `auto` fell back to the CPU.
pub fn open(device: DeviceArg) -> Result<Opened> {
    let (opened, note) = Opened::open(device.into())?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    Ok(opened)
}
