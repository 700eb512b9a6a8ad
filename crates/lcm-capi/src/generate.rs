//! What every generate entry point does once its arguments are read: the request checked and built
//! (init image, mask, ControlNets), the generation run under the pipeline's lock, the images handed out.

use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions, Spacing};

use super::*;

/// The body of [`lcm_generate`] and [`lcm_generate_controlled`].
///
/// # Safety
/// As [`lcm_generate_controlled`].
pub(crate) unsafe fn generate(
    pipeline: *mut LcmPipeline,
    request: *const LcmRequest,
    mask: *const u8,
    controlnets: *const LcmControlNet,
    num_controlnets: usize,
    out: *mut *mut LcmImages,
) -> Result<(), Failure> {
    // SAFETY: the caller's contract.
    unsafe { clear_out(out) }?;
    // SAFETY: the caller's contract (a live pipeline; shared access, the engine is behind a lock).
    let p = unsafe { pipeline.as_ref() }.ok_or_else(|| invalid("pipeline", "NULL"))?;
    // SAFETY: the caller's contract.
    let r = unsafe { request.as_ref() }.ok_or_else(|| invalid("request", "NULL"))?;
    // SAFETY: the caller's contract.
    let prompt = unsafe { string(r.prompt, "request.prompt") }?.ok_or_else(|| invalid("request.prompt", "NULL"))?;
    // SAFETY: the caller's contract.
    let negative_prompt = unsafe { string(r.negative_prompt, "request.negative_prompt") }?;
    let (width, height) = (r.width as usize, r.height as usize);
    let init_image = if r.init_rgb.is_null() {
        None
    } else {
        if width * height == 0 || width > SizeRule::DEFAULT_MAX || height > SizeRule::DEFAULT_MAX {
            return Err(invalid("request.width/height", format!("{width}x{height}: out of range for init_rgb")));
        }
        // SAFETY: the caller's contract (width·height·3 readable bytes); sizes bounded above.
        let rgb = unsafe { std::slice::from_raw_parts(r.init_rgb, width * height * 3) };
        let init = InitImage::from_rgb8(width, height, rgb, r.strength)?;
        if mask.is_null() {
            Some(init)
        } else {
            // SAFETY: the caller's contract (width·height readable bytes); sizes bounded above.
            let gray = unsafe { std::slice::from_raw_parts(mask, width * height) };
            let masked = init.with_mask_gray8(width, height, gray).map_err(|e| match e {
                lcm_core::Error::Invalid { msg, .. } => invalid("request.mask", msg),
                e => invalid("request.mask", e),
            })?;
            Some(masked)
        }
    };
    if !mask.is_null() && init_image.is_none() {
        return Err(invalid("request.init_rgb", "NULL: inpainting (a mask) needs the image to repaint"));
    }
    let controls = if num_controlnets == 0 {
        Vec::new()
    } else {
        // The control images are resized to the request's size: that size first.
        SizeRule::default().check_size(width, height).map_err(|e| request_error(e, &[]))?;
        // SAFETY: the caller's contract.
        unsafe { control_units(controlnets, num_controlnets, width, height) }?
    };
    let req = Request {
        prompt,
        negative_prompt,
        steps: r.steps as usize,
        guidance_scale: r.guidance_scale,
        seed: r.seed,
        width,
        height,
        num_images: r.num_images as usize,
        controls,
        sampler: None,
        init_image,
        // SAFETY: the caller's contract.
        prompt_syntax: match unsafe { string(r.prompt_syntax, "request.prompt_syntax") }? {
            None => PromptSyntax::Plain,
            Some(s) => PromptSyntax::parse(&s).map_err(|e| invalid("request.prompt_syntax", e))?,
        },
    };
    let mut req = req;
    if req.num_images > MAX_IMAGES {
        return Err(invalid("request.num_images", format!("{}: at most {MAX_IMAGES}", req.num_images)));
    }
    let mut engine = lock(p);
    // SAFETY: the caller's contract.
    req.sampler = unsafe { sampler(r, &engine) }?;
    // A cancel meant for an earlier generation does not stop this one.
    p.cancel.store(false, Ordering::SeqCst);
    let generated =
        engine.generate_with(&req, &mut |_| {}, Some(&p.cancel)).map_err(|e| request_error(e, &req.controls))?;
    drop(engine);
    let count = generated.images.shape[0] as u32;
    let rgb: Box<[u8]> = (0..generated.images.shape[0]).flat_map(|i| generated.rgb8(i)).collect();
    let len = rgb.len();
    let rgb = Box::into_raw(rgb) as *mut u8;
    let images = Box::new(LcmImages { width: r.width, height: r.height, count, rgb, len });
    // SAFETY: checked non-NULL by clear_out.
    unsafe { *out = Box::into_raw(images) };
    Ok(())
}

/// `request.scheduler`, `eta` and `timestep_spacing` as the sampler they ask of `engine`'s model: None
/// when all are unset (the pipeline's); eta or a spacing alone modify the pipeline's sampler.
///
/// # Safety
/// `r`'s strings are NULL or NUL-terminated.
unsafe fn sampler(r: &LcmRequest, engine: &Engine) -> Result<Option<SamplerOptions>, Failure> {
    // SAFETY: the caller's contract.
    let name = unsafe { string(r.scheduler, "request.scheduler") }?;
    // SAFETY: the caller's contract.
    let spacing = unsafe { string(r.timestep_spacing, "request.timestep_spacing") }?;
    if name.is_none() && spacing.is_none() && r.eta.is_nan() {
        return Ok(None);
    }
    let (current, config) = lcm::with_pipeline!(engine, p => (p.sampler(), p.scheduler_config()));
    let mut options = match name.as_deref() {
        None => current,
        Some("auto") => SamplerOptions::new(config.class_kind().ok_or_else(|| {
            let class = config.class_name().unwrap_or("not named");
            invalid("request.scheduler", format!("auto: the model's scheduler is {class}, not one lcm runs"))
        })?),
        Some(name) => SamplerOptions::new(SamplerKind::parse(name).ok_or_else(|| {
            let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
            invalid("request.scheduler", format!("`{name}`: expected one of {}, auto", names.join(", ")))
        })?),
    };
    if !r.eta.is_nan() {
        options.eta = Some(r.eta);
    }
    if let Some(s) = spacing {
        let parsed = Spacing::parse(&s).ok_or_else(|| {
            invalid("request.timestep_spacing", format!("`{s}`: expected leading, trailing or linspace"))
        })?;
        options.timestep_spacing = Some(parsed);
    }
    Ok(Some(options))
}
