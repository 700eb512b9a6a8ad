//! OpenAI's `POST /v1/images/edits`: a multipart form (image, optional mask whose transparent pixels mark
//! the area to edit, prompt and the generations route's extensions) read into an inpainting request.

use super::*;

/// OpenAI's `POST /v1/images/edits` from its `multipart/form-data` body (`content_type` is the
/// request's Content-Type, with the boundary): `image` (a PNG file), `mask` (optional: a PNG with
/// alpha whose fully transparent pixels, alpha 0, mark the area to edit; without it, the image's own
/// fully transparent pixels do, as OpenAI documents), `prompt`, `n`, `size` (absent or the image's
/// own), `response_format` (b64_json), `model`/`user` (accepted, unused); lcm's `seed`, `steps`,
/// `guidance_scale`, `negative_prompt`, `loras` (the JSON array generations takes, as text) and
/// `strength` (default 1), `sampler` (as generations'). Numbers come as form text ("5"). Inpainting: the engine's mask is 255
/// (repaint) where the alpha is 0, else 0.
pub fn parse_edits(
    content_type: Option<&str>,
    body: &[u8],
    limits: &Limits,
    loras: &LoraDir,
) -> Result<Generation, ApiError> {
    use crate::multipart;
    let boundary = multipart::boundary(content_type)?;
    let parts = multipart::parse(body, &boundary)?;
    let mut obj = Map::new();
    let mut files: Vec<(&'static str, &[u8])> = Vec::new();
    for p in &parts {
        // The openai client sends a list of images as `image[]`; lcm takes one.
        let name = p.name.strip_suffix("[]").unwrap_or(&p.name);
        let Some(&known) = EDITS_FIELDS.iter().find(|k| **k == name) else {
            return Err(ApiError::bad(
                &p.name,
                format!("not supported by lcm's OpenAI images edits API (supported: {})", EDITS_FIELDS.join(", ")),
            ));
        };
        if obj.contains_key(known) || files.iter().any(|(k, _)| *k == known) {
            return Err(ApiError::bad(known, "given twice: lcm takes one"));
        }
        match known {
            "image" | "mask" => {
                if !p.data.starts_with(b"\x89PNG\r\n\x1a\n") {
                    return Err(ApiError::bad(
                        known,
                        format!(
                            "not a PNG file ({} bytes{}): expected a PNG{}",
                            p.data.len(),
                            p.content_type.as_deref().map(|c| format!(", sent as {c}")).unwrap_or_default(),
                            if known == "mask" { " with an alpha channel" } else { "" }
                        ),
                    ));
                }
                files.push((known, p.data));
            }
            "prompt" | "negative_prompt" | "size" | "response_format" | "model" | "user" => {
                obj.insert(known.into(), Value::String(p.text()?.to_string()));
            }
            "loras" => {
                let v: Value = serde_json::from_str(p.text()?)
                    .map_err(|e| ApiError::bad("loras", format!("expected a JSON array of {{name, scale}}: {e}")))?;
                obj.insert(known.into(), v);
            }
            _ => {
                // Numbers as form text; anything else stays a string (refused as "expected a number").
                let t = p.text()?.trim();
                let v = serde_json::from_str::<Value>(t)
                    .ok()
                    .filter(Value::is_number)
                    .unwrap_or_else(|| Value::String(t.to_string()));
                obj.insert(known.into(), v);
            }
        }
    }
    let file = |k: &str| files.iter().find(|(n, _)| *n == k).map(|(_, d)| *d);
    let f = Fields { obj: &obj };
    let image = file("image").ok_or_else(|| ApiError::bad("image", "required: the PNG file to edit"))?;
    let prompt = prompt(&f, "prompt", limits, true)?;
    let n = f.uint("n", 1, limits.max_images)?.unwrap_or(1);
    if let Some(fmt) = f.string("response_format", 32)? {
        if fmt != "b64_json" {
            return Err(ApiError::bad(
                "response_format",
                format!("`{fmt}`: only \"b64_json\" (lcm serves no image URLs; it keeps nothing)"),
            ));
        }
    }
    f.string("model", 256)?;
    f.string("user", 256)?;
    let strength = f.float("strength", 0.0, 1.0)?.unwrap_or(1.0);
    if strength <= 0.0 {
        return Err(ApiError::bad("strength", "0: expected a value in (0, 1]"));
    }

    let (w, h, rgb) = crate::png::decode_rgb8(image, limits.size).map_err(|m| ApiError::bad("image", m))?;
    if let Some(s) = f.string("size", 32)? {
        if s != format!("{w}x{h}") {
            return Err(ApiError::bad(
                "size",
                format!("`{s}`: an edit keeps the image's size, {w}x{h} (send size=\"{w}x{h}\" or omit it)"),
            ));
        }
    }
    let alpha_of = |field: &str, bytes: &[u8]| -> Result<Option<Vec<u8>>, ApiError> {
        let (mw, mh, gray, from_alpha) =
            lcm_pipeline::output::decode_png_mask(std::io::Cursor::new(bytes), limits.size.max())
                .map_err(|m| ApiError::bad(field, m))?;
        if (mw, mh) != (w, h) {
            return Err(ApiError::bad(field, format!("{mw}x{mh}: the mask must have the image's size, {w}x{h}")));
        }
        Ok(from_alpha.then_some(gray))
    };
    let (field, alpha) = match file("mask") {
        Some(m) => {
            let alpha = alpha_of("mask", m)?.ok_or_else(|| {
                ApiError::bad(
                    "mask",
                    "has no alpha channel: OpenAI's mask marks the area to edit with fully transparent pixels (alpha \
                     0); send an RGBA or grey+alpha PNG",
                )
            })?;
            ("mask", alpha)
        }
        None => {
            let alpha = alpha_of("image", image)?.ok_or_else(|| {
                ApiError::bad(
                    "mask",
                    "required: without a mask the image's fully transparent pixels (alpha 0) mark the area to edit, \
                     and this image has no alpha channel",
                )
            })?;
            ("image", alpha)
        }
    };
    if !alpha.contains(&0) {
        let msg = "has no fully transparent pixel (alpha 0): nothing to edit (OpenAI's transparent pixels mark the \
                   area to edit)";
        return Err(if field == "mask" {
            ApiError::bad("mask", msg)
        } else {
            ApiError::bad("mask", format!("required: the image {msg}"))
        });
    }
    let gray: Vec<u8> = alpha.iter().map(|&a| if a == 0 { 255 } else { 0 }).collect();
    let init = InitImage::from_rgb8(w, h, &rgb, strength)
        .map_err(|e| ApiError::bad("image", invalid_msg(&e)))?
        .with_mask_gray8(w, h, &gray)
        .map_err(|e| ApiError::bad(field, invalid_msg(&e)))?;
    let seed = f.seed("seed", false)?.unwrap_or_else(random_seed);
    let sampler = super::sampler::openai_sampler(f.string("sampler", 64)?.as_deref(), limits)?;
    let req = Request {
        prompt,
        negative_prompt: f.string("negative_prompt", limits.max_prompt_chars)?,
        steps: f.uint("steps", 1, super::sampler::max_steps(limits, &sampler))?.unwrap_or(4),
        guidance_scale: f.float("guidance_scale", 0.0, MAX_GUIDANCE)?.unwrap_or(1.0),
        seed,
        width: w,
        height: h,
        num_images: n,
        controls: Vec::new(),
        sampler: Some(sampler),
        init_image: Some(init),
        prompt_syntax: PromptSyntax::Plain,
    };
    let loras = lora_list(f.get("loras"), limits, loras)?;
    Ok(Generation { reqs: vec![req], loras, controls: Vec::new() })
}
