//! A1111's img2img inpainting fields: the mask (white = inpaint, or its alpha), its inversion and blur,
//! and the fill/full-resolution options accepted only where they change nothing.

use super::*;

/// A1111 img2img's inpainting fields on `init`: `mask` (a base64 PNG, white = inpaint; an RGBA PNG
/// whose alpha is not all opaque gives its alpha, rounded at 128, as A1111's `create_binary_mask`),
/// `inpainting_mask_invert` (0/1), `mask_blur` (or `mask_blur_x` / `mask_blur_y`; default 4: Pillow's
/// `GaussianBlur` of that radius, [`super::blur`]) before the engine binarises the mask at 0.5;
/// `inpainting_fill` (1, "original"), `inpaint_full_res` (false) and `inpaint_full_res_padding` (any:
/// it acts only with inpaint_full_res) are accepted at the values that change nothing and refused by
/// name otherwise. Without a mask they are checked for type only (nothing is inpainted, so no value
/// changes anything).
pub(super) fn a1111_mask(f: &Fields, init: InitImage, limits: &Limits) -> Result<InitImage, ApiError> {
    let flag = |k: &str| -> Result<Option<bool>, ApiError> {
        match f.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) if v.as_u64() == Some(0) => Ok(Some(false)),
            Some(v) if v.as_u64() == Some(1) => Ok(Some(true)),
            Some(v) => Err(ApiError::bad(k, format!("{v}: expected 0 or 1 (or a boolean)"))),
        }
    };
    let invert = flag("inpainting_mask_invert")?.unwrap_or(false);
    let full_res = flag("inpaint_full_res")?.unwrap_or(false);
    f.uint("inpaint_full_res_padding", 0, 4096)?;
    let fill = f.int("inpainting_fill", 0, 3)?;
    let blur = f.uint("mask_blur", 0, MAX_MASK_BLUR)?;
    let blur_x = f.uint("mask_blur_x", 0, MAX_MASK_BLUR)?;
    let blur_y = f.uint("mask_blur_y", 0, MAX_MASK_BLUR)?;
    let Some(v) = f.get("mask") else { return Ok(init) };
    if let Some(fill) = fill.filter(|&k| k != 1) {
        let what = ["fill", "original", "latent noise", "latent nothing"][fill as usize];
        return Err(ApiError::bad(
            "inpainting_fill",
            format!(
                "{fill} (\"{what}\"): lcm inpaints from the original image's latents, as diffusers does: send 1 \
                 (\"original\")"
            ),
        ));
    }
    if full_res {
        return Err(ApiError::bad(
            "inpaint_full_res",
            "true (\"only masked\"): lcm inpaints the whole picture at its own size: send false (0)",
        ));
    }
    let Value::String(s) = v else {
        return Err(ApiError::bad("mask", format!("expected a base64 PNG string, got {}", kind(v))));
    };
    let bytes = base64_bytes(s, "mask")?;
    let (w, h) = (init.pixels.shape[3], init.pixels.shape[2]);
    let (mw, mh, mut gray) = a1111_mask_gray(&bytes, limits).map_err(|m| ApiError::bad("mask", m))?;
    if (mw, mh) != (w, h) {
        return Err(ApiError::bad("mask", format!("{mw}x{mh}: the mask must have init_images[0]'s size, {w}x{h}")));
    }
    if invert {
        gray.iter_mut().for_each(|g| *g = 255 - *g);
    }
    // `mask_blur` sets both directions (A1111's StableDiffusionProcessingImg2Img); default 4 each.
    let (rx, ry) = match blur {
        Some(b) => (b, b),
        None => (blur_x.unwrap_or(4), blur_y.unwrap_or(4)),
    };
    let gray = crate::blur::gaussian_blur(&gray, w, h, rx as f32, ry as f32);
    init.with_mask_gray8(w, h, &gray).map_err(|e| ApiError::bad("mask", invalid_msg(&e)))
}

/// A1111's mask as 8-bit gray: an RGBA PNG whose alpha is not all 255 gives its alpha (> 128 → 255,
/// else 0); any other PNG its luma (Pillow's `convert("L")`).
pub(super) fn a1111_mask_gray(bytes: &[u8], limits: &Limits) -> Result<(usize, usize, Vec<u8>), String> {
    let max = limits.size.max();
    // IHDR's colour type: 6 is RGBA (Pillow's mode "RGBA"; grey+alpha opens as "LA", which A1111 converts to L).
    let rgba = bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[25] == 6;
    let (w, h, alpha, from_alpha) = lcm_pipeline::output::decode_png_mask(std::io::Cursor::new(bytes), max)?;
    if rgba && from_alpha && alpha.iter().any(|&a| a != 255) {
        return Ok((w, h, alpha.iter().map(|&a| if a > 128 { 255 } else { 0 }).collect()));
    }
    let (w, h, rgb) = lcm_pipeline::output::decode_png_rgb8(std::io::Cursor::new(bytes), max)?;
    let luma = rgb
        .chunks_exact(3)
        .map(|p| ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8)
        .collect();
    Ok((w, h, luma))
}

/// A1111 fields lcm accepts only at the value that changes nothing (clients send them by habit).
pub(super) fn a1111_noop(field: &str, v: &Value) -> Option<bool> {
    let ok = match field {
        "n_iter" => v.as_u64() == Some(1),
        "send_images" => v.as_bool() == Some(true),
        "save_images" | "restore_faces" | "tiling" | "enable_hr" | "do_not_save_samples" | "do_not_save_grid" => {
            v.as_bool() == Some(false)
        }
        "subseed_strength" => v.as_f64() == Some(0.0),
        // k-diffusion's churn and noise scale: none at these values (s_tmin/s_tmax act only with churn).
        "s_churn" => v.as_f64() == Some(0.0),
        "s_noise" => v.as_f64() == Some(1.0),
        "s_tmin" | "s_tmax" => v.is_null() || v.as_f64().is_some(),
        "styles" | "script_args" => v.as_array().is_some_and(|a| a.is_empty()),
        "override_settings" => v.as_object().is_some_and(|o| o.is_empty()),
        _ => return None,
    };
    Some(ok)
}
