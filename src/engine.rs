//! The engine's facade: the one place that chooses a device and the precision each component loads in.
//! Every app (the `lcm` command, `lcm serve`, the C ABI) opens its pipeline here, so "auto = CUDA, else the
//! CPU; f16 weights on CUDA" is decided once.
//!
//! A [`Pipeline`] is generic over its backend (monomorphised: no dynamic dispatch per op). [`Engine`] holds
//! one of the two; [`with_pipeline!`](crate::with_pipeline) runs generic code on whichever it holds.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use lcm_core::{Backend, Error, Result};
use lcm_cpu::CpuBackend;
use lcm_models::Variant;
use lcm_pipeline::lora_swap::PreparedLoras;
use lcm_pipeline::pipeline::{Output, Pipeline, StepEvent};
use lcm_pipeline::spec::{LoadSpec, LoraSpec, Request};

use crate::cuda::{CudaBackend, DeviceKind};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when a GPU, its driver and the compiled kernels are present; else the CPU (with a note).
    #[default]
    Auto,
    /// The f32 CPU reference backend.
    Cpu,
    /// The first GPU, through the CUDA driver.
    Cuda,
    /// The CUDA backend with its kernels run by the emulator on the CPU (slow: for debugging kernels on
    /// tiny models; docs/kernels.md).
    Emulated,
}

impl Device {
    /// The names [`Device::from_str`] takes, for help texts and errors.
    pub const NAMES: &'static str = "auto, cpu, cuda or emulated";

    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Emulated => "emulated",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "emulated" => Ok(Device::Emulated),
            _ => Err(Error::invalid("device", format!("`{s}`: expected {}", Device::NAMES))),
        }
    }
}

/// An opened backend, before a model is loaded onto it.
pub enum Opened {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

impl Opened {
    /// Opens `device`. With [`Device::Auto`] and no usable GPU, the CPU and, second, why CUDA was not
    /// taken (the CLI prints it; a service may log it).
    pub fn open(device: Device) -> Result<(Opened, Option<String>)> {
        Ok(match device {
            Device::Cpu => (Opened::Cpu(CpuBackend::new()), None),
            Device::Cuda => (Opened::Cuda(Box::new(CudaBackend::new()?)), None),
            Device::Emulated => (Opened::Cuda(Box::new(CudaBackend::open(DeviceKind::Emulated)?)), None),
            Device::Auto => match CudaBackend::new() {
                Ok(b) => (Opened::Cuda(Box::new(b)), None),
                Err(e) => (Opened::Cpu(CpuBackend::new()), Some(format!("running on the CPU ({e})"))),
            },
        })
    }

    /// [`Opened::open`] on the GPU with this ordinal (one server worker per device): for
    /// [`Device::Cuda`] and [`Device::Auto`] the CUDA device `ordinal` (an error says how many exist);
    /// the CPU and the emulator are one device each, opened anew (`ordinal` is only the worker's slot).
    pub fn open_ordinal(device: Device, ordinal: usize) -> Result<(Opened, Option<String>)> {
        let gpu = || CudaBackend::open(DeviceKind::Gpu(ordinal as i32)).map(|b| Opened::Cuda(Box::new(b)));
        Ok(match device {
            Device::Cpu | Device::Emulated => return Opened::open(device),
            Device::Cuda => (gpu()?, None),
            Device::Auto => match gpu() {
                Ok(b) => (b, None),
                Err(e) => (Opened::Cpu(CpuBackend::new()), Some(format!("running on the CPU ({e})"))),
            },
        })
    }

    /// The backend's name (`Backend::name`).
    pub fn name(&self) -> &'static str {
        match self {
            Opened::Cpu(b) => b.name(),
            Opened::Cuda(b) => b.name(),
        }
    }

    /// The weight files this backend prefers: f16 on CUDA (`.fp16` files where a folder has them; a
    /// `force_upcast` VAE is still decoded in f32 there), full precision on the f32 CPU reference.
    pub fn variant(&self) -> Variant {
        match self {
            Opened::Cpu(_) => Variant::PreferFull,
            Opened::Cuda(_) => Variant::PreferHalf,
        }
    }

    /// Loads `spec` (with this backend's weight precision) onto the backend.
    pub fn load(self, spec: LoadSpec) -> Result<Engine> {
        let spec = LoadSpec { variant: self.variant(), ..spec };
        Ok(match self {
            Opened::Cpu(b) => Engine::Cpu(Box::new(Pipeline::load(b, spec)?)),
            Opened::Cuda(b) => Engine::Cuda(Box::new(Pipeline::load(*b, spec)?)),
        })
    }
}

/// A loaded pipeline on the CPU or on CUDA.
pub enum Engine {
    Cpu(Box<Pipeline<CpuBackend>>),
    Cuda(Box<Pipeline<CudaBackend>>),
}

/// LoRAs prepared by [`Engine::prepare_loras`] for [`Engine::use_loras`], on the engine's backend.
pub enum Prepared {
    Cpu(PreparedLoras<CpuBackend>),
    Cuda(PreparedLoras<CudaBackend>),
}

/// Runs `$body` with `$p` bound to the engine's pipeline (`&mut Pipeline<B>` for a `&mut Engine`,
/// `Box<Pipeline<B>>` for an `Engine`): generic code over both backends without a trait object.
#[macro_export]
macro_rules! with_pipeline {
    ($engine:expr, $p:ident => $body:expr) => {
        match $engine {
            $crate::Engine::Cpu($p) => $body,
            $crate::Engine::Cuda($p) => $body,
        }
    };
}

impl Engine {
    /// Opens `device` and loads `spec` onto it; the note says why `auto` fell back to the CPU.
    pub fn load(device: Device, spec: LoadSpec) -> Result<(Engine, Option<String>)> {
        let (opened, note) = Opened::open(device)?;
        Ok((opened.load(spec)?, note))
    }

    /// What was loaded (the model, its LoRAs, the weight precision).
    pub fn spec(&self) -> &LoadSpec {
        with_pipeline!(self, p => &p.spec)
    }

    /// [`Pipeline::generate_with`].
    pub fn generate_with(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(StepEvent),
        cancel: Option<&AtomicBool>,
    ) -> Result<Output> {
        with_pipeline!(self, p => p.generate_with(req, progress, cancel))
    }

    /// [`Pipeline::set_loras`].
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<()> {
        with_pipeline!(self, p => p.set_loras(loras))
    }

    /// [`Pipeline::prepare_loras`].
    pub fn prepare_loras(&self, loras: &[LoraSpec]) -> Result<Prepared> {
        Ok(match self {
            Engine::Cpu(p) => Prepared::Cpu(p.prepare_loras(loras)?),
            Engine::Cuda(p) => Prepared::Cuda(p.prepare_loras(loras)?),
        })
    }

    /// [`Pipeline::use_loras`]; LoRAs prepared on the other backend are refused.
    pub fn use_loras(&mut self, prepared: &Prepared) -> Result<()> {
        match (self, prepared) {
            (Engine::Cpu(p), Prepared::Cpu(l)) => p.use_loras(l),
            (Engine::Cuda(p), Prepared::Cuda(l)) => p.use_loras(l),
            _ => Err(Error::invalid("prepared", "prepared on another backend")),
        }
    }
}

// A service moves a pipeline into the thread that serves it: keep both backends' pipelines Send
// (checked at compile time). Not needed to be Sync: generation takes `&mut self`.
const _: () = {
    const fn send<T: Send>() {}
    send::<Engine>();
    send::<Prepared>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_unknown_ones_are_named() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda, Device::Emulated] {
            assert_eq!(d.name().parse::<Device>().unwrap(), d);
        }
        let e = "gpu".parse::<Device>().unwrap_err().to_string();
        assert!(e.contains("gpu") && e.contains("emulated"), "{e}");
    }
}
