//! Every kernel the backend launches, named once with its parameter struct: the driver resolves each
//! into a `CUfunction` at start-up (driver.rs), the emulator calls the same kernel compiled as host C++
//! (emulator.rs), and both check that a launch carries the struct its kernel takes.

use std::ffi::CStr;

macro_rules! kernels {
    ($($variant:ident => $name:literal ($params:ident),)*) => {
        /// A kernel of `kernels/*.cu`, by its `extern "C"` name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Kernel { $($variant,)* }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Kernel::$variant => $name,)* }
            }

            /// The name as a C string (what the driver looks up and the emulator reports).
            pub fn c_name(self) -> &'static CStr {
                match self {
                    $(Kernel::$variant => match CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                        Ok(c) => c,
                        Err(_) => unreachable!(),
                    },)*
                }
            }

            /// The ABI struct (kernels/include/lcm_abi.h) the kernel takes as its only parameter.
            pub fn params_struct(self) -> &'static str {
                match self { $(Kernel::$variant => stringify!($params),)* }
            }

            /// The kernel compiled as host C++, called with a pointer to its parameter struct.
            #[cfg(lcm_emulator)]
            pub(crate) fn emulated(self) -> unsafe extern "C" fn(*const std::ffi::c_void) {
                #[allow(non_snake_case)]
                mod host {
                    use crate::cuda::abi::*;
                    mod ffi {
                        use crate::cuda::abi::*;
                        extern "C" { $(#[link_name = $name] pub fn $variant(p: $params);)* }
                    }
                    $(
                        pub unsafe extern "C" fn $variant(p: *const std::ffi::c_void) {
                            // SAFETY: the emulator checked that `p` points at this kernel's struct.
                            unsafe { ffi::$variant(*(p as *const $params)) }
                        }
                    )*
                }
                match self { $(Kernel::$variant => host::$variant,)* }
            }
        }
    };
}

kernels! {
    IgemmLarge => "igemm_f16_128x128" (LcmGemmParams),
    IgemmSmall => "igemm_f16_64x64" (LcmGemmParams),
    IgemmScalarA => "igemm_f16_64x64_scalar_a" (LcmGemmParams),
    AttnHd16 => "attn_fwd_hd16_f16" (LcmAttnParams),
    AttnHd32 => "attn_fwd_hd32_f16" (LcmAttnParams),
    AttnHd40 => "attn_fwd_hd40_f16" (LcmAttnParams),
    AttnHd64 => "attn_fwd_hd64_f16" (LcmAttnParams),
    AttnHd80 => "attn_fwd_hd80_f16" (LcmAttnParams),
    AttnHd128 => "attn_fwd_hd128_f16" (LcmAttnParams),
    AttnHd160 => "attn_fwd_hd160_f16" (LcmAttnParams),
    AttnHd16Causal => "attn_fwd_hd16_causal_f16" (LcmAttnParams),
    AttnHd32Causal => "attn_fwd_hd32_causal_f16" (LcmAttnParams),
    AttnHd64Causal => "attn_fwd_hd64_causal_f16" (LcmAttnParams),
    AttnHd128Causal => "attn_fwd_hd128_causal_f16" (LcmAttnParams),
    AttnHd512 => "attn_fwd_hd512_f16" (LcmAttnParams),
    GroupNormStatsV8 => "group_norm_stats_v8_f16" (LcmGroupNormParams),
    GroupNormStatsV1 => "group_norm_stats_v1_f16" (LcmGroupNormParams),
    GroupNormFinalize => "group_norm_finalize" (LcmGroupNormParams),
    GroupNormApplyV8 => "group_norm_apply_v8_f16" (LcmGroupNormParams),
    GroupNormApplyV1 => "group_norm_apply_v1_f16" (LcmGroupNormParams),
    LayerNormV8 => "layer_norm_v8_f16" (LcmLayerNormParams),
    LayerNormV1 => "layer_norm_v1_f16" (LcmLayerNormParams),
    MapV8 => "map_v8_f16" (LcmEltwiseParams),
    MapV1 => "map_v1_f16" (LcmEltwiseParams),
    AddChannelV8 => "add_channel_v8_f16" (LcmEltwiseParams),
    AddChannelV1 => "add_channel_v1_f16" (LcmEltwiseParams),
    AddScaledV8 => "add_scaled_v8_f16" (LcmAddScaledParams),
    AddScaledV1 => "add_scaled_v1_f16" (LcmAddScaledParams),
    GegluV8 => "geglu_v8_f16" (LcmEltwiseParams),
    GegluV1 => "geglu_v1_f16" (LcmEltwiseParams),
    ConcatV8 => "concat_v8_f16" (LcmConcatParams),
    ConcatV1 => "concat_v1_f16" (LcmConcatParams),
    UpsampleV8 => "upsample_nearest_v8_f16" (LcmUpsampleParams),
    UpsampleV1 => "upsample_nearest_v1_f16" (LcmUpsampleParams),
    EmbedV8 => "embed_v8_f16" (LcmEmbedParams),
    EmbedV1 => "embed_v1_f16" (LcmEmbedParams),
    TimestepEmbed => "timestep_embed_f16" (LcmTimestepParams),
    CastF32F16 => "cast_f32_f16" (LcmCastParams),
    CastF16F32 => "cast_f16_f32" (LcmCastParams),
    LoraMerge => "lora_merge_f16" (LcmLoraMergeParams),
    LcmStep => "lcm_step_f32" (LcmStepParams),
    InpaintBlend => "inpaint_blend_f32" (LcmBlendParams),
    // f32 activations (a VAE decoded in f32, `force_upcast`): the families a VAE runs.
    IgemmLargeF32 => "igemm_tf32_128x128" (LcmGemmParams),
    IgemmSmallF32 => "igemm_tf32_64x64" (LcmGemmParams),
    IgemmScalarAF32 => "igemm_tf32_64x64_scalar_a" (LcmGemmParams),
    AttnHd512F32 => "attn_fwd_hd512_tf32" (LcmAttnParams),
    GroupNormStatsV4F32 => "group_norm_stats_v4_f32" (LcmGroupNormParams),
    GroupNormStatsV1F32 => "group_norm_stats_v1_f32" (LcmGroupNormParams),
    GroupNormApplyV4F32 => "group_norm_apply_v4_f32" (LcmGroupNormParams),
    GroupNormApplyV1F32 => "group_norm_apply_v1_f32" (LcmGroupNormParams),
    MapV4F32 => "map_v4_f32" (LcmEltwiseParams),
    MapV1F32 => "map_v1_f32" (LcmEltwiseParams),
    UpsampleV4F32 => "upsample_nearest_v4_f32" (LcmUpsampleParams),
    UpsampleV1F32 => "upsample_nearest_v1_f32" (LcmUpsampleParams),
    CastF32F32 => "cast_f32_f32" (LcmCastParams),
}
