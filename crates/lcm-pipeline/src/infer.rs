//! The inference-tensor contract: one generation as named tensors, shared by the Triton backend
//! (`crates/lcm-triton`, `libtriton_lcm.so`) and `lcm serve`'s Open Inference Protocol routes (KServe's
//! v2, `/v2/models/lcm/infer`). The tensors, their types and shapes live here once ([`INPUTS`],
//! [`OUTPUT`]); the Triton `config.pbtxt` and the OIP model metadata are written from them, and
//! [`requests`] turns what either front end received into pipeline [`Request`]s.
//!
//! Shapes carry the batch dimension first (Triton's `max_batch_size > 0`; OIP clients send the same
//! shapes): row `i` of every input makes request `i`, one image each. A batch of rows is several
//! requests, each with its own prompt, seed and settings.

use lcm_core::{Error, Result};

use crate::spec::{InitImage, Request};

/// An element type, as Triton and OIP name it (`datatype` in OIP JSON; `TYPE_*` in `config.pbtxt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// Byte strings (UTF-8 text here).
    Bytes,
    /// u8.
    Uint8,
    /// i32.
    Int32,
    /// i64.
    Int64,
    /// f32.
    Fp32,
}

impl DataType {
    /// Every type, in [`DataType::name`] order.
    pub const ALL: [DataType; 5] = [DataType::Bytes, DataType::Uint8, DataType::Int32, DataType::Int64, DataType::Fp32];

    /// The protocol's name: `BYTES`, `UINT8`, `INT32`, `INT64`, `FP32`.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bytes => "BYTES",
            DataType::Uint8 => "UINT8",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
        }
    }

    /// The name in a Triton `config.pbtxt` (BYTES is `TYPE_STRING` there).
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bytes => "TYPE_STRING",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp32 => "TYPE_FP32",
        }
    }

    /// From [`DataType::name`] (`None` for a type the contract does not use).
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element; `None` for BYTES (variable length).
    pub fn size(self) -> Option<usize> {
        match self {
            DataType::Bytes => None,
            DataType::Uint8 => Some(1),
            DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Int64 => Some(8),
        }
    }
}

/// One tensor of the contract: its dims exclude the batch dimension; -1 is any size.
#[derive(Clone, Copy, Debug)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: &'static str,
    /// Its element type.
    pub dtype: DataType,
    /// Its shape after the batch dimension.
    pub dims: &'static [i64],
    /// Whether every request must send it.
    pub required: bool,
    /// What it means (the metadata and the docs say it).
    pub doc: &'static str,
}

const fn input(name: &'static str, dtype: DataType, dims: &'static [i64], doc: &'static str) -> TensorSpec {
    TensorSpec { name, dtype, dims, required: false, doc }
}

/// The inputs. Only `prompt` is required.
pub const INPUTS: [TensorSpec; 9] = [
    TensorSpec {
        required: true,
        ..input("prompt", DataType::Bytes, &[1], "the prompt (UTF-8), read as diffusers reads it")
    },
    input("negative_prompt", DataType::Bytes, &[1], "the negative prompt (used with guidance_scale > 1)"),
    input("seed", DataType::Int64, &[1], "torch.manual_seed's seed; -1 or absent: a random one"),
    input("steps", DataType::Int32, &[1], "sampler steps (UNet calls); default 4"),
    input("guidance_scale", DataType::Fp32, &[1], "classic CFG above 1; default 1 (LCM-LoRA's usual)"),
    input("width", DataType::Int32, &[1], "output width in pixels, a multiple of 8; default the model's"),
    input("height", DataType::Int32, &[1], "output height in pixels, a multiple of 8; default the model's"),
    input("image", DataType::Uint8, &[-1, -1, 3], "img2img: the init image, RGB [H, W, 3]; the output has its size"),
    input("strength", DataType::Fp32, &[1], "img2img: in (0, 1], default 0.8; only with image"),
];

/// The output: the generated image, 8-bit RGB `[H, W, 3]` (the pixels `lcm generate` writes as PNG).
pub const OUTPUT: TensorSpec = TensorSpec {
    required: true,
    ..input("image", DataType::Uint8, &[-1, -1, 3], "the generated image, RGB [H, W, 3]")
};

/// diffusers' img2img default strength.
pub const DEFAULT_STRENGTH: f32 = 0.8;

/// One input tensor's elements, in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
    /// UINT8 elements.
    Uint8(Vec<u8>),
    /// INT32 elements.
    Int32(Vec<i32>),
    /// INT64 elements.
    Int64(Vec<i64>),
    /// FP32 elements.
    Fp32(Vec<f32>),
}

impl Data {
    /// The element type.
    pub fn dtype(&self) -> DataType {
        match self {
            Data::Bytes(_) => DataType::Bytes,
            Data::Uint8(_) => DataType::Uint8,
            Data::Int32(_) => DataType::Int32,
            Data::Int64(_) => DataType::Int64,
            Data::Fp32(_) => DataType::Fp32,
        }
    }

    /// Element count.
    pub fn len(&self) -> usize {
        match self {
            Data::Bytes(v) => v.len(),
            Data::Uint8(v) => v.len(),
            Data::Int32(v) => v.len(),
            Data::Int64(v) => v.len(),
            Data::Fp32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From a little-endian buffer as Triton hands inputs over (and OIP's binary extension sends
    /// them): fixed-size elements packed; each BYTES element a 4-byte little-endian length, then its
    /// bytes. `name` is the input's, for the error.
    pub fn from_raw(name: &str, dtype: DataType, raw: &[u8]) -> Result<Data> {
        let bad = |msg: String| Error::invalid(format!("input '{name}'"), msg);
        let Some(size) = dtype.size() else {
            let (mut items, mut rest) = (Vec::new(), raw);
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(bad(format!("BYTES element {} has a truncated length prefix", items.len())));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(bad(format!("BYTES element {} says {len} bytes; {} remain", items.len(), tail.len())));
                }
                items.push(tail[..len].to_vec());
                rest = &tail[len..];
            }
            return Ok(Data::Bytes(items));
        };
        if !raw.len().is_multiple_of(size) {
            return Err(bad(format!("{} bytes is not a whole number of {} elements", raw.len(), dtype.name())));
        }
        let words = raw.chunks_exact(size);
        Ok(match dtype {
            DataType::Uint8 => Data::Uint8(raw.to_vec()),
            DataType::Int32 => Data::Int32(words.map(|w| i32::from_le_bytes(w.try_into().unwrap())).collect()),
            DataType::Int64 => Data::Int64(words.map(|w| i64::from_le_bytes(w.try_into().unwrap())).collect()),
            DataType::Fp32 => Data::Fp32(words.map(|w| f32::from_le_bytes(w.try_into().unwrap())).collect()),
            DataType::Bytes => unreachable!("handled above"),
        })
    }
}

/// One input as a front end received it: its shape with the batch dimension first.
#[derive(Clone, Debug)]
pub struct Input {
    /// The tensor's name (one of [`INPUTS`]).
    pub name: String,
    /// Its shape, batch dimension first.
    pub shape: Vec<i64>,
    /// Its elements (their type is the tensor's datatype).
    pub data: Data,
}

/// What a request gets when it leaves an input out.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// Output width (the model's default size).
    pub width: usize,
    /// Output height.
    pub height: usize,
    /// Sampler steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f32,
}

impl Default for Defaults {
    fn default() -> Self {
        let r = Request::default();
        Defaults { width: r.width, height: r.height, steps: r.steps, guidance_scale: r.guidance_scale }
    }
}

/// The requests a set of inputs makes, one per row of the batch dimension. Every error names the
/// input (`input 'steps': ...`): an unknown or repeated name, a wrong datatype or shape, a missing
/// prompt, a value out of range. The sizes, steps and strength are then checked by
/// [`Request::validate`] where the pipeline runs them (it knows the model's most steps).
/// `random_seed` is called for each row without a seed (or with -1).
pub fn requests(inputs: &[Input], defaults: &Defaults, random_seed: &mut dyn FnMut() -> u64) -> Result<Vec<Request>> {
    let batch = check_inputs(inputs)?;
    let get = |name: &str| inputs.iter().find(|i| i.name == name);
    (0..batch)
        .map(|row| {
            let text = |name| get(name).map(|i| text(i, row)).transpose();
            let int = |name| get(name).map(|i| int(i, row));
            let float = |name| get(name).map(|i| float(i, row));
            let prompt = text("prompt")?.expect("check_inputs: prompt is required");
            let mut req = Request {
                prompt,
                negative_prompt: text("negative_prompt")?,
                steps: positive("steps", int("steps"), defaults.steps)?,
                guidance_scale: float("guidance_scale").unwrap_or(defaults.guidance_scale),
                seed: match int("seed") {
                    None | Some(-1) => random_seed(),
                    Some(s) if s >= 0 => s as u64,
                    Some(s) => return Err(named("seed", format!("{s}: expected 0 or more, or -1 for a random seed"))),
                },
                width: positive("width", int("width"), defaults.width)?,
                height: positive("height", int("height"), defaults.height)?,
                ..Request::default()
            };
            let strength = float("strength");
            match (get("image"), strength) {
                (Some(image), _) => {
                    let (h, w) = (image.shape[1] as usize, image.shape[2] as usize);
                    let Data::Uint8(px) = &image.data else { unreachable!("check_inputs: image is UINT8") };
                    let rgb = &px[row * h * w * 3..(row + 1) * h * w * 3];
                    let given = |name| get(name).is_some();
                    if (given("width") && req.width != w) || (given("height") && req.height != h) {
                        return Err(named(
                            "image",
                            format!("{w}x{h} differs from width/height {}x{}: leave them out", req.width, req.height),
                        ));
                    }
                    (req.width, req.height) = (w, h);
                    let strength = strength.unwrap_or(DEFAULT_STRENGTH);
                    req.init_image = Some(InitImage::from_rgb8(w, h, rgb, strength)?);
                }
                (None, Some(_)) => return Err(named("strength", "given without an image (img2img takes both)")),
                (None, None) => {}
            }
            Ok(req)
        })
        .collect()
}

/// The batch size, after every input is known, unrepeated, of its type and shape, and `prompt` given.
fn check_inputs(inputs: &[Input]) -> Result<usize> {
    let mut batch = None;
    for (k, input) in inputs.iter().enumerate() {
        let name = input.name.as_str();
        let Some(spec) = INPUTS.iter().find(|s| s.name == name) else {
            let known: Vec<_> = INPUTS.iter().map(|s| s.name).collect();
            return Err(named(name, format!("unknown input; the model takes {}", known.join(", "))));
        };
        if inputs[..k].iter().any(|i| i.name == name) {
            return Err(named(name, "given twice"));
        }
        if input.data.dtype() != spec.dtype {
            return Err(named(name, format!("datatype {}: expected {}", input.data.dtype().name(), spec.dtype.name())));
        }
        let dims_ok = input.shape.len() == spec.dims.len() + 1
            && input.shape.iter().all(|&d| d >= 1)
            && spec.dims.iter().zip(&input.shape[1..]).all(|(&want, &got)| want == -1 || want == got);
        if !dims_ok {
            return Err(named(name, format!("shape {:?}: expected [batch, {}]", input.shape, dims_text(spec.dims))));
        }
        let count = input.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
        if count != Some(input.data.len()) {
            return Err(named(name, format!("shape {:?} but {} elements", input.shape, input.data.len())));
        }
        let rows = input.shape[0] as usize;
        match batch {
            Some(b) if b != rows => {
                return Err(named(name, format!("batch dimension {rows}; the other inputs have {b}")));
            }
            _ => batch = Some(rows),
        }
    }
    if !inputs.iter().any(|i| i.name == "prompt") {
        return Err(named("prompt", "missing: every request needs a prompt"));
    }
    Ok(batch.unwrap_or(1))
}

fn dims_text(dims: &[i64]) -> String {
    dims.iter().map(|d| if *d < 0 { "any".to_string() } else { d.to_string() }).collect::<Vec<_>>().join(", ")
}

fn named(name: &str, msg: impl Into<String>) -> Error {
    Error::invalid(format!("input '{name}'"), msg)
}

fn text(input: &Input, row: usize) -> Result<String> {
    let Data::Bytes(items) = &input.data else { unreachable!("check_inputs: BYTES") };
    String::from_utf8(items[row].clone()).map_err(|_| named(&input.name, format!("row {row} is not UTF-8 text")))
}

fn int(input: &Input, row: usize) -> i64 {
    match &input.data {
        Data::Int32(v) => v[row] as i64,
        Data::Int64(v) => v[row],
        other => unreachable!("check_inputs: an integer input, not {:?}", other.dtype()),
    }
}

fn float(input: &Input, row: usize) -> f32 {
    let Data::Fp32(v) = &input.data else { unreachable!("check_inputs: FP32") };
    v[row]
}

fn positive(name: &str, value: Option<i64>, default: usize) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 => Ok(v as usize),
        Some(v) => Err(named(name, format!("{v}: expected 1 or more"))),
    }
}

#[cfg(test)]
mod tests;
