//! Getting a model's weights onto a backend, whatever they come from: a source gives each weight's
//! values (f32, torch layout), a hook may change them (LoRA merging), and each is checked finite and
//! uploaded. The loaders of each format build on this; so do models built from synthetic weights.

use std::path::Path;

use lcm_core::{Backend, Error, ModelWeights, Result, WeightSpec};

use crate::arch::clip::{ClipConfig, ClipTextModel};
use crate::arch::controlnet::{ControlNet, ControlNetConfig};
use crate::arch::unet::{Unet, UnetConfig};
use crate::arch::vae::{Vae, VaeConfig};
use crate::runner::Runner;

/// A hook that may change a weight (in torch layout, f32) before it is uploaded: LoRA merging.
pub type WeightHook<'a> = &'a mut dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()>;

/// Lends the hook out for one `load_weights` call (a VAE loads its decoder and encoder with one hook).
pub fn reborrow<'s>(hook: &'s mut Option<WeightHook<'_>>) -> Option<WeightHook<'s>> {
    hook.as_mut().map(|f| &mut **f as WeightHook<'s>)
}

/// Produces one weight's values (f32, torch layout) into the buffer: from a file, or synthetic.
pub type WeightSource<'a> = &'a mut dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()>;

/// Uploads every weight of `specs`, taking values from `source` (then `hook`); `origin` names where
/// they come from in errors. A non-finite value is an error naming the weight and the element.
pub fn upload_weights<B: Backend>(
    backend: &B,
    specs: &[WeightSpec],
    origin: &Path,
    source: WeightSource,
    mut hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut weights = Vec::with_capacity(specs.len());
    let mut buf = Vec::new();
    for spec in specs {
        source(spec, &mut buf)?;
        if let Some(h) = hook.as_mut() {
            h(spec, &mut buf)?;
        }
        if let Some(i) = buf.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                origin,
                &spec.name,
                format!("element {i} is {} (weights must be finite)", buf[i]),
            ));
        }
        weights.push(backend.upload_weight(spec, &buf)?);
    }
    Ok(ModelWeights::new(specs.to_vec(), weights))
}

impl<B: Backend> Unet<B> {
    /// A UNet whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: UnetConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let weights = upload_weights(backend, &config.weights()?, origin, source, None)?;
        Ok(Unet { config, runner: Runner::new(weights) })
    }
}

impl<B: Backend> ControlNet<B> {
    /// A ControlNet whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: ControlNetConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let weights = upload_weights(backend, &config.weights()?, origin, source, None)?;
        Ok(ControlNet::new(config, weights))
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// A text encoder whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: ClipConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let weights = upload_weights(backend, &config.weights()?, origin, source, None)?;
        Ok(ClipTextModel { config, runner: Runner::new(weights) })
    }
}

impl<B: Backend> Vae<B> {
    /// A decoder-only VAE whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: VaeConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let decoder = Runner::new(upload_weights(backend, &config.decoder_weights()?, origin, source, None)?);
        Ok(Vae { config, decoder, encoder: None, encoder_source: None })
    }

    /// Adds an encoder whose weights come from `source` (synthetic weights: `lcm bench --strength`
    /// times img2img's encode).
    pub fn encoder_from_source(&mut self, backend: &B, origin: &Path, source: WeightSource) -> Result<()> {
        let specs = self.config.encoder_weights()?;
        self.encoder = Some(Runner::new(upload_weights(backend, &specs, origin, source, None)?));
        Ok(())
    }
}
