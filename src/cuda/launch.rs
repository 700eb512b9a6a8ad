//! What a launch is: (kernel, grid, block, shared memory, parameter struct), the device limits that
//! bound it, the activation precision that picks each family's instantiation, and the helpers every
//! family's planner (`ops/<family>.rs`) shares. Pure, no driver calls.

use lcm_core::{Error, Result};

use super::abi::*;
use super::kernel_table::Kernel;

/// The element type of activations (`Elem::Act`), which picks each family's instantiation: f16 for
/// every model, f32 for a VAE that overflows in f16 and that diffusers decodes in f32 (`force_upcast`:
/// SDXL's). `F32` tensors (latents, noise, the schedule) are f32 whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F16,
    F32,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F16 => 2,
            Precision::F32 => 4,
        }
    }

    /// Elements in one 16-byte access: the vectorised kernels' unit.
    pub fn vec(self) -> usize {
        16 / self.bytes()
    }
}

/// The refusal of a family the f32 path does not have (it covers what a VAE runs).
pub(crate) fn no_f32(family: &str) -> Error {
    Error::backend(format!("{family} has no f32-activation kernel (the f32 path covers the ops of a VAE)"))
}

/// What the device allows: read once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub sm_count: u32,
    pub smem_optin: u32,
}

macro_rules! params {
    ($($variant:ident($t:ident),)*) => {
        /// A kernel's parameter struct, by family.
        #[derive(Debug, Clone, Copy)]
        pub enum Params {
            $(#[allow(missing_docs)] $variant($t),)*
        }

        impl Params {
            /// The struct's name (as in lcm_abi.h) and its address: what the kernel takes as its one
            /// argument.
            pub(crate) fn as_arg(&self) -> (&'static str, *const std::ffi::c_void) {
                match self { $(Params::$variant(p) => (stringify!($t), p as *const $t as *const std::ffi::c_void),)* }
            }
        }
    };
}

params! {
    Gemm(LcmGemmParams),
    Attn(LcmAttnParams),
    GroupNorm(LcmGroupNormParams),
    LayerNorm(LcmLayerNormParams),
    Eltwise(LcmEltwiseParams),
    AddScaled(LcmAddScaledParams),
    Concat(LcmConcatParams),
    Cast(LcmCastParams),
    Upsample(LcmUpsampleParams),
    Embed(LcmEmbedParams),
    Timestep(LcmTimestepParams),
    LoraMerge(LcmLoraMergeParams),
    Step(LcmStepParams),
    Blend(LcmBlendParams),
}

#[derive(Debug, Clone, Copy)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub params: Params,
}

impl Launch {
    /// Kernel, grid, threads and dynamic shared memory on one line: what a failing test prints so the
    /// failure names its kernel and geometry, and what the launch plan is compared by.
    pub fn describe(&self) -> String {
        format!(
            "{} grid {:?} block {} smem {}",
            self.kernel.name(),
            self.grid,
            self.block[0] * self.block[1] * self.block[2],
            self.smem
        )
    }
}

/// One step of a recorded run: a kernel, or zeroing a few 32-bit words (the embed error flag).
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Kernel(Launch),
    Zero32 { ptr: u64, words: usize },
}

pub(crate) fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

pub(crate) fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::backend(format!("{what} = {v} does not fit the kernels' 32-bit sizes")))
}

pub(crate) fn check_smem(k: Kernel, smem: usize, lim: Limits) -> Result<u32> {
    if smem > lim.smem_optin as usize {
        return Err(Error::backend(format!(
            "{} needs {smem} bytes of shared memory; this GPU allows {}",
            k.name(),
            lim.smem_optin
        )));
    }
    Ok(smem as u32)
}

/// Grid for the grid-stride element-wise kernels: 256 threads, at most 8 blocks per SM.
pub(crate) fn stride_grid(units: usize, lim: Limits) -> [u32; 3] {
    [cdiv(units, 256).clamp(1, lim.sm_count as usize * 8) as u32, 1, 1]
}

/// Device limits for the planners' unit tests: an H100, and an sm_86 card (the tightest shared memory).
#[cfg(test)]
pub(crate) mod test_limits {
    use super::Limits;

    pub const H100: Limits = Limits { sm_count: 132, smem_optin: 232_448 };
    pub const RTX: Limits = Limits { sm_count: 82, smem_optin: 101_376 };
}
