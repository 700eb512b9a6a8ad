//! Request parsing for both HTTP APIs: OpenAI's `POST /v1/images/generations` and A1111's
//! `POST /sdapi/v1/txt2img` / `img2img`. Bodies are read as untyped JSON and each field is taken by
//! hand, so that every refusal names the field (`size`, `loras[1].name`, `init_images[0]`) and what it
//! accepts; fields an API defines but lcm cannot honour are refused by name, never ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lcm_core::Error;
use lcm_pipeline::control_image::ControlPreprocess;
use lcm_pipeline::spec::{ControlUnit, Field, InitImage, Request, SizeRule, MAX_CONTROLNETS};
use serde_json::{Map, Value};

use super::controlnets::ControlNetDir;
use super::error::ApiError;
use super::loras::{LoraChoice, LoraDir};

/// Bounds on what one request may ask for (all checked before anything is queued).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request body, bytes (a base64 init image included).
    pub max_body_bytes: usize,
    /// Prompt and negative prompt, characters each (CLIP reads 75 tokens; this bounds the tokenizer).
    pub max_prompt_chars: usize,
    /// Image width and height: the pipeline's size rule, up to the server's `--max-size`.
    pub size: SizeRule,
    /// Images per request (`n`, `batch_size`).
    pub max_images: usize,
    /// Steps per request: the model's `original_inference_steps`.
    pub max_steps: usize,
    /// LoRAs per request.
    pub max_loras: usize,
}

/// Guidance scales above this are refused (LCMs use 1–2 with the LoRA, up to ~15 as embeddings).
pub const MAX_GUIDANCE: f32 = 50.0;
/// |scale| of one LoRA.
pub const MAX_LORA_SCALE: f32 = 10.0;
/// |weight| of one ControlNet unit.
pub const MAX_CONTROL_WEIGHT: f32 = 10.0;

/// One parsed generation: the pipeline requests it expands to (A1111's `batch_size` is one request
/// per image, seeds seed, seed+1, …; OpenAI's `n` is one request of n images from one seed), the
/// LoRAs they run with and, per ControlNet of its requests (`Request::controls`, in order), where the
/// unit came from.
#[derive(Debug, Clone)]
pub struct Generation {
    pub reqs: Vec<Request>,
    pub loras: Vec<LoraChoice>,
    pub controls: Vec<ControlChoice>,
}

/// A ControlNet unit a request chose: the name and file of its ControlNet, the JSON path of the unit
/// (`alwayson_scripts.controlnet.args[1]`) and its image's key, for errors, and its settings, for the
/// answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlChoice {
    pub name: String,
    pub path: std::path::PathBuf,
    pub field: String,
    pub image_key: &'static str,
    pub module: String,
    pub weight: f32,
    pub start: f64,
    pub end: f64,
}

impl Generation {
    /// Images over all its requests.
    pub fn images(&self) -> usize {
        self.reqs.iter().map(|r| r.num_images).sum()
    }
}

/// The endpoints that generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's `POST /v1/images/generations`.
    OpenAi,
    /// A1111's `POST /sdapi/v1/txt2img`.
    Txt2Img,
    /// A1111's `POST /sdapi/v1/img2img`.
    Img2Img,
    /// OpenAI's `POST /v1/images/edits` (multipart/form-data: [`parse_edits`]).
    Edits,
}

/// One request body for `api`, parsed and checked against `limits` and the LoRAs of `loras` as the
/// server does before queueing it (what fuzz/fuzz_targets/serve_request.rs fuzzes), on a server
/// without ControlNets; the error is the 4xx answer, naming the field.
pub fn parse_request(api: Api, body: &[u8], limits: &Limits, loras: &LoraDir) -> Result<Generation, ApiError> {
    parse_request_with(api, body, limits, loras, &ControlNetDir::default())
}

/// [`parse_request`] on a server offering the ControlNets of `controlnets` (A1111's
/// `alwayson_scripts.controlnet`): their control images decoded, preprocessed and resized here.
pub fn parse_request_with(
    api: Api,
    body: &[u8],
    limits: &Limits,
    loras: &LoraDir,
    controlnets: &ControlNetDir,
) -> Result<Generation, ApiError> {
    if api == Api::Edits {
        return Err(ApiError::bad("content-type", "/v1/images/edits takes multipart/form-data: see parse_edits"));
    }
    let obj = parse_object(body)?;
    match api {
        Api::Edits => unreachable!("handled above"),
        Api::OpenAi => openai(&obj, limits, loras),
        Api::Txt2Img => a1111(&obj, limits, loras, controlnets, false),
        Api::Img2Img => a1111(&obj, limits, loras, controlnets, true),
    }
}

/// A seed when the client gives none: distinct per call, short enough for any JSON reader (< 2^53).
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    // splitmix64 of time, pid and a counter.
    let mut z = t ^ ((std::process::id() as u64) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 11
}

/// The body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad("body", format!("not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad("body", format!("expected a JSON object, got {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to a JSON object's fields; `null` counts as absent (clients send it for "default").
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, f: &str) -> Option<&'a Value> {
        self.obj.get(f).filter(|v| !v.is_null())
    }

    fn string(&self, f: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
        match self.get(f) {
            None => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
            Some(Value::String(s)) => {
                Err(ApiError::bad(f, format!("{} characters: at most {max_chars} accepted", s.chars().count())))
            }
            Some(v) => Err(ApiError::bad(f, format!("expected a string, got {}", kind(v)))),
        }
    }

    fn int(&self, f: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(f) else { return Ok(None) };
        let n = match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)),
            _ => return Err(ApiError::bad(f, format!("expected an integer, got {}", kind(v)))),
        };
        match n {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(_) => Err(ApiError::bad(f, format!("{v}: expected an integer in {lo}..={hi}"))),
            None => Err(ApiError::bad(f, format!("{v}: expected an integer in {lo}..={hi}"))),
        }
    }

    fn uint(&self, f: &str, lo: usize, hi: usize) -> Result<Option<usize>, ApiError> {
        Ok(self.int(f, lo as i64, hi as i64)?.map(|n| n as usize))
    }

    fn seed(&self, f: &str, minus_one_is_random: bool) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(f) else { return Ok(None) };
        let Value::Number(n) = v else { return Err(ApiError::bad(f, format!("expected an integer, got {}", kind(v)))) };
        match (n.as_u64(), n.as_i64()) {
            (Some(s), _) => Ok(Some(s)),
            (None, Some(-1)) if minus_one_is_random => Ok(None),
            _ => Err(ApiError::bad(
                f,
                format!(
                    "{v}: expected an integer in 0..=18446744073709551615{}",
                    if minus_one_is_random { " (or -1 for a random seed)" } else { "" }
                ),
            )),
        }
    }

    fn float(&self, f: &str, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(f) else { return Ok(None) };
        match v.as_f64() {
            Some(x) if x.is_finite() && (lo as f64..=hi as f64).contains(&x) => Ok(Some(x as f32)),
            Some(_) => Err(ApiError::bad(f, format!("{v}: expected a number in {lo}..={hi}"))),
            None => Err(ApiError::bad(f, format!("expected a number, got {}", kind(v)))),
        }
    }
}

/// Refuses fields outside `known`, naming the first (sorted, so the answer is stable).
fn only_known(obj: &Map<String, Value>, known: &[&str], api: &str) -> Result<(), ApiError> {
    let mut unknown: Vec<&String> = obj.keys().filter(|k| !known.contains(&k.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(k) => {
            Err(ApiError::bad(k.as_str(), format!("not supported by lcm's {api} (supported: {})", known.join(", "))))
        }
    }
}

fn size_checked(f: &str, v: usize, limits: &Limits) -> Result<usize, ApiError> {
    if !limits.size.accepts(v) {
        return Err(ApiError::bad(f, format!("{v}: expected {}", limits.size)));
    }
    Ok(v)
}

fn prompt(fields: &Fields, f: &str, limits: &Limits, required: bool) -> Result<String, ApiError> {
    match fields.string(f, limits.max_prompt_chars)? {
        Some(p) => Ok(p),
        None if required => Err(ApiError::bad(f, "required (a string; it may be empty)")),
        None => Ok(String::new()),
    }
}

/// Fields of `POST /v1/images/generations`: OpenAI's, then lcm's own.
const OPENAI_FIELDS: &[&str] = &[
    "prompt",
    "n",
    "size",
    "response_format",
    "model",
    "user",
    "seed",
    "steps",
    "guidance_scale",
    "negative_prompt",
    "loras",
];

/// OpenAI's images API request: `prompt`, `n`, `size` "WxH", `response_format` (b64_json), `model`
/// and `user` (accepted, not used: one model is served); lcm's `seed`, `steps`, `guidance_scale`,
/// `negative_prompt`, `loras: [{name, scale}]`.
pub fn openai(obj: &Map<String, Value>, limits: &Limits, loras: &LoraDir) -> Result<Generation, ApiError> {
    only_known(obj, OPENAI_FIELDS, "OpenAI images API")?;
    let f = Fields { obj };
    let prompt = prompt(&f, "prompt", limits, true)?;
    let n = f.uint("n", 1, limits.max_images)?.unwrap_or(1);
    let (width, height) = match f.string("size", 32)? {
        None => (512.min(limits.size.max()), 512.min(limits.size.max())),
        Some(s) => {
            let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
            let Some((w, h)) = parsed else {
                return Err(ApiError::bad("size", format!("`{s}`: expected \"WIDTHxHEIGHT\", e.g. \"512x512\"")));
            };
            (size_checked("size", w, limits)?, size_checked("size", h, limits)?)
        }
    };
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
    let seed = f.seed("seed", false)?.unwrap_or_else(random_seed);
    let req = Request {
        prompt,
        negative_prompt: f.string("negative_prompt", limits.max_prompt_chars)?,
        steps: f.uint("steps", 1, limits.max_steps)?.unwrap_or(4),
        guidance_scale: f.float("guidance_scale", 0.0, MAX_GUIDANCE)?.unwrap_or(1.0),
        seed,
        width,
        height,
        num_images: n,
        controls: Vec::new(),
        init_image: None,
    };
    let loras = lora_list(f.get("loras"), limits, loras)?;
    Ok(Generation { reqs: vec![req], loras, controls: Vec::new() })
}

/// Form fields of `POST /v1/images/edits`: OpenAI's, then lcm's own.
const EDITS_FIELDS: &[&str] = &[
    "image",
    "mask",
    "prompt",
    "n",
    "size",
    "response_format",
    "model",
    "user",
    "seed",
    "steps",
    "guidance_scale",
    "negative_prompt",
    "loras",
    "strength",
];

/// OpenAI's `POST /v1/images/edits` from its `multipart/form-data` body (`content_type` is the
/// request's Content-Type, with the boundary): `image` (a PNG file), `mask` (optional: a PNG with
/// alpha whose fully transparent pixels, alpha 0, mark the area to edit; without it, the image's own
/// fully transparent pixels do, as OpenAI documents), `prompt`, `n`, `size` (absent or the image's
/// own), `response_format` (b64_json), `model`/`user` (accepted, unused); lcm's `seed`, `steps`,
/// `guidance_scale`, `negative_prompt`, `loras` (the JSON array generations takes, as text) and
/// `strength` (default 1). Numbers come as form text ("5"). Inpainting: the engine's mask is 255
/// (repaint) where the alpha is 0, else 0.
pub fn parse_edits(
    content_type: Option<&str>,
    body: &[u8],
    limits: &Limits,
    loras: &LoraDir,
) -> Result<Generation, ApiError> {
    use super::multipart;
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

    let (w, h, rgb) = super::png::decode_rgb8(image, limits.size).map_err(|m| ApiError::bad("image", m))?;
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
    let req = Request {
        prompt,
        negative_prompt: f.string("negative_prompt", limits.max_prompt_chars)?,
        steps: f.uint("steps", 1, limits.max_steps)?.unwrap_or(4),
        guidance_scale: f.float("guidance_scale", 0.0, MAX_GUIDANCE)?.unwrap_or(1.0),
        seed,
        width: w,
        height: h,
        num_images: n,
        controls: Vec::new(),
        init_image: Some(init),
    };
    let loras = lora_list(f.get("loras"), limits, loras)?;
    Ok(Generation { reqs: vec![req], loras, controls: Vec::new() })
}

/// `loras: [{name, scale}]`: names from `--lora-dir` only (never paths).
fn lora_list(v: Option<&Value>, limits: &Limits, dir: &LoraDir) -> Result<Vec<LoraChoice>, ApiError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Array(items) = v else {
        return Err(ApiError::bad("loras", format!("expected an array of {{name, scale}}, got {}", kind(v))));
    };
    if items.len() > limits.max_loras {
        return Err(ApiError::bad("loras", format!("{} LoRAs: at most {} per request", items.len(), limits.max_loras)));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(ApiError::bad(format!("loras[{i}]"), format!("expected {{name, scale}}, got {}", kind(item))));
        };
        if let Some(k) = obj.keys().find(|k| !["name", "scale"].contains(&k.as_str())) {
            return Err(ApiError::bad(format!("loras[{i}].{k}"), "not supported (a LoRA has `name` and `scale`)"));
        }
        let f = Fields { obj };
        let field = format!("loras[{i}].name");
        let name = f.string("name", 256).map_err(|e| e.with_field(&field))?;
        let name = name.ok_or_else(|| ApiError::bad(&field, "required: a LoRA's name in --lora-dir"))?;
        let scale = f
            .float("scale", -MAX_LORA_SCALE, MAX_LORA_SCALE)
            .map_err(|e| e.with_field(&format!("loras[{i}].scale")))?
            .unwrap_or(1.0);
        out.push(dir.choose(&name, scale).map_err(|e| e.with_field(&field))?);
    }
    Ok(out)
}

/// A1111 fields lcm accepts only at the value that changes nothing (clients send them by habit).
fn a1111_noop(field: &str, v: &Value) -> Option<bool> {
    let ok = match field {
        "n_iter" => v.as_u64() == Some(1),
        "send_images" => v.as_bool() == Some(true),
        "save_images" | "restore_faces" | "tiling" | "enable_hr" | "do_not_save_samples" | "do_not_save_grid" => {
            v.as_bool() == Some(false)
        }
        "subseed_strength" => v.as_f64() == Some(0.0),
        "sampler_name" | "sampler_index" => v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("lcm")),
        "styles" | "script_args" => v.as_array().is_some_and(|a| a.is_empty()),
        "override_settings" => v.as_object().is_some_and(|o| o.is_empty()),
        _ => return None,
    };
    Some(ok)
}

const A1111_TXT2IMG: &[&str] =
    &["prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size", "alwayson_scripts"];
const A1111_IMG2IMG: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_size",
    "alwayson_scripts",
    "init_images",
    "denoising_strength",
    "mask",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
];

/// The largest `mask_blur` accepted (A1111's slider goes to 64).
pub const MAX_MASK_BLUR: usize = 64;

/// A1111's `/sdapi/v1/txt2img` (`img2img` when `img2img`): `prompt` (with `<lora:NAME:SCALE>` tags
/// naming LoRAs in `--lora-dir`, as A1111 does), `negative_prompt`, `seed` (-1: random), `steps`,
/// `cfg_scale`, `width`, `height`, `batch_size` (images with seeds seed, seed+1, …, as A1111's
/// `all_seeds`); img2img: `init_images` (one base64 PNG, its size the output's) and
/// `denoising_strength`; ControlNets of `controlnets` in `alwayson_scripts.controlnet.args`
/// ([`control_units`]).
pub fn a1111(
    obj: &Map<String, Value>,
    limits: &Limits,
    loras: &LoraDir,
    controlnets: &ControlNetDir,
    img2img: bool,
) -> Result<Generation, ApiError> {
    let known = if img2img { A1111_IMG2IMG } else { A1111_TXT2IMG };
    let api = if img2img { "A1111 img2img API" } else { "A1111 txt2img API" };
    let mut keys: Vec<&String> = obj.keys().filter(|k| !known.contains(&k.as_str())).collect();
    keys.sort();
    for k in keys {
        match a1111_noop(k, &obj[k.as_str()]) {
            Some(true) => {}
            Some(false) => {
                return Err(ApiError::bad(
                    k.as_str(),
                    format!("{}: lcm accepts this field only at its no-op value", obj[k.as_str()]),
                ))
            }
            None => only_known(&Map::from_iter([(k.clone(), Value::Null)]), known, api)?,
        }
    }
    let f = Fields { obj };
    let (prompt, loras) = lora_tags(&prompt(&f, "prompt", limits, false)?, limits, loras)?;
    let batch = f.uint("batch_size", 1, limits.max_images)?.unwrap_or(1);
    let seed = f.seed("seed", true)?.unwrap_or_else(random_seed);
    let mut width = f.uint("width", 0, usize::MAX >> 1)?.map(|w| size_checked("width", w, limits)).transpose()?;
    let mut height = f.uint("height", 0, usize::MAX >> 1)?.map(|h| size_checked("height", h, limits)).transpose()?;
    let init = if img2img {
        let strength = f.float("denoising_strength", 0.0, 1.0)?.unwrap_or(0.75);
        if strength <= 0.0 {
            return Err(ApiError::bad("denoising_strength", "0: expected a value in (0, 1]"));
        }
        let (w, h, rgb) = init_image(f.get("init_images"), limits)?;
        for (field, given, actual) in [("width", width, w), ("height", height, h)] {
            if given.is_some_and(|g| g != actual) {
                return Err(ApiError::bad(
                    field,
                    format!(
                        "{} differs from init_images[0]'s {actual}; lcm keeps the image's size (resize it, or \
                         omit {field})",
                        given.unwrap_or(0)
                    ),
                ));
            }
        }
        (width, height) = (Some(w), Some(h));
        let init =
            InitImage::from_rgb8(w, h, &rgb, strength).map_err(|e| ApiError::bad("init_images[0]", e.to_string()))?;
        Some(a1111_mask(&f, init, limits)?)
    } else {
        None
    };
    let negative_prompt = f.string("negative_prompt", limits.max_prompt_chars)?;
    let steps = f.uint("steps", 1, limits.max_steps)?.unwrap_or(4);
    let guidance_scale = f.float("cfg_scale", 0.0, MAX_GUIDANCE)?.unwrap_or(1.0);
    let width = width.unwrap_or(512.min(limits.size.max()));
    let height = height.unwrap_or(512.min(limits.size.max()));
    let (controls, choices) = match f.get("alwayson_scripts") {
        None => (Vec::new(), Vec::new()),
        Some(scripts) => alwayson_scripts(scripts, limits, controlnets, width, height)?,
    };
    let base = Request {
        prompt,
        negative_prompt,
        steps,
        guidance_scale,
        seed,
        width,
        height,
        num_images: 1,
        controls,
        init_image: init,
    };
    let reqs = (0..batch as u64).map(|i| Request { seed: seed.wrapping_add(i), ..base.clone() }).collect();
    Ok(Generation { reqs, loras, controls: choices })
}

/// A1111 img2img's inpainting fields on `init`: `mask` (a base64 PNG, white = inpaint; an RGBA PNG
/// whose alpha is not all opaque gives its alpha, rounded at 128, as A1111's `create_binary_mask`),
/// `inpainting_mask_invert` (0/1), `mask_blur` (or `mask_blur_x` / `mask_blur_y`; default 4: Pillow's
/// `GaussianBlur` of that radius, [`super::blur`]) before the engine binarises the mask at 0.5;
/// `inpainting_fill` (1, "original"), `inpaint_full_res` (false) and `inpaint_full_res_padding` (any:
/// it acts only with inpaint_full_res) are accepted at the values that change nothing and refused by
/// name otherwise. Without a mask they are checked for type only (nothing is inpainted, so no value
/// changes anything).
fn a1111_mask(f: &Fields, init: InitImage, limits: &Limits) -> Result<InitImage, ApiError> {
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
    let gray = super::blur::gaussian_blur(&gray, w, h, rx as f32, ry as f32);
    init.with_mask_gray8(w, h, &gray).map_err(|e| ApiError::bad("mask", invalid_msg(&e)))
}

/// A1111's mask as 8-bit gray: an RGBA PNG whose alpha is not all 255 gives its alpha (> 128 → 255,
/// else 0); any other PNG its luma (Pillow's `convert("L")`).
fn a1111_mask_gray(bytes: &[u8], limits: &Limits) -> Result<(usize, usize, Vec<u8>), String> {
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

/// A1111's prompt syntax for LoRAs: `<lora:NAME>` or `<lora:NAME:SCALE>`, removed from the prompt.
pub fn lora_tags(prompt: &str, limits: &Limits, dir: &LoraDir) -> Result<(String, Vec<LoraChoice>), ApiError> {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<lora:") {
        text.push_str(&rest[..at]);
        let tag = &rest[at + 6..];
        let Some(end) = tag.find('>') else {
            return Err(ApiError::bad("prompt", "a `<lora:` tag without its `>`"));
        };
        let (name, scale) = match tag[..end].rsplit_once(':') {
            Some((n, s)) => match s.trim().parse::<f32>() {
                Ok(v) if v.is_finite() && v.abs() <= MAX_LORA_SCALE => (n, v),
                _ => {
                    return Err(ApiError::bad(
                        "prompt",
                        format!("<lora:{}>: the scale must be a number in ±{MAX_LORA_SCALE}", &tag[..end]),
                    ))
                }
            },
            None => (&tag[..end], 1.0),
        };
        loras.push(dir.choose(name.trim(), scale).map_err(|e| e.with_field("prompt"))?);
        if loras.len() > limits.max_loras {
            return Err(ApiError::bad("prompt", format!("more than {} <lora:…> tags", limits.max_loras)));
        }
        rest = &tag[end + 1..];
    }
    text.push_str(rest);
    Ok((text, loras))
}

/// The bytes of a base64 string (a `data:…;base64,` prefix is allowed), refusals naming `field`.
fn base64_bytes(s: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    let b64 = match s.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(";base64,")
            .map(|(_, d)| d)
            .ok_or_else(|| ApiError::bad(field, "a data: URL without `;base64,`"))?,
        None => s,
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::bad(field, format!("not valid base64: {e}")))
}

/// `init_images`: exactly one base64 PNG (a `data:image/png;base64,` prefix is allowed), its sides
/// multiples of 8 within the size limit, checked from the header before any pixel is decoded.
fn init_image(v: Option<&Value>, limits: &Limits) -> Result<(usize, usize, Vec<u8>), ApiError> {
    const F: &str = "init_images";
    let items = match v {
        None => return Err(ApiError::bad(F, "required for img2img: an array with one base64 PNG")),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad(F, format!("expected an array of base64 strings, got {}", kind(other))))
        }
    };
    let [item] = items.as_slice() else {
        return Err(ApiError::bad(F, format!("{} images: lcm takes exactly one", items.len())));
    };
    const F0: &str = "init_images[0]";
    let Value::String(s) = item else {
        return Err(ApiError::bad(F0, format!("expected a base64 string, got {}", kind(item))));
    };
    let bytes = base64_bytes(s, F0)?;
    super::png::decode_rgb8(&bytes, limits.size).map_err(|m| ApiError::bad(F0, m))
}

/// `alwayson_scripts`: `{}`, or `{"controlnet": {"args": [UNIT, …]}}` (the script's name in any case,
/// as A1111 matches it); any other script is refused by name.
fn alwayson_scripts(
    v: &Value,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(Vec<ControlUnit>, Vec<ControlChoice>), ApiError> {
    const F: &str = "alwayson_scripts";
    let Value::Object(scripts) = v else {
        return Err(ApiError::bad(
            F,
            format!("expected an object of scripts, {{\"controlnet\": {{\"args\": [...]}}}}, got {}", kind(v)),
        ));
    };
    let mut keys: Vec<&String> = scripts.keys().collect();
    keys.sort();
    let mut out = (Vec::new(), Vec::new());
    let mut seen = false;
    for k in keys {
        let field = format!("{F}.{k}");
        if !k.eq_ignore_ascii_case("controlnet") {
            return Err(ApiError::bad(
                &field,
                "not supported by lcm (the one always-on script it runs is `controlnet`)",
            ));
        }
        if std::mem::replace(&mut seen, true) {
            return Err(ApiError::bad(&field, "the controlnet script twice (its name in two spellings)"));
        }
        let script = &scripts[k.as_str()];
        if script.is_null() {
            continue;
        }
        let Value::Object(o) = script else {
            return Err(ApiError::bad(
                &field,
                format!("expected {{\"args\": [ControlNet units]}}, got {}", kind(script)),
            ));
        };
        if let Some(key) = o.keys().filter(|key| *key != "args").min() {
            return Err(ApiError::bad(format!("{field}.{key}"), "not supported (the script takes `args`)"));
        }
        let args_field = format!("{field}.args");
        out = match o.get("args") {
            None | Some(Value::Null) => (Vec::new(), Vec::new()),
            Some(Value::Array(args)) => control_units(args, &args_field, limits, dir, width, height)?,
            Some(other) => {
                return Err(ApiError::bad(
                    &args_field,
                    format!("expected an array of ControlNet units, got {}", kind(other)),
                ))
            }
        };
    }
    Ok(out)
}

/// The keys of an A1111 ControlNet unit lcm reads (null values count as absent, for any key).
const CONTROL_UNIT_KEYS: &[&str] = &[
    "enabled",
    "image",
    "input_image",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "module",
    "threshold_a",
    "threshold_b",
    "resize_mode",
    "pixel_perfect",
    "processor_res",
    "control_mode",
    "low_vram",
    "lowvram",
    "guessmode",
    "save_detected_map",
];

/// The A1111 ControlNet extension's units (`args`, whose JSON path is `field`) for a `width`x`height`
/// output: the enabled ones (`enabled` defaults to true; a disabled unit is skipped whole, as A1111
/// does), at most [`MAX_CONTROLNETS`], as the pipeline's [`ControlUnit`]s.
fn control_units(
    args: &[Value],
    field: &str,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(Vec<ControlUnit>, Vec<ControlChoice>), ApiError> {
    let mut units = Vec::new();
    let mut choices = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(obj) = arg else {
            return Err(ApiError::bad(
                &at,
                format!("expected a ControlNet unit, {{\"image\": PNG, \"model\": NAME, …}}, got {}", kind(arg)),
            ));
        };
        match obj.get("enabled") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => continue,
            Some(v) => {
                return Err(ApiError::bad(format!("{at}.enabled"), format!("expected a boolean, got {}", kind(v))))
            }
        }
        if dir.dir.is_none() {
            return Err(ApiError::bad(
                &at,
                "ControlNet units need a server started with --controlnet-dir (this one offers no ControlNets)",
            ));
        }
        if units.len() == MAX_CONTROLNETS {
            return Err(ApiError::bad(
                field,
                format!("more than {MAX_CONTROLNETS} enabled units: at most {MAX_CONTROLNETS}"),
            ));
        }
        let (unit, choice) = control_unit(obj, &at, limits, dir, width, height)?;
        units.push(unit);
        choices.push(choice);
    }
    Ok((units, choices))
}

/// A number in `lo..=hi` as f64 (`guidance_start`/`guidance_end` are compared with i/n as diffusers
/// compares Python floats, so they are not rounded to f32 on the way).
fn f64_in(f: &Fields, key: &str, at: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    let Some(v) = f.get(key) else { return Ok(None) };
    match v.as_f64() {
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
        Some(_) => Err(ApiError::bad(format!("{at}.{key}"), format!("{v}: expected a number in {lo}..={hi}"))),
        None => Err(ApiError::bad(format!("{at}.{key}"), format!("expected a number, got {}", kind(v)))),
    }
}

/// A boolean, or a refusal naming `at.key`.
fn bool_at(f: &Fields, key: &str, at: &str) -> Result<Option<bool>, ApiError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad(format!("{at}.{key}"), format!("expected a boolean, got {}", kind(v)))),
    }
}

/// One enabled unit (`at` its JSON path).
fn control_unit(
    obj: &Map<String, Value>,
    at: &str,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(ControlUnit, ControlChoice), ApiError> {
    let key_at = |k: &str| format!("{at}.{k}");
    let mut unknown: Vec<&String> =
        obj.iter().filter(|(k, v)| !v.is_null() && !CONTROL_UNIT_KEYS.contains(&k.as_str())).map(|(k, _)| k).collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        return Err(ApiError::bad(
            key_at(k),
            format!("not supported by lcm's ControlNet units (supported: {})", CONTROL_UNIT_KEYS.join(", ")),
        ));
    }
    let f = Fields { obj };

    // The model, by name: never a path.
    let model = f.string("model", 256).map_err(|e| e.with_field(&key_at("model")))?;
    let model = model.ok_or_else(|| {
        ApiError::bad(
            key_at("model"),
            "required: a ControlNet's name from --controlnet-dir (GET /controlnet/model_list)",
        )
    })?;
    let (name, path) = dir.choose(&model).map_err(|m| ApiError::bad(key_at("model"), m))?;

    let weight = f
        .float("weight", -MAX_CONTROL_WEIGHT, MAX_CONTROL_WEIGHT)
        .map_err(|e| e.with_field(&key_at("weight")))?
        .unwrap_or(1.0);
    let start = f64_in(&f, "guidance_start", at, 0.0, 1.0)?.unwrap_or(0.0);
    if start >= 1.0 {
        return Err(ApiError::bad(key_at("guidance_start"), format!("{start}: expected a value in [0, 1)")));
    }
    let end = f64_in(&f, "guidance_end", at, 0.0, 1.0)?.unwrap_or(1.0);
    if end <= start {
        return Err(ApiError::bad(
            key_at("guidance_end"),
            format!("{end}: expected a value in ({start}, 1] (after guidance_start)"),
        ));
    }

    // The preprocessor and its thresholds (A1111's threshold_a / threshold_b; -1: the default).
    let module = f.string("module", 64).map_err(|e| e.with_field(&key_at("module")))?;
    let module = module.unwrap_or_else(|| "none".into());
    let pre = match module.to_ascii_lowercase().as_str() {
        "none" => {
            // Unused without a preprocessor (A1111 sends its slider values anyway): numbers only.
            for k in ["threshold_a", "threshold_b"] {
                f64_in(&f, k, at, f64::MIN, f64::MAX)?;
            }
            ControlPreprocess::None
        }
        "canny" => {
            let threshold = |k: &str, default: f64| -> Result<f64, ApiError> {
                match f64_in(&f, k, at, f64::MIN, f64::MAX)? {
                    None | Some(-1.0) => Ok(default),
                    Some(t) if (0.0..=255.0).contains(&t) => Ok(t),
                    Some(t) => Err(ApiError::bad(
                        key_at(k),
                        format!("{t}: expected a Canny threshold in 0..=255 (or -1 for {default})"),
                    )),
                }
            };
            ControlPreprocess::Canny { low: threshold("threshold_a", 100.0)?, high: threshold("threshold_b", 200.0)? }
        }
        _ => {
            let shown: String = module.chars().take(64).collect();
            return Err(ApiError::bad(
                key_at("module"),
                format!(
                    "`{shown}`: lcm's preprocessors are {} (GET /controlnet/module_list); preprocess the image \
                     yourself and send module \"none\"",
                    super::controlnets::MODULES.join(", ")
                ),
            ));
        }
    };
    let canny = matches!(pre, ControlPreprocess::Canny { .. });

    // Settings lcm accepts only where they change nothing.
    match f.get("control_mode") {
        None => {}
        Some(v) if v.as_u64() == Some(0) || v.as_str() == Some("Balanced") => {}
        Some(v) => {
            return Err(ApiError::bad(
                key_at("control_mode"),
                format!(
                    "{v}: lcm runs ControlNets as diffusers does, A1111's \"Balanced\" (0); the prompt- or \
                     ControlNet-weighted modes are not supported"
                ),
            ))
        }
    }
    if bool_at(&f, "guessmode", at)? == Some(true) {
        return Err(ApiError::bad(key_at("guessmode"), "true: guess mode is not supported"));
    }
    if bool_at(&f, "save_detected_map", at)? == Some(true) {
        return Err(ApiError::bad(
            key_at("save_detected_map"),
            "true: lcm returns the generated images only, never the preprocessed map",
        ));
    }
    // A memory hint: the images do not depend on it.
    bool_at(&f, "low_vram", at)?;
    bool_at(&f, "lowvram", at)?;

    // The image, at any size within --max-size.
    let (image_key, v) = match (f.get("image"), f.get("input_image")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                key_at("input_image"),
                "give `image` or `input_image` (its older name), not both",
            ))
        }
        (Some(v), None) => ("image", v),
        (None, Some(v)) => ("input_image", v),
        (None, None) => return Err(ApiError::bad(key_at("image"), "required: the control image, a base64 PNG")),
    };
    let image_field = key_at(image_key);
    let Value::String(s) = v else {
        return Err(ApiError::bad(&image_field, format!("expected a base64 PNG string, got {}", kind(v))));
    };
    let bytes = base64_bytes(s, &image_field)?;
    let (w, h, rgb) =
        super::png::decode_control_rgb8(&bytes, limits.size).map_err(|m| ApiError::bad(&image_field, m))?;

    let same_size = (w, h) == (width, height);
    let same_aspect = w * height == h * width;
    if let Some(v) = f.get("resize_mode") {
        let mode = match (v.as_u64(), v.as_str()) {
            (Some(0), _) | (_, Some("Just Resize")) => 0,
            (Some(1), _) | (_, Some("Crop and Resize" | "Inner Fit (Scale to Fit)" | "Scale to Fit (Inner Fit)")) => 1,
            (Some(2), _) | (_, Some("Resize and Fill" | "Outer Fit (Shrink to Fit)" | "Envelope (Outer Fit)")) => 2,
            _ => {
                return Err(ApiError::bad(
                    key_at("resize_mode"),
                    format!("{v}: expected \"Just Resize\" (0), \"Crop and Resize\" (1) or \"Resize and Fill\" (2)"),
                ))
            }
        };
        if mode != 0 && !same_aspect {
            return Err(ApiError::bad(
                key_at("resize_mode"),
                format!(
                    "{v}: the control image is {w}x{h} and the output {width}x{height}; lcm stretches it to the \
                     output's size (\"Just Resize\"): crop or pad it to the output's aspect ratio first, or send \
                     \"Just Resize\""
                ),
            ));
        }
    }
    let pixel_perfect = bool_at(&f, "pixel_perfect", at)?.unwrap_or(false);
    if canny && pixel_perfect && !same_size {
        return Err(ApiError::bad(
            key_at("pixel_perfect"),
            format!(
                "true: lcm's canny runs at the control image's own size ({w}x{h}), not the output's \
                 ({width}x{height}); send the image at the output's size, or pixel_perfect false"
            ),
        ));
    }
    if let Some(res) = f64_in(&f, "processor_res", at, f64::MIN, f64::MAX)? {
        let short = w.min(h) as f64;
        if canny && !pixel_perfect && res != -1.0 && res != short {
            return Err(ApiError::bad(
                key_at("processor_res"),
                format!(
                    "{res}: lcm's canny runs at the control image's own resolution (short side {short}): send -1 \
                     or {short}, or resize the image"
                ),
            ));
        }
    }

    let rgb = pre.apply(&rgb, w, h).map_err(|e| ApiError::bad(&image_field, invalid_msg(&e)))?;
    let image =
        ControlUnit::image_at(w, h, &rgb, width, height).map_err(|e| ApiError::bad(&image_field, invalid_msg(&e)))?;
    let unit = ControlUnit { model: path.clone(), image, scale: weight, start, end };
    let choice =
        ControlChoice { name, path, field: at.to_string(), image_key, module: pre.to_string(), weight, start, end };
    Ok((unit, choice))
}

/// An engine error's message without its `what: ` (the field is given apart).
fn invalid_msg(e: &Error) -> String {
    match e {
        Error::Invalid { msg, .. } => msg.clone(),
        e => e.to_string(),
    }
}

/// An engine refusal ([`Error::Invalid`]) for a request parsed from `api` with the ControlNet units
/// `controls`: 400 naming the request's JSON key for the spec's [`Field`] (a ControlNet's own
/// settings: the unit's, `alwayson_scripts.controlnet.args[1].model`), with ControlNet paths shown as
/// their names. Other errors are 500s.
pub fn engine_error(api: Api, controls: &[ControlChoice], e: &Error) -> ApiError {
    let hide =
        |m: &str| super::controlnets::hide_paths(m, controls.iter().map(|c| (c.name.as_str(), c.path.as_path())));
    let Error::Invalid { msg, .. } = e else {
        return ApiError::internal(format!("generation failed: {}", hide(&e.to_string())));
    };
    let a1111 = !matches!(api, Api::OpenAi | Api::Edits);
    let edits = api == Api::Edits;
    let field = match Field::of(e) {
        Some(Field::Width) => (if a1111 { "width" } else { "size" }).to_string(),
        Some(Field::Height) => (if a1111 { "height" } else { "size" }).to_string(),
        Some(Field::Steps) => "steps".into(),
        Some(Field::NumImages) => (if a1111 { "batch_size" } else { "n" }).to_string(),
        Some(Field::GuidanceScale) => (if a1111 { "cfg_scale" } else { "guidance_scale" }).to_string(),
        Some(Field::Strength) => (if edits { "strength" } else { "denoising_strength" }).to_string(),
        Some(Field::InitImage) => (if edits { "image" } else { "init_images[0]" }).to_string(),
        Some(Field::Mask) => "mask".into(),
        Some(
            f @ (Field::ControlNet
            | Field::ControlImage
            | Field::ControlScale
            | Field::ControlStart
            | Field::ControlEnd),
        ) => {
            // "ControlNet K (PATH): …" from the request's checks, or a message naming the file.
            let numbered = msg
                .strip_prefix("ControlNet ")
                .and_then(|r| r.split_once(" ("))
                .and_then(|(k, _)| k.parse::<usize>().ok())
                .and_then(|k| controls.get(k.wrapping_sub(1)));
            let unit = numbered
                .or_else(|| controls.iter().find(|c| msg.contains(&*c.path.to_string_lossy())))
                .or(controls.first());
            match unit {
                None => "alwayson_scripts.controlnet".into(),
                Some(u) => {
                    let key = match f {
                        Field::ControlImage => u.image_key,
                        Field::ControlScale => "weight",
                        Field::ControlStart => "guidance_start",
                        Field::ControlEnd => "guidance_end",
                        _ => "model",
                    };
                    format!("{}.{key}", u.field)
                }
            }
        }
        _ => "request".into(),
    };
    ApiError::bad(field, hide(msg))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::json;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 32 << 20,
            max_prompt_chars: 4000,
            size: SizeRule::up_to("max_size", 1024).unwrap(),
            max_images: 8,
            max_steps: 50,
            max_loras: 8,
        }
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn dir() -> ControlNetDir {
        ControlNetDir::scan(Some(&fixtures().join("controlnet"))).unwrap()
    }

    fn png(w: usize, h: usize) -> (Vec<u8>, String) {
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect();
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(super::super::png::encode_rgb8(w, h, &rgb, "").unwrap());
        (rgb, b64)
    }

    fn parse(body: Value, dir: &ControlNetDir) -> Result<Generation, ApiError> {
        parse_request_with(Api::Txt2Img, body.to_string().as_bytes(), &limits(), &LoraDir::default(), dir)
    }

    fn field_of(body: Value, dir: &ControlNetDir) -> String {
        let e = parse(body, dir).unwrap_err();
        assert_eq!(e.status, 400, "{}", e.message);
        e.field.unwrap_or_default()
    }

    #[test]
    fn a1111_controlnet_units_become_control_units() {
        let (rgb, b64) = png(64, 64);
        let (_, b64_80) = png(80, 64);
        let d = dir();
        let body = json!({"prompt": "a", "width": 64, "height": 64, "batch_size": 2, "alwayson_scripts": {
        "controlnet": {"args": [
            {"enabled": false, "image": 5, "model": "nope"},
            {"image": format!("data:image/png;base64,{b64}"), "model": "cn-sd15-a", "weight": 0.5,
             "guidance_start": 0.1, "guidance_end": 0.9, "module": "none", "threshold_a": 64,
             "resize_mode": "Crop and Resize", "pixel_perfect": true, "processor_res": 512, "mask": null},
            {"input_image": b64_80, "model": "cn-sd15-b [abcd1234]", "module": "canny", "threshold_a": -1,
             "threshold_b": 150, "lowvram": false, "control_mode": "Balanced"},
        ]}}});
        let g = parse(body, &d).unwrap();
        assert_eq!(g.reqs.len(), 2);
        let c = &g.reqs[1].controls;
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].model, fixtures().join("controlnet/cn-sd15-a"));
        assert_eq!((c[0].scale, c[0].start, c[0].end), (0.5, 0.1, 0.9));
        assert_eq!(c[0].image, ControlUnit::image_from_rgb8(64, 64, &rgb).unwrap());
        assert_eq!(c[1].model, fixtures().join("controlnet/cn-sd15-b"));
        assert_eq!((c[1].scale, c[1].start, c[1].end), (1.0, 0.0, 1.0));
        assert_eq!(c[1].image.shape, [1, 3, 64, 64]);
        assert_eq!(g.controls[0].field, "alwayson_scripts.controlnet.args[1]");
        assert_eq!((g.controls[1].name.as_str(), g.controls[1].image_key), ("cn-sd15-b", "input_image"));
        assert_eq!(g.controls[1].module, "canny:100:150");

        // Canny at the image's own size, then resized to the output's (as the CLI does).
        let (rgb80, b64_80) = png(80, 64);
        let g = parse(
            json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"ControlNet": {"args": [
                {"image": b64_80, "model": "cn-sd15-a", "module": "canny"}]}}}),
            &d,
        )
        .unwrap();
        let edges = ControlPreprocess::CANNY_DEFAULT.apply(&rgb80, 80, 64).unwrap();
        assert_eq!(g.reqs[0].controls[0].image, ControlUnit::image_at(80, 64, &edges, 64, 64).unwrap());

        // No units, or only disabled ones: plain txt2img, on a server without ControlNets too.
        for scripts in
            [json!({}), json!({"controlnet": {"args": []}}), json!({"controlnet": {"args": [{"enabled": false}]}})]
        {
            let g = parse(json!({"prompt": "a", "alwayson_scripts": scripts}), &ControlNetDir::default()).unwrap();
            assert!(g.reqs[0].controls.is_empty() && g.controls.is_empty());
        }
    }

    #[test]
    fn bad_units_are_refused_naming_their_json_path() {
        let (_, b64) = png(64, 64);
        let (_, b64_80) = png(80, 64);
        let d = dir();
        let unit = |extra: Value| {
            let mut u = json!({"image": b64, "model": "cn-sd15-a"});
            u.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"prompt": "a", "width": 64, "height": 64,
                   "alwayson_scripts": {"controlnet": {"args": [{"enabled": false}, u]}}})
        };
        let at = "alwayson_scripts.controlnet.args[1]";
        let cases: Vec<(Value, String)> = vec![
            (unit(json!({"model": "nope"})), format!("{at}.model")),
            (unit(json!({"model": "../cn-sd15-a"})), format!("{at}.model")),
            (unit(json!({"model": 3})), format!("{at}.model")),
            (unit(json!({"model": null})), format!("{at}.model")),
            (unit(json!({"image": null})), format!("{at}.image")),
            (unit(json!({"image": "!!!"})), format!("{at}.image")),
            (unit(json!({"image": "aGVsbG8="})), format!("{at}.image")),
            (unit(json!({"image": [1]})), format!("{at}.image")),
            (unit(json!({"input_image": b64})), format!("{at}.input_image")),
            (unit(json!({"weight": "x"})), format!("{at}.weight")),
            (unit(json!({"weight": 1e6})), format!("{at}.weight")),
            (unit(json!({"guidance_start": 1.0})), format!("{at}.guidance_start")),
            (unit(json!({"guidance_start": -0.1})), format!("{at}.guidance_start")),
            (unit(json!({"guidance_start": 0.5, "guidance_end": 0.5})), format!("{at}.guidance_end")),
            (unit(json!({"guidance_end": 2})), format!("{at}.guidance_end")),
            (unit(json!({"module": "depth_midas"})), format!("{at}.module")),
            (unit(json!({"module": "canny", "threshold_a": 300})), format!("{at}.threshold_a")),
            (unit(json!({"module": "canny", "threshold_b": -5})), format!("{at}.threshold_b")),
            (unit(json!({"module": "canny", "threshold_b": "x"})), format!("{at}.threshold_b")),
            (unit(json!({"enabled": "yes"})), format!("{at}.enabled")),
            (unit(json!({"control_mode": "ControlNet is more important"})), format!("{at}.control_mode")),
            (unit(json!({"control_mode": 2})), format!("{at}.control_mode")),
            (unit(json!({"resize_mode": "Stretch"})), format!("{at}.resize_mode")),
            (unit(json!({"image": b64_80, "resize_mode": 1})), format!("{at}.resize_mode")),
            (unit(json!({"image": b64_80, "module": "canny", "pixel_perfect": true})), format!("{at}.pixel_perfect")),
            (unit(json!({"module": "canny", "processor_res": 512})), format!("{at}.processor_res")),
            (unit(json!({"guessmode": true})), format!("{at}.guessmode")),
            (unit(json!({"save_detected_map": true})), format!("{at}.save_detected_map")),
            (unit(json!({"mask": "x"})), format!("{at}.mask")),
            (json!({"prompt": "a", "alwayson_scripts": []}), "alwayson_scripts".into()),
            (
                json!({"prompt": "a", "alwayson_scripts": {"adetailer": {"args": []}}}),
                "alwayson_scripts.adetailer".into(),
            ),
            (
                json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": {}}}}),
                "alwayson_scripts.controlnet.args".into(),
            ),
            (
                json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": [], "x": 1}}}),
                "alwayson_scripts.controlnet.x".into(),
            ),
            (
                json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": [[]]}}}),
                "alwayson_scripts.controlnet.args[0]".into(),
            ),
            (
                json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args":
                    vec![json!({"image": b64, "model": "cn-sd15-a"}); 9]}}}),
                "alwayson_scripts.controlnet.args".into(),
            ),
        ];
        for (body, field) in cases {
            let shown: String = body.to_string().chars().take(200).collect();
            assert_eq!(field_of(body.clone(), &d), field, "{shown}: {}", parse(body, &d).unwrap_err().message);
        }
        // The messages say what is accepted.
        let e = parse(unit(json!({"model": "nope"})), &d).unwrap_err();
        assert!(e.message.contains("cn-sd15-a, cn-sd15-b, cn-sdxl, cn_sd15_a"), "{}", e.message);
        let e = parse(unit(json!({"module": "canny", "threshold_a": 300})), &d).unwrap_err();
        assert!(e.message.contains("0..=255"), "{}", e.message);
        // Without --controlnet-dir, an enabled unit is refused clearly.
        let e = parse(unit(json!({})), &ControlNetDir::default()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(at));
        assert!(e.message.contains("--controlnet-dir"), "{}", e.message);
        // img2img takes units too (its size the init image's).
        let body = json!({"prompt": "a", "init_images": [b64], "alwayson_scripts": {"controlnet": {"args": [
            {"image": b64_80, "model": "cn-sd15-a"}]}}});
        let g =
            parse_request_with(Api::Img2Img, body.to_string().as_bytes(), &limits(), &LoraDir::default(), &d).unwrap();
        assert_eq!(g.reqs[0].controls[0].image.shape, [1, 3, 64, 64]);
    }

    #[test]
    fn engine_refusals_name_the_units_key_and_hide_paths() {
        let (_, b64) = png(64, 64);
        let d = dir();
        let body = json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args": [
            {"image": b64, "model": "cn-sd15-a"}, {"enabled": false}, {"input_image": b64, "model": "cn-sdxl"}]}}});
        let g = parse(body, &d).unwrap();
        let sdxl = fixtures().join("controlnet/cn-sdxl");
        let e = Field::ControlNet.invalid(format!("{} does not fit this model: why", sdxl.display()));
        let a = engine_error(Api::Txt2Img, &g.controls, &e);
        assert_eq!(a.field.as_deref(), Some("alwayson_scripts.controlnet.args[2].model"));
        assert_eq!(a.message, "cn-sdxl does not fit this model: why");
        let e = Field::ControlImage.invalid(format!("ControlNet 2 ({}): bad", sdxl.display()));
        let a = engine_error(Api::Txt2Img, &g.controls, &e);
        assert_eq!(a.field.as_deref(), Some("alwayson_scripts.controlnet.args[2].input_image"));
        assert_eq!(a.message, "ControlNet 2 (cn-sdxl): bad");
        let e = Field::ControlEnd.invalid("ControlNet 1 (x): bad");
        assert_eq!(
            engine_error(Api::Txt2Img, &g.controls, &e).field.as_deref(),
            Some("alwayson_scripts.controlnet.args[0].guidance_end")
        );
        assert_eq!(engine_error(Api::OpenAi, &[], &Field::NumImages.invalid("x")).field.as_deref(), Some("n"));
        assert_eq!(
            engine_error(Api::Txt2Img, &[], &Field::GuidanceScale.invalid("x")).field.as_deref(),
            Some("cfg_scale")
        );
        assert_eq!(engine_error(Api::Txt2Img, &[], &Error::invalid("batch", "x")).field.as_deref(), Some("request"));
        assert_eq!(engine_error(Api::Txt2Img, &[], &Error::Backend("x".into())).status, 500);
    }
}
