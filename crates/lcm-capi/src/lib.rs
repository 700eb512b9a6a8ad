//! The C ABI of lcm (`include/lcm.h`, generated from this file by cbindgen; tests/header.rs checks it
//! has not drifted): load a pipeline once, generate 8-bit RGB images (guided by ControlNets or not),
//! swap LoRAs between generations (or prepare sets of LoRAs once and switch between them with one
//! device copy), cancel from another thread.
//!
//! Conventions, for every function:
//! - The return value is a status code (`LCM_OK` = 0, else one of the `LCM_ERR_*`); on an error,
//!   [`lcm_last_error`] gives a message naming the argument at fault.
//! - No panic crosses the boundary: each body runs under `catch_unwind`; a panic is `LCM_ERR_PANIC`.
//! - Pointers the caller passes may be NULL only where the header says so; strings are UTF-8 and
//!   NUL-terminated. What lcm allocates, an `lcm_free_*` function frees.
//! - A pipeline may be used from any thread; generations on one pipeline run one at a time (a second
//!   caller waits). [`lcm_cancel`] may be called from any thread at any time.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use lcm::{Device, Engine, Prepared};
use lcm_core::lcm::Prediction;
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, LoraMode, Request, SizeRule, MAX_IMAGES};

mod ffi;
mod generate;
use ffi::{clear_out, control_units, guard, invalid, lora_specs, request_error, string, Failure, LAST_ERROR};
use generate::generate;

/// A status code: `LCM_OK` or one of the `LCM_ERR_*` values.
pub type LcmStatus = i32;
/// Success.
pub const LCM_OK: LcmStatus = 0;
/// An argument is NULL where it may not be, not UTF-8, or out of range (the message names it).
pub const LCM_ERR_INVALID_ARGUMENT: LcmStatus = 1;
/// A model, LoRA or config file is missing, unreadable or does not fit.
pub const LCM_ERR_FILE: LcmStatus = 2;
/// The compute backend failed (no GPU, driver error, out of memory), or a stage produced NaN/Inf.
pub const LCM_ERR_BACKEND: LcmStatus = 3;
/// The generation was stopped by [`lcm_cancel`].
pub const LCM_ERR_CANCELLED: LcmStatus = 4;
/// lcm panicked inside the call (a bug: please report it with the message); the pipeline stays usable.
pub const LCM_ERR_PANIC: LcmStatus = 5;

/// Which device a pipeline runs on.
pub type LcmDevice = i32;
/// CUDA when a GPU, its driver and the compiled kernels are present, else the CPU.
pub const LCM_DEVICE_AUTO: LcmDevice = 0;
/// The f32 CPU reference backend.
pub const LCM_DEVICE_CPU: LcmDevice = 1;
/// The first GPU (`LCM_CUDA_DEVICE` picks another), f16.
pub const LCM_DEVICE_CUDA: LcmDevice = 2;
/// The CUDA kernels on the CPU emulator (slow: for debugging kernels on tiny models).
pub const LCM_DEVICE_EMULATED: LcmDevice = 3;

/// A LoRA file and its scale.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LcmLora {
    /// Path of a `.safetensors` LoRA (kohya or peft names).
    pub path: *const c_char,
    /// Multiplies the LoRA's every delta (1: as trained).
    pub scale: f32,
}

/// How to load a pipeline. Start from [`lcm_load_options_default`] and set what you need, so fields
/// added later keep their defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LcmLoadOptions {
    /// A diffusers folder, or a single-file SD1.5-family checkpoint (`.safetensors`).
    pub model: *const c_char,
    /// May be NULL. The tokenizer folder (`tokenizer.json`, or `vocab.json` + `merges.txt`); NULL gives
    /// a single-file checkpoint CLIP's built-in tokenizer (no download).
    pub tokenizer_dir: *const c_char,
    /// `LCM_DEVICE_*`.
    pub device: LcmDevice,
    /// May be NULL when `num_loras` is 0. LoRAs applied from the start (e.g. the LCM-LoRA).
    pub loras: *const LcmLora,
    /// Entries in `loras`.
    pub num_loras: usize,
    /// Nonzero: LoRAs run unmerged from fixed buffers on CUDA, so [`lcm_set_loras`] is a copy (the
    /// CPU re-merges either way). Zero: merged into the weights.
    pub runtime_loras: i32,
    /// Runtime LoRAs: the largest rank on one weight the buffers hold; 0 for the default (64).
    pub max_lora_rank: u32,
    /// May be NULL (the model's scheduler config says; a bare SD2 single file v_prediction, others
    /// epsilon). What the UNet predicts: "epsilon" or "v_prediction"; an error where a model folder's
    /// config says otherwise.
    pub prediction_type: *const c_char,
}

/// What to generate. Start from [`lcm_request_default`] (512x512, 4 steps, guidance 1, one image).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LcmRequest {
    /// The prompt (UTF-8).
    pub prompt: *const c_char,
    /// May be NULL (""). The uncond prompt of classic CFG; unused without CFG.
    pub negative_prompt: *const c_char,
    /// LCM steps, 1..=the model's `original_inference_steps` (50 for SD1.5 LCMs).
    pub steps: u32,
    /// LCM-LoRA models: classic CFG above 1 (1, the usual value, means none); distilled LCMs embed it.
    pub guidance_scale: f32,
    /// Seeds `torch.Generator("cpu").manual_seed(seed)`: the same seed gives diffusers' image.
    pub seed: u64,
    /// Pixels, a multiple of 8 in 64..=2048.
    pub width: u32,
    /// Pixels, a multiple of 8 in 64..=2048.
    pub height: u32,
    /// Images from this prompt and one generator stream.
    pub num_images: u32,
    /// May be NULL (txt2img). img2img: `width`·`height`·3 bytes of 8-bit RGB, row-major.
    pub init_rgb: *const u8,
    /// img2img: in (0, 1]; 1 starts from noise, small values keep more of the image.
    pub strength: f32,
    /// May be NULL (the pipeline's sampler: LCM). The sampler, built from the model's scheduler config
    /// as diffusers' `X.from_config`: "lcm", "tcd", "euler", "euler-a", "ddim", or "auto" (the model
    /// folder's own scheduler class, e.g. Euler for SD-Turbo).
    pub scheduler: *const c_char,
    /// NaN for none (0). "tcd"'s gamma / "ddim"'s eta, in [0, 1]; an error for the other samplers.
    pub eta: f32,
    /// May be NULL (the model's scheduler config's). "ddim", "euler", "euler-a": "leading",
    /// "trailing" or "linspace" timesteps.
    pub timestep_spacing: *const c_char,
    /// May be NULL ("plain"). How the prompts are read: "plain" (as diffusers) or "a1111"
    /// (AUTOMATIC1111's weights, BREAK and long prompts; README, "Prompts").
    pub prompt_syntax: *const c_char,
}

/// A ControlNet guiding a generation ([`lcm_generate_controlled`]), as diffusers' ControlNet pipelines
/// take it. Start from [`lcm_controlnet_default`] and set what you need, so fields added later keep
/// their defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LcmControlNet {
    /// A ControlNet: a diffusers folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`)
    /// or a single `.safetensors` file. Loaded on its first use and kept by the pipeline.
    pub model: *const c_char,
    /// The control image: `image_width`·`image_height`·3 bytes of 8-bit RGB, row-major. Resized to the
    /// request's size (Pillow's Lanczos) when its size differs.
    pub image_rgb: *const u8,
    /// The control image's pixels per row.
    pub image_width: u32,
    /// The control image's rows.
    pub image_height: u32,
    /// May be NULL ("none"). How the image is preprocessed first: "none" (it already is a control
    /// map), "canny" (OpenCV's Canny, thresholds 100 and 200, as A1111) or "canny:LOW:HIGH".
    pub preprocess: *const c_char,
    /// `controlnet_conditioning_scale`: the ControlNet's weight (finite). diffusers' default is 1 for
    /// txt2img and 0.8 for img2img.
    pub scale: f32,
    /// `control_guidance_start`, in [0, 1): the fraction of the steps before the ControlNet starts.
    pub start: f64,
    /// `control_guidance_end`, in (start, 1]: the fraction of the steps after which it stops.
    pub end: f64,
}

/// Generated images: `count` images of `height`·`width`·3 bytes each (8-bit RGB, row-major), one
/// after another in `rgb`. Free with [`lcm_free_images`].
#[repr(C)]
#[derive(Debug)]
pub struct LcmImages {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Images.
    pub count: u32,
    /// `len` bytes: `count`·`height`·`width`·3.
    pub rgb: *mut u8,
    /// Bytes in `rgb`.
    pub len: usize,
}

/// A loaded pipeline (opaque). Free with [`lcm_free_pipeline`].
pub struct LcmPipeline {
    engine: Mutex<Engine>,
    cancel: AtomicBool,
}

/// LoRAs made ready on one pipeline by [`lcm_prepare_loras`] for [`lcm_use_loras`] (opaque). Holds
/// device memory on CUDA (the runtime LoRA buffers' contents). Free with [`lcm_free_prepared_loras`].
pub struct LcmPreparedLoras {
    /// The pipeline that prepared them (an address, compared only): another pipeline refuses them.
    owner: usize,
    prepared: Prepared,
}

fn lock(p: &LcmPipeline) -> MutexGuard<'_, Engine> {
    // A panic during an earlier call is reported as LCM_ERR_PANIC; the pipeline goes on being used
    // (as `lcm serve`'s worker does): each generation rewrites every buffer it reads.
    p.engine.lock().unwrap_or_else(|e| e.into_inner())
}

/// The defaults: no model (set `model`), `LCM_DEVICE_AUTO`, no LoRAs, runtime LoRAs, default rank,
/// the config's prediction type.
#[no_mangle]
pub extern "C" fn lcm_load_options_default() -> LcmLoadOptions {
    LcmLoadOptions {
        model: std::ptr::null(),
        tokenizer_dir: std::ptr::null(),
        device: LCM_DEVICE_AUTO,
        loras: std::ptr::null(),
        num_loras: 0,
        runtime_loras: 1,
        max_lora_rank: 0,
        prediction_type: std::ptr::null(),
    }
}

/// The defaults: an empty prompt (set `prompt`), 512x512, 4 steps, guidance 1, seed 0, one image,
/// txt2img (strength 1), the pipeline's sampler (`scheduler` NULL, `eta` NaN, `timestep_spacing` NULL),
/// plain prompts (`prompt_syntax` NULL).
#[no_mangle]
pub extern "C" fn lcm_request_default() -> LcmRequest {
    let r = Request::default();
    LcmRequest {
        prompt: std::ptr::null(),
        negative_prompt: std::ptr::null(),
        steps: r.steps as u32,
        guidance_scale: r.guidance_scale,
        seed: r.seed,
        width: r.width as u32,
        height: r.height as u32,
        num_images: r.num_images as u32,
        init_rgb: std::ptr::null(),
        strength: 1.0,
        scheduler: std::ptr::null(),
        eta: f32::NAN,
        timestep_spacing: std::ptr::null(),
        prompt_syntax: std::ptr::null(),
    }
}

/// The defaults: no model and no image (set `model`, `image_rgb`, `image_width`, `image_height`), no
/// preprocessing, scale 1, active over all steps (start 0, end 1).
#[no_mangle]
pub extern "C" fn lcm_controlnet_default() -> LcmControlNet {
    LcmControlNet {
        model: std::ptr::null(),
        image_rgb: std::ptr::null(),
        image_width: 0,
        image_height: 0,
        preprocess: std::ptr::null(),
        scale: ControlUnit::default_scale(false),
        start: 0.0,
        end: 1.0,
    }
}

/// Loads a pipeline (seconds for SD1.5); on `LCM_OK`, `*out` is the new pipeline, else it is set to
/// NULL.
///
/// # Safety
/// `options` points to a valid `LcmLoadOptions` (strings NUL-terminated, `loras` holding `num_loras`
/// entries); `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn lcm_pipeline_load(options: *const LcmLoadOptions, out: *mut *mut LcmPipeline) -> LcmStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) }?;
        // SAFETY: the caller's contract.
        let o = unsafe { options.as_ref() }.ok_or_else(|| invalid("options", "NULL"))?;
        // SAFETY: the caller's contract.
        let model = unsafe { string(o.model, "options.model") }?.ok_or_else(|| invalid("options.model", "NULL"))?;
        // SAFETY: the caller's contract.
        let tokenizer_dir = unsafe { string(o.tokenizer_dir, "options.tokenizer_dir") }?.map(PathBuf::from);
        // SAFETY: the caller's contract.
        let loras = unsafe { lora_specs(o.loras, o.num_loras, "options.loras") }?;
        // SAFETY: the caller's contract.
        let prediction_type = match unsafe { string(o.prediction_type, "options.prediction_type") }?.as_deref() {
            None => None,
            Some("epsilon") => Some(Prediction::Epsilon),
            Some("v_prediction") => Some(Prediction::VPrediction),
            Some(other) => {
                return Err(invalid("options.prediction_type", format!("`{other}`: expected epsilon or v_prediction")))
            }
        };
        let spec = LoadSpec {
            model_dir: PathBuf::from(model),
            loras,
            tokenizer_dir,
            lora_mode: if o.runtime_loras != 0 { LoraMode::Runtime } else { LoraMode::Merged },
            max_lora_rank: (o.max_lora_rank != 0).then_some(o.max_lora_rank as usize),
            prediction_type,
            ..LoadSpec::default()
        };
        let device = match o.device {
            LCM_DEVICE_AUTO => Device::Auto,
            LCM_DEVICE_CPU => Device::Cpu,
            LCM_DEVICE_CUDA => Device::Cuda,
            LCM_DEVICE_EMULATED => Device::Emulated,
            d => return Err(invalid("options.device", format!("{d}: expected an LCM_DEVICE_* value (0..=3)"))),
        };
        // The engine picks the weight precision for the device (f16 on CUDA, as `lcm generate` loads).
        let (engine, _cpu_fallback) = Engine::load(device, spec)?;
        let p = Box::new(LcmPipeline { engine: Mutex::new(engine), cancel: AtomicBool::new(false) });
        // SAFETY: checked non-NULL above.
        unsafe { *out = Box::into_raw(p) };
        Ok(())
    })
}

/// Generates `request`'s images; on `LCM_OK`, `*out` holds them (free with [`lcm_free_images`]),
/// else it is set to NULL. `LCM_ERR_CANCELLED` when [`lcm_cancel`] stopped it.
///
/// # Safety
/// `pipeline` comes from [`lcm_pipeline_load`] and is not freed; `request` points to a valid
/// `LcmRequest` (strings NUL-terminated; `init_rgb` NULL or `width`·`height`·3 readable bytes);
/// `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn lcm_generate(
    pipeline: *mut LcmPipeline,
    request: *const LcmRequest,
    out: *mut *mut LcmImages,
) -> LcmStatus {
    // SAFETY: the caller's contract; no ControlNets.
    guard(|| unsafe { generate(pipeline, request, std::ptr::null(), std::ptr::null(), 0, out) })
}

/// [`lcm_generate`] inpainting `request.init_rgb` (required) under `mask`: `width`·`height` bytes of
/// 8-bit gray, row-major, white = repaint and black = keep, binarised at 0.5 (128 and up repaint), as
/// diffusers' inpaint pipelines and `lcm generate --mask` take it; `request.strength` as there (1
/// starts from noise). Works with inpainting UNets (9 input channels, which need a mask) and ordinary
/// ones. Errors name `request.mask` (NULL, no pixel to repaint) or `request.init_rgb`.
///
/// # Safety
/// As [`lcm_generate`]; `mask` is NULL or holds `width`·`height` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lcm_generate_masked(
    pipeline: *mut LcmPipeline,
    request: *const LcmRequest,
    mask: *const u8,
    out: *mut *mut LcmImages,
) -> LcmStatus {
    guard(|| {
        if mask.is_null() {
            // SAFETY: the caller's contract.
            unsafe { clear_out(out) }?;
            return Err(invalid("request.mask", "NULL: lcm_generate_masked needs a mask (or call lcm_generate)"));
        }
        // SAFETY: the caller's contract.
        unsafe { generate(pipeline, request, mask, std::ptr::null(), 0, out) }
    })
}

/// [`lcm_generate`] guided by `num_controlnets` ControlNets (at most 8; their residuals are summed, as
/// diffusers' MultiControlNet): the images diffusers' ControlNet pipelines give for the same settings.
/// Each ControlNet loads on its first use and stays loaded in the pipeline. Errors name the entry at
/// fault (`controlnets[1].model: …`); a ControlNet that cannot be read or does not fit the model is
/// `LCM_ERR_FILE`.
///
/// # Safety
/// As [`lcm_generate`]; `controlnets` is NULL (with `num_controlnets` 0) or holds `num_controlnets`
/// entries, each with a NUL-terminated `model`, `preprocess` NULL or NUL-terminated, and `image_rgb`
/// NULL or `image_width`·`image_height`·3 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lcm_generate_controlled(
    pipeline: *mut LcmPipeline,
    request: *const LcmRequest,
    controlnets: *const LcmControlNet,
    num_controlnets: usize,
    out: *mut *mut LcmImages,
) -> LcmStatus {
    // SAFETY: the caller's contract.
    guard(|| unsafe { generate(pipeline, request, std::ptr::null(), controlnets, num_controlnets, out) })
}

/// Replaces the pipeline's LoRAs (those given at load included) with `loras` (none when
/// `num_loras` is 0): every file is checked before any weight changes. Waits for a running
/// generation to finish.
///
/// # Safety
/// `pipeline` comes from [`lcm_pipeline_load`] and is not freed; `loras` is NULL (with `num_loras`
/// 0) or holds `num_loras` entries with NUL-terminated paths.
#[no_mangle]
pub unsafe extern "C" fn lcm_set_loras(
    pipeline: *mut LcmPipeline,
    loras: *const LcmLora,
    num_loras: usize,
) -> LcmStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| invalid("pipeline", "NULL"))?;
        // SAFETY: the caller's contract.
        let specs = unsafe { lora_specs(loras, num_loras, "loras") }?;
        lock(p).set_loras(&specs)?;
        Ok(())
    })
}

/// Prepares `loras` (none when `num_loras` is 0) for [`lcm_use_loras`] on `pipeline`, checking every
/// file as [`lcm_set_loras`] does, without changing the pipeline; on `LCM_OK`, `*out` is the prepared
/// set, else it is set to NULL. A service prepares the adapters it serves once, then switches per
/// request. Waits for a running generation to finish.
///
/// # Safety
/// `pipeline` comes from [`lcm_pipeline_load`] and is not freed; `loras` is NULL (with `num_loras`
/// 0) or holds `num_loras` entries with NUL-terminated paths; `out` points to writable storage for a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn lcm_prepare_loras(
    pipeline: *mut LcmPipeline,
    loras: *const LcmLora,
    num_loras: usize,
    out: *mut *mut LcmPreparedLoras,
) -> LcmStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) }?;
        // SAFETY: the caller's contract.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| invalid("pipeline", "NULL"))?;
        // SAFETY: the caller's contract.
        let specs = unsafe { lora_specs(loras, num_loras, "loras") }?;
        let prepared = lock(p).prepare_loras(&specs)?;
        let prepared = Box::new(LcmPreparedLoras { owner: pipeline as usize, prepared });
        // SAFETY: checked non-NULL above.
        unsafe { *out = Box::into_raw(prepared) };
        Ok(())
    })
}

/// Switches `pipeline` to LoRAs [`lcm_prepare_loras`] prepared on it: on CUDA with runtime LoRAs, one
/// device-to-device copy (no file read, no upload, no allocation). The images equal those after
/// [`lcm_set_loras`] with the same LoRAs. Waits for a running generation to finish.
///
/// # Safety
/// `pipeline` comes from [`lcm_pipeline_load`] and is not freed; `prepared` comes from
/// [`lcm_prepare_loras`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn lcm_use_loras(pipeline: *mut LcmPipeline, prepared: *const LcmPreparedLoras) -> LcmStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| invalid("pipeline", "NULL"))?;
        // SAFETY: the caller's contract.
        let l = unsafe { prepared.as_ref() }.ok_or_else(|| invalid("prepared", "NULL"))?;
        if l.owner != pipeline as usize {
            return Err(invalid("prepared", "prepared by another pipeline (lcm_prepare_loras on this one)"));
        }
        lock(p).use_loras(&l.prepared)?;
        Ok(())
    })
}

/// Frees LoRAs from [`lcm_prepare_loras`] (and their device memory); NULL is ignored. Before or after
/// the pipeline that prepared them, either is safe (the memory holds the device open).
///
/// # Safety
/// `prepared` is NULL or came from `lcm_prepare_loras` and was not freed.
#[no_mangle]
pub unsafe extern "C" fn lcm_free_prepared_loras(prepared: *mut LcmPreparedLoras) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !prepared.is_null() {
            // SAFETY: the caller's contract.
            drop(unsafe { Box::from_raw(prepared) });
        }
    }));
}

/// Stops the generation running on `pipeline` (its `lcm_generate` returns `LCM_ERR_CANCELLED`):
/// between stages, and between steps on the CPU. Safe to call from any thread while `lcm_generate`
/// runs; with no generation running it does nothing (a later generation is not affected).
///
/// # Safety
/// `pipeline` comes from [`lcm_pipeline_load`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn lcm_cancel(pipeline: *mut LcmPipeline) -> LcmStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| invalid("pipeline", "NULL"))?;
        p.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// The message of this thread's last failed call ("" after a call that succeeded). The pointer stays
/// valid until this thread's next lcm call; copy it to keep it.
#[no_mangle]
pub extern "C" fn lcm_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Frees images from [`lcm_generate`]; NULL is ignored.
///
/// # Safety
/// `images` is NULL or came from `lcm_generate` and was not freed.
#[no_mangle]
pub unsafe extern "C" fn lcm_free_images(images: *mut LcmImages) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if images.is_null() {
            return;
        }
        // SAFETY: the caller's contract: both boxes were leaked by lcm_generate.
        unsafe {
            let images = Box::from_raw(images);
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(images.rgb, images.len)));
        }
    }));
}

/// Frees a pipeline and its memory; NULL is ignored. No other call may be using it.
///
/// # Safety
/// `pipeline` is NULL or came from [`lcm_pipeline_load`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn lcm_free_pipeline(pipeline: *mut LcmPipeline) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !pipeline.is_null() {
            // SAFETY: the caller's contract.
            drop(unsafe { Box::from_raw(pipeline) });
        }
    }));
}

/// lcm's version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn lcm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, CString};

    use super::*;

    fn last_error() -> String {
        // SAFETY: lcm_last_error returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(lcm_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_is_a_status_not_an_unwind() {
        let status = guard(|| panic!("boom {}", 7));
        assert_eq!(status, LCM_ERR_PANIC);
        assert!(last_error().contains("boom 7"), "{}", last_error());
        assert_eq!(guard(|| Ok(())), LCM_OK);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn null_arguments_are_named() {
        let mut p: *mut LcmPipeline = std::ptr::dangling_mut();
        // SAFETY: NULL options is what is tested; `out` is valid.
        assert_eq!(unsafe { lcm_pipeline_load(std::ptr::null(), &mut p) }, LCM_ERR_INVALID_ARGUMENT);
        assert!(p.is_null());
        assert_eq!(last_error(), "options: NULL");
        let o = lcm_load_options_default();
        // SAFETY: valid options with a NULL model.
        assert_eq!(unsafe { lcm_pipeline_load(&o, &mut p) }, LCM_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "options.model: NULL");
        let model = CString::new("/no/such/model").unwrap();
        let o = LcmLoadOptions { model: model.as_ptr(), device: LCM_DEVICE_CPU, ..lcm_load_options_default() };
        // SAFETY: valid options.
        assert_eq!(unsafe { lcm_pipeline_load(&o, &mut p) }, LCM_ERR_FILE);
        assert!(last_error().contains("/no/such/model"), "{}", last_error());
        let o = LcmLoadOptions { model: model.as_ptr(), device: 9, ..lcm_load_options_default() };
        // SAFETY: valid options.
        assert_eq!(unsafe { lcm_pipeline_load(&o, &mut p) }, LCM_ERR_INVALID_ARGUMENT);
        assert!(last_error().starts_with("options.device: 9"), "{}", last_error());
        let mut images: *mut LcmImages = std::ptr::dangling_mut();
        let r = lcm_request_default();
        // SAFETY: a NULL pipeline is what is tested.
        assert_eq!(unsafe { lcm_generate(std::ptr::null_mut(), &r, &mut images) }, LCM_ERR_INVALID_ARGUMENT);
        assert!(images.is_null());
        // SAFETY: NULL is accepted.
        unsafe {
            assert_eq!(lcm_cancel(std::ptr::null_mut()), LCM_ERR_INVALID_ARGUMENT);
            lcm_free_images(std::ptr::null_mut());
            lcm_free_pipeline(std::ptr::null_mut());
        }
    }
}
