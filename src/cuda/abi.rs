//! The kernel parameter structs, exactly as `kernels/include/lcm_abi.h` declares them.
//!
//! `abi_bindings.rs` is bindgen's output for that header, checked in so that building needs no
//! libclang; `tests/abi.rs` regenerates it (when libclang loads) and compares, and compares every size
//! and offset with the C compiler's (the probe build.rs compiles with `cc`). Regenerate with
//! `scripts/regen-abi.sh` after editing the header.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]

include!("abi_bindings.rs");

// The header asserts the same sizes on the C side.
const _: () = assert!(std::mem::size_of::<LcmStepRow>() == 64);
const _: () = assert!(std::mem::size_of::<LcmStepParams>() == 72);
const _: () = assert!(std::mem::size_of::<LcmCastParams>() == 48);
const _: () = assert!(std::mem::size_of::<LcmBlendParams>() == 64);
const _: () = assert!(std::mem::size_of::<LcmGemmParams>() == 128);
const _: () = assert!(std::mem::size_of::<LcmAttnParams>() == 88);
const _: () = assert!(std::mem::size_of::<LcmGroupNormParams>() == 80);
const _: () = assert!(std::mem::size_of::<LcmLayerNormParams>() == 48);
const _: () = assert!(std::mem::size_of::<LcmEltwiseParams>() == 56);
const _: () = assert!(std::mem::size_of::<LcmAddScaledParams>() == 48);
const _: () = assert!(std::mem::size_of::<LcmConcatParams>() == 40);
const _: () = assert!(std::mem::size_of::<LcmUpsampleParams>() == 48);
const _: () = assert!(std::mem::size_of::<LcmEmbedParams>() == 56);
const _: () = assert!(std::mem::size_of::<LcmTimestepParams>() == 32);
const _: () = assert!(std::mem::size_of::<LcmLoraMergeParams>() == 56);

/// (name, value) pairs: `"Struct"` → size, `"Struct.field"` → offset, from the C compiler.
pub fn c_layout() -> Vec<(String, u64)> {
    #[repr(C)]
    struct Entry {
        name: *const std::os::raw::c_char,
        value: u64,
    }
    extern "C" {
        fn lcm_abi_entries(count: *mut usize) -> *const Entry;
    }
    let mut n = 0usize;
    // SAFETY: the probe returns a pointer to a static array of `n` entries with static C strings.
    unsafe {
        let p = lcm_abi_entries(&mut n);
        (0..n)
            .map(|i| {
                let e = &*p.add(i);
                (std::ffi::CStr::from_ptr(e.name).to_string_lossy().into_owned(), e.value)
            })
            .collect()
    }
}

/// The same table from the Rust structs.
pub fn rust_layout() -> Vec<(String, u64)> {
    use std::mem::{offset_of, size_of};
    macro_rules! layout {
        ($t:ident { $($f:ident),* $(,)? }) => {{
            let mut v = vec![(stringify!($t).to_string(), size_of::<$t>() as u64)];
            $( v.push((format!("{}.{}", stringify!($t), stringify!($f)), offset_of!($t, $f) as u64)); )*
            v
        }};
    }
    let mut v = Vec::new();
    v.extend(layout!(LcmStepRow {
        timestep,
        guidance,
        sqrt_alpha_t,
        sqrt_beta_t,
        sigma,
        sigma_sq1,
        input_div,
        x0_coef,
        skip_coef,
        eps_coef,
        dt,
        renoise,
        noise,
        keep_image,
        keep_noise,
        pad
    }));
    v.extend(layout!(LcmStepParams {
        sample,
        model_output,
        noise,
        row,
        out,
        n,
        clip_range,
        clip,
        prediction,
        guided,
        rule,
        pad0
    }));
    v.extend(layout!(LcmGemmParams {
        x,
        weight,
        bias,
        residual,
        out,
        a2,
        weight2,
        batch,
        h,
        w,
        ci,
        ho,
        wo,
        co,
        kh,
        kw,
        stride,
        pad_top,
        pad_left,
        cip,
        k2,
        ldc,
        geglu,
        alpha,
        pad0
    }));
    v.extend(layout!(LcmAttnParams {
        q,
        k,
        v,
        out,
        batch,
        heads,
        n_q,
        n_kv,
        head_dim,
        ldq,
        ldk,
        ldv,
        ldo,
        scale_log2,
        kv_limit_rows_begin,
        kv_limit_rows_end,
        kv_limit_keys,
        pad0
    }));
    v.extend(layout!(LcmGroupNormParams {
        x,
        gamma,
        beta,
        out,
        partial,
        stats,
        batch,
        hw,
        c,
        groups,
        chunks,
        chunk_pixels,
        eps,
        silu
    }));
    v.extend(layout!(LcmLayerNormParams { x, gamma, beta, out, rows, c, eps, pad0 }));
    v.extend(layout!(LcmEltwiseParams { a, b, out, n, hw, c, op, mul, add }));
    v.extend(layout!(LcmBlendParams { x, image, noise, mask, row, out, n, c, last }));
    v.extend(layout!(LcmAddScaledParams { x, y, scale, out, n, per_image }));
    v.extend(layout!(LcmConcatParams { a, b, out, rows, ca, cb }));
    v.extend(layout!(LcmCastParams { x, out, row, n, n_in, div, add }));
    v.extend(layout!(LcmUpsampleParams { x, out, batch, h, w, c, ho, wo, scale_h, scale_w }));
    v.extend(layout!(LcmEmbedParams { ids, table, positions, out, error, batch, tokens, c, vocab }));
    v.extend(layout!(LcmTimestepParams { t, out, batch, dim, freq_shift, flip_sin_to_cos }));
    v.extend(layout!(LcmLoraMergeParams { w, down, up, co, ci, cip, kh, kw, rank, scale, pad0 }));
    v
}
