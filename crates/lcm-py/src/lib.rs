//! `lcm._native`, the extension module under the Python package `lcm` (python/lcm/__init__.py puts the
//! diffusers-shaped API on top: PIL images in and out, `from_pretrained`, `__call__`).
//!
//! A thin wrapper of the engine's facade ([`lcm::Engine`]): the load spec is checked as the CLI checks
//! it ([`LoadSpec::check_files`]), requests are [`Request`]s validated by the pipeline, and the engine
//! runs with the GIL released ([`run::run_cancellable`]).

mod bench;
mod errors;
mod run;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use lcm::{with_pipeline, Device, Engine, Prepared};
use lcm_core::lcm::Prediction;
use lcm_pipeline::pipeline::Output;
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::spec::{InitImage, LoadSpec, LoraMode, LoraSpec, Request, MAX_IMAGES};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use errors::{invalid, to_py, LcmError};

/// A loaded model on one device, ready to generate many times. Thread-safe: calls from several threads
/// take turns on it (each pipeline runs one generation at a time); two pipelines run side by side.
#[pyclass(frozen, module = "lcm._native")]
struct Pipeline {
    engine: Mutex<Engine>,
    /// The side of the model's own image size (512 for SD1.5, 1024 for SDXL).
    default_size: usize,
    device: &'static str,
}

/// LoRAs read and laid out for [`Pipeline::use_loras`]: preparing (file reads, merges) happens off the
/// serving path; using them is a copy.
#[pyclass(frozen, module = "lcm._native")]
struct PreparedLoras {
    prepared: Mutex<Prepared>,
    loras: Vec<(PathBuf, f32)>,
}

#[pymethods]
impl PreparedLoras {
    /// The LoRAs, as given to `prepare_loras`.
    #[getter]
    fn loras(&self) -> Vec<(PathBuf, f32)> {
        self.loras.clone()
    }
}

fn lora_specs(loras: Vec<(PathBuf, f32)>) -> PyResult<Vec<LoraSpec>> {
    loras
        .into_iter()
        .map(|(path, scale)| match scale.is_finite() {
            true => Ok(LoraSpec { path, scale }),
            false => Err(invalid("loras", format!("{}: scale {scale} must be finite", path.display()))),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the engine is reported as LcmError; the pipeline itself stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[pymethods]
impl Pipeline {
    /// Loads a model: see `lcm.Pipeline.from_pretrained`.
    #[staticmethod]
    #[pyo3(signature = (model, *, device="auto", loras=Vec::new(), lora_mode="merged", max_lora_rank=None,
        vae=None, config=None, clip_skip=0, prediction_type=None, embeddings=Vec::new(), embeddings_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        model: PathBuf,
        device: &str,
        loras: Vec<(PathBuf, f32)>,
        lora_mode: &str,
        max_lora_rank: Option<usize>,
        vae: Option<PathBuf>,
        config: Option<PathBuf>,
        clip_skip: usize,
        prediction_type: Option<&str>,
        embeddings: Vec<(PathBuf, Option<String>)>,
        embeddings_dir: Option<PathBuf>,
    ) -> PyResult<Pipeline> {
        let device: Device = device.parse().map_err(to_py)?;
        let lora_mode = match lora_mode {
            "merged" => LoraMode::Merged,
            "runtime" => LoraMode::Runtime,
            other => return Err(invalid("lora_mode", format!("`{other}`: expected merged or runtime"))),
        };
        let prediction_type = match prediction_type {
            None => None,
            Some("epsilon") => Some(Prediction::Epsilon),
            Some("v_prediction") => Some(Prediction::VPrediction),
            Some(other) => {
                return Err(invalid("prediction_type", format!("`{other}`: expected epsilon or v_prediction")))
            }
        };
        if !model.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{}: model not found (expected a diffusers folder or a single-file .safetensors checkpoint)",
                model.display()
            )));
        }
        let spec = LoadSpec {
            model_dir: model,
            loras: lora_specs(loras)?,
            clip_skip,
            config_dir: config,
            vae,
            lora_mode,
            max_lora_rank,
            prediction_type,
            embeddings,
            embeddings_dir,
            ..LoadSpec::default()
        };
        py.detach(|| {
            // Everything that reads no model first, as the CLI does: a wrong path fails in milliseconds.
            spec.check_files()?;
            let default_size = lcm_pipeline::load::default_image_size(&spec)?;
            let (engine, _cpu_note) = Engine::load(device, spec)?;
            let device = with_pipeline!(&engine, p => lcm_core::Backend::name(&p.backend));
            Ok(Pipeline { engine: Mutex::new(engine), default_size, device })
        })
        .map_err(to_py)
    }

    /// The model's own image side (512 for SD1.5, 1024 for SDXL): the default width and height.
    #[getter]
    fn default_size(&self) -> usize {
        self.default_size
    }

    /// Whether a generation (or a LoRA swap) holds the pipeline now: readable from Python while the
    /// engine works, since it works without the GIL.
    #[getter]
    fn busy(&self) -> bool {
        self.engine.try_lock().is_err()
    }

    /// The backend it runs on: `cpu`, `cuda` or `cuda (emulated)`.
    #[getter]
    fn device(&self) -> &'static str {
        self.device
    }

    /// The model path and LoRAs it was loaded with, as a dict.
    fn spec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = lock(&self.engine);
        let spec = engine.spec();
        let d = PyDict::new(py);
        d.set_item("model", &spec.model_dir)?;
        d.set_item("loras", spec.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// Generates: see `lcm.Pipeline.__call__`. One request per prompt, each with its own negative
    /// prompt and seed (its own generator, as diffusers with one `torch.Generator` per prompt), run as
    /// one batch. `image`/`mask_image`: (width, height, bytes) of RGB8 / gray8 pixels, row-major.
    /// `output`: `latent`, `np` (float32 [N,H,W,3] in [0,1]) or `uint8`. Returns (latents float32
    /// [N,C,H/8,W/8], images or None, timings dict), the prompts' images in order.
    #[pyo3(signature = (prompts, *, negative_prompts, seeds, num_inference_steps=4, guidance_scale=1.0, width=None,
        height=None, num_images_per_prompt=1, image=None, mask_image=None, strength=0.8,
        prompt_syntax="plain", output="uint8", callback=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        negative_prompts: Vec<Option<String>>,
        seeds: Vec<u64>,
        num_inference_steps: usize,
        guidance_scale: f32,
        width: Option<usize>,
        height: Option<usize>,
        num_images_per_prompt: usize,
        image: Option<(usize, usize, Vec<u8>)>,
        mask_image: Option<(usize, usize, Vec<u8>)>,
        strength: f32,
        prompt_syntax: &str,
        output: &str,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>, Bound<'py, PyDict>)> {
        if !["latent", "np", "uint8"].contains(&output) {
            return Err(invalid("output_type", format!("`{output}`: expected pil, np, uint8 or latent")));
        }
        if prompts.is_empty() || prompts.len() > MAX_IMAGES {
            return Err(invalid("prompt", format!("{} prompts: expected 1..={MAX_IMAGES}", prompts.len())));
        }
        for (name, n) in [("negative_prompt", negative_prompts.len()), ("seed", seeds.len())] {
            if n != prompts.len() {
                return Err(invalid(name, format!("{n} given for {} prompts: expected one per prompt", prompts.len())));
            }
        }
        let init_image = match image {
            None if mask_image.is_some() => return Err(invalid("mask_image", "inpainting needs `image` too")),
            None => None,
            Some((w, h, rgb)) => {
                for (name, given, actual) in [("width", width, w), ("height", height, h)] {
                    if given.is_some_and(|g| g != actual) {
                        return Err(invalid(
                            name,
                            format!("differs from the image's {actual}; img2img keeps its size"),
                        ));
                    }
                }
                if rgb.len() != w * h * 3 {
                    return Err(invalid(
                        "image",
                        format!("{} bytes for {w}x{h} RGB (expected {})", rgb.len(), w * h * 3),
                    ));
                }
                let init = InitImage::from_rgb8(w, h, &rgb, strength).map_err(to_py)?;
                Some(match mask_image {
                    None => init,
                    Some((mw, mh, gray)) => init.with_mask_gray8(mw, mh, &gray).map_err(to_py)?,
                })
            }
        };
        let (width, height) = match &init_image {
            Some(i) => (i.pixels.shape[3], i.pixels.shape[2]),
            None => (width.unwrap_or(self.default_size), height.unwrap_or(self.default_size)),
        };
        let prompt_syntax = PromptSyntax::parse(prompt_syntax).map_err(|e| match e {
            lcm_core::Error::Invalid { msg, .. } => invalid("prompt_syntax", msg),
            e => to_py(e),
        })?;
        let reqs: Vec<Request> = prompts
            .into_iter()
            .zip(negative_prompts)
            .zip(seeds)
            .map(|((prompt, negative_prompt), seed)| Request {
                prompt,
                negative_prompt,
                steps: num_inference_steps,
                guidance_scale,
                seed,
                width,
                height,
                num_images: num_images_per_prompt,
                init_image: init_image.clone(),
                prompt_syntax,
                ..Request::default()
            })
            .collect();
        let outs = run::run_cancellable(
            py,
            callback.as_ref(),
            |progress, cancel| with_pipeline!(&mut *lock(&self.engine), p => p.generate_batch(&reqs, progress, Some(cancel))),
        )?;
        let timings = timings(py, &outs[0])?;
        let rgb: Option<Vec<u8>> = (output == "uint8")
            .then(|| outs.iter().flat_map(|o| (0..o.images.shape[0]).flat_map(move |i| o.rgb8(i))).collect());
        let (latents_shape, images_shape) =
            (batch_shape(&outs, |o| &o.latents.shape), batch_shape(&outs, |o| &o.images.shape));
        let (latents, floats) = match <[Output; 1]>::try_from(outs) {
            // One prompt: NumPy takes the engine's buffers as they are.
            Ok([one]) => (one.latents.data, one.images.data),
            Err(outs) => (
                concat(outs.iter().map(|o| &o.latents.data[..])),
                if output == "np" { concat(outs.iter().map(|o| &o.images.data[..])) } else { Vec::new() },
            ),
        };
        let images = match (output, rgb) {
            ("latent", _) => None,
            (_, Some(rgb)) => Some(ndarray(py, rgb, &images_shape)?),
            _ => Some(ndarray(py, floats, &images_shape)?),
        };
        let latents = ndarray(py, latents, &latents_shape)?;
        Ok((latents, images, timings))
    }

    /// Replaces the LoRAs (merged mode: re-merged from pristine weights; runtime mode on CUDA: copied
    /// into the fixed buffers). An empty list removes them.
    fn set_loras(&self, py: Python<'_>, loras: Vec<(PathBuf, f32)>) -> PyResult<()> {
        let loras = lora_specs(loras)?;
        py.detach(|| lock(&self.engine).set_loras(&loras)).map_err(to_py)
    }

    /// Reads and lays out LoRAs for `use_loras` without touching the running model.
    fn prepare_loras(&self, py: Python<'_>, loras: Vec<(PathBuf, f32)>) -> PyResult<PreparedLoras> {
        let specs = lora_specs(loras.clone())?;
        let prepared = py.detach(|| lock(&self.engine).prepare_loras(&specs)).map_err(to_py)?;
        Ok(PreparedLoras { prepared: Mutex::new(prepared), loras })
    }

    /// Swaps to LoRAs from `prepare_loras` (a copy on CUDA's runtime mode).
    fn use_loras(&self, py: Python<'_>, prepared: &PreparedLoras) -> PyResult<()> {
        py.detach(|| lock(&self.engine).use_loras(&lock(&prepared.prepared))).map_err(to_py)
    }
}

/// `data` as a NumPy array of `shape`, without a copy (NumPy takes the Vec).
fn ndarray<'py, T: numpy::Element>(py: Python<'py>, data: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}

/// The parts one after the other (one prompt's images after another's).
fn concat<T: Copy, P: AsRef<[T]>>(parts: impl Iterator<Item = P>) -> Vec<T> {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p.as_ref());
    }
    all
}

/// The shape of the outputs' tensors stacked along the batch axis.
fn batch_shape(outs: &[Output], shape: impl Fn(&Output) -> &Vec<usize>) -> Vec<usize> {
    let mut s = shape(&outs[0]).clone();
    s[0] = outs.iter().map(|o| shape(o)[0]).sum();
    s
}

fn timings<'py>(py: Python<'py>, out: &Output) -> PyResult<Bound<'py, PyDict>> {
    let t = &out.times;
    let d = PyDict::new(py);
    d.set_item("text_encoder_s", t.text_encoder.as_secs_f64())?;
    d.set_item("unet_steps_s", t.unet_steps.iter().map(|s| s.as_secs_f64()).collect::<Vec<_>>())?;
    d.set_item("vae_decode_s", t.vae_decode.as_secs_f64())?;
    d.set_item("total_s", t.total.as_secs_f64())?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pipeline>()?;
    m.add_class::<PreparedLoras>()?;
    m.add("LcmError", m.py().get_type::<LcmError>())?;
    m.add_function(wrap_pyfunction!(bench::bench, m)?)?;
    Ok(())
}
