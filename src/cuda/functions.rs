//! Every kernel the backend launches, named once: resolved from the module at start-up into a table of
//! `CUfunction` handles indexed by [`Kernel`], so a launch is an array load — no lookup, no string.

use cudarc::driver::sys;
use lcm_core::Result;

use super::driver::{check, Device};

macro_rules! kernels {
    ($($variant:ident => $name:literal,)*) => {
        /// A kernel of `kernels/*.cu`, by its `extern "C"` name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Kernel { $($variant,)* }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Kernel::$variant => $name,)* }
            }
        }
    };
}

kernels! {
    IgemmLarge => "igemm_f16_128x128",
    IgemmSmall => "igemm_f16_64x64",
    IgemmScalarA => "igemm_f16_64x64_scalar_a",
    AttnHd16 => "attn_fwd_hd16_f16",
    AttnHd32 => "attn_fwd_hd32_f16",
    AttnHd40 => "attn_fwd_hd40_f16",
    AttnHd64 => "attn_fwd_hd64_f16",
    AttnHd80 => "attn_fwd_hd80_f16",
    AttnHd128 => "attn_fwd_hd128_f16",
    AttnHd160 => "attn_fwd_hd160_f16",
    AttnHd16Causal => "attn_fwd_hd16_causal_f16",
    AttnHd32Causal => "attn_fwd_hd32_causal_f16",
    AttnHd64Causal => "attn_fwd_hd64_causal_f16",
    AttnHd128Causal => "attn_fwd_hd128_causal_f16",
    AttnHd512 => "attn_fwd_hd512_f16",
    GroupNormStatsV8 => "group_norm_stats_v8_f16",
    GroupNormStatsV1 => "group_norm_stats_v1_f16",
    GroupNormFinalize => "group_norm_finalize",
    GroupNormApplyV8 => "group_norm_apply_v8_f16",
    GroupNormApplyV1 => "group_norm_apply_v1_f16",
    LayerNormV8 => "layer_norm_v8_f16",
    LayerNormV1 => "layer_norm_v1_f16",
    AddV8 => "add_v8_f16",
    AddV1 => "add_v1_f16",
    AddChannelV8 => "add_channel_v8_f16",
    AddChannelV1 => "add_channel_v1_f16",
    ScaleV8 => "scale_v8_f16",
    ScaleV1 => "scale_v1_f16",
    ActivationV8 => "activation_v8_f16",
    ActivationV1 => "activation_v1_f16",
    GegluV8 => "geglu_v8_f16",
    GegluV1 => "geglu_v1_f16",
    ConcatV8 => "concat_v8_f16",
    ConcatV1 => "concat_v1_f16",
    UpsampleV8 => "upsample_nearest_v8_f16",
    UpsampleV1 => "upsample_nearest_v1_f16",
    EmbedV8 => "embed_v8_f16",
    EmbedV1 => "embed_v1_f16",
    TimestepEmbed => "timestep_embed_f16",
    LoraMerge => "lora_merge_f16",
    LcmStep => "lcm_step_f32",
}

/// The resolved handles, in [`Kernel::ALL`] order.
pub(crate) struct Functions {
    funcs: Vec<sys::CUfunction>,
}

// SAFETY: CUfunction handles are immutable identifiers of the loaded module, valid from any thread with
// the context bound (every launch path binds it).
unsafe impl Send for Functions {}
unsafe impl Sync for Functions {}

impl Functions {
    /// Resolves every kernel and lets each use the device's full opt-in shared memory (the launch
    /// planner checks each launch's request against that limit).
    pub(crate) fn resolve(dev: &Device) -> Result<Functions> {
        let mut funcs = Vec::with_capacity(Kernel::ALL.len());
        for &k in Kernel::ALL {
            let f = dev.function(k.name())?;
            let mut static_smem = 0;
            // SAFETY: `f` is a valid function of the loaded module.
            unsafe {
                check(
                    sys::cuFuncGetAttribute(
                        &mut static_smem,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                        f,
                    ),
                    "cuFuncGetAttribute",
                )?;
                check(
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        dev.smem_optin as i32 - static_smem,
                    ),
                    &format!("raising the shared-memory limit of {}", k.name()),
                )?;
            }
            funcs.push(f);
        }
        Ok(Functions { funcs })
    }

    #[inline]
    pub(crate) fn get(&self, k: Kernel) -> sys::CUfunction {
        self.funcs[k as usize]
    }
}
