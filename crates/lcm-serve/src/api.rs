//! Request parsing for both HTTP APIs: OpenAI's `POST /v1/images/generations` and A1111's
//! `POST /sdapi/v1/txt2img` / `img2img`. Bodies are read as untyped JSON and each field is taken by
//! hand, so that every refusal names the field (`size`, `loras[1].name`, `init_images[0]`) and what it
//! accepts; fields an API defines but lcm cannot honour are refused by name, never ignored.

use base64::Engine as _;
use lcm_core::Error;
use lcm_pipeline::control_image::ControlPreprocess;
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::scheduler::SamplerOptions;
use lcm_pipeline::spec::{ControlUnit, Field, InitImage, Request, SizeRule, MAX_CONTROLNETS};
use serde_json::{Map, Value};

use super::controlnets::ControlNetDir;
use super::error::ApiError;
use super::loras::{LoraChoice, LoraDir};

mod controlnet;
mod edits;
mod engine_error;
mod mask;
mod sampler;
use controlnet::alwayson_scripts;
pub use edits::parse_edits;
pub use engine_error::engine_error;
use mask::{a1111_mask, a1111_noop};
pub use sampler::{a1111_aliases, A1111_SCHEDULERS};

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
    /// Steps per request running `sampler`: its most (`Pipeline::max_steps(None)`); requests naming
    /// another sampler are bounded by the pipeline when they run.
    pub max_steps: usize,
    /// The sampler requests run when they name none: the pipeline's (`lcm serve --scheduler`).
    pub sampler: SamplerOptions,
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
    /// The Open Inference Protocol's `POST /v2/models/lcm/infer` (JSON tensors: `oip::parse_infer`).
    Oip,
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
    match api {
        Api::Edits => {
            return Err(ApiError::bad("content-type", "/v1/images/edits takes multipart/form-data: see parse_edits"))
        }
        Api::Oip => return Err(ApiError::bad("inputs", "/v2/models/lcm/infer takes tensors: see oip::parse_infer")),
        _ => {}
    }
    let obj = parse_object(body)?;
    match api {
        Api::Edits | Api::Oip => unreachable!("handled above"),
        Api::OpenAi => openai(&obj, limits, loras),
        Api::Txt2Img => a1111(&obj, limits, loras, controlnets, false),
        Api::Img2Img => a1111(&obj, limits, loras, controlnets, true),
    }
}

/// A seed when the client gives none: the engine's (distinct per call, < 2^53 for any JSON reader).
pub use lcm_pipeline::rng::random_seed;

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
    "sampler",
];

/// OpenAI's images API request: `prompt`, `n`, `size` "WxH", `response_format` (b64_json), `model`
/// and `user` (accepted, not used: one model is served); lcm's `seed`, `steps`, `guidance_scale`,
/// `negative_prompt`, `loras: [{name, scale}]`, `sampler` ([`sampler::openai_sampler`]).
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
    let sampler = sampler::openai_sampler(f.string("sampler", 64)?.as_deref(), limits)?;
    let req = Request {
        prompt,
        negative_prompt: f.string("negative_prompt", limits.max_prompt_chars)?,
        steps: f.uint("steps", 1, sampler::max_steps(limits, &sampler))?.unwrap_or(4),
        guidance_scale: f.float("guidance_scale", 0.0, MAX_GUIDANCE)?.unwrap_or(1.0),
        seed,
        width,
        height,
        num_images: n,
        controls: Vec::new(),
        sampler: Some(sampler),
        init_image: None,
        prompt_syntax: PromptSyntax::Plain, // OpenAI clients send plain text
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
    "sampler",
];

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

const A1111_TXT2IMG: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_size",
    "alwayson_scripts",
    "sampler_name",
    "sampler_index",
    "scheduler",
    "eta",
];
/// img2img's fields beyond txt2img's.
const A1111_IMG2IMG_ONLY: &[&str] = &[
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
/// ([`control_units`]); `sampler_name`, `scheduler`, `eta` ([`sampler::a1111_sampler`]).
pub fn a1111(
    obj: &Map<String, Value>,
    limits: &Limits,
    loras: &LoraDir,
    controlnets: &ControlNetDir,
    img2img: bool,
) -> Result<Generation, ApiError> {
    let extra = if img2img { A1111_IMG2IMG_ONLY } else { &[] };
    let known: Vec<&str> = A1111_TXT2IMG.iter().chain(extra).copied().collect();
    let known = known.as_slice();
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
    let sampler = sampler::a1111_sampler(&f, limits)?;
    let steps = f.uint("steps", 1, sampler::max_steps(limits, &sampler))?.unwrap_or(4);
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
        sampler: Some(sampler),
        init_image: init,
        prompt_syntax: PromptSyntax::A1111, // what A1111's clients write
    };
    let reqs = (0..batch as u64).map(|i| Request { seed: seed.wrapping_add(i), ..base.clone() }).collect();
    Ok(Generation { reqs, loras, controls: choices })
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

/// An engine error's message without its `what: ` (the field is given apart).
fn invalid_msg(e: &Error) -> String {
    match e {
        Error::Invalid { msg, .. } => msg.clone(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
