//! ControlNets in a generation: the ones a pipeline has loaded (on first use, kept for the next
//! request), and what a batch's denoising loop needs of them — which ControlNets, their active steps,
//! their control images and weights as the loop's inputs.

use std::path::{Path, PathBuf};

use lcm_core::{Backend, ModelWeights, Result, Tensor};
use lcm_models::denoise::DenoiseControl;
use lcm_models::{ControlNet, UnetConfig, Variant};

use crate::spec::{ControlUnit, Field, Request};

/// The ControlNets a pipeline has loaded, in load order (a ControlNet's index is its id in executor
/// keys, so it never changes while the pipeline lives).
pub struct ControlNets<B: Backend> {
    loaded: Vec<(PathBuf, ControlNet<B>)>,
}

impl<B: Backend> Default for ControlNets<B> {
    fn default() -> Self {
        ControlNets { loaded: Vec::new() }
    }
}

/// Reads a ControlNet: a diffusers folder, or a single `.safetensors` file (what its shapes do not
/// give, the head counts, taken from `unet`, the UNet it was copied from).
fn read<B: Backend>(backend: &B, path: &Path, variant: Variant, unet: &UnetConfig) -> Result<ControlNet<B>> {
    if path.is_dir() {
        ControlNet::load_folder(backend, path, variant)
    } else if path.is_file() {
        ControlNet::load_single_file_for(backend, path, Some(unet))
    } else {
        Err(Field::ControlNet.invalid(format!(
            "{}: not found (expected a diffusers ControlNet folder or a .safetensors file)",
            path.display()
        )))
    }
}

impl<B: Backend> ControlNets<B> {
    /// The ids of the ControlNets `units` name, loading those not loaded yet; each is checked to fit
    /// `unet` (and a VAE of `downscale`) before any is used. Errors name the ControlNet and why.
    pub fn ensure(
        &mut self,
        backend: &B,
        units: &[ControlUnit],
        unet: &UnetConfig,
        downscale: usize,
        variant: Variant,
    ) -> Result<Vec<usize>> {
        let mut ids = Vec::with_capacity(units.len());
        for u in units {
            let id = match self.loaded.iter().position(|(p, _)| *p == u.model) {
                Some(id) => id,
                None => {
                    let net = read(backend, &u.model, variant, unet).map_err(|e| name_file(e, &u.model))?;
                    if net.config.conditioning_channels != 3 {
                        return Err(Field::ControlNet.invalid(format!(
                            "{} takes control images of {} channels (conditioning_channels); lcm gives ControlNets \
                             RGB images (3)",
                            u.model.display(),
                            net.config.conditioning_channels
                        )));
                    }
                    net.config.check_fits(unet, downscale).map_err(|why| {
                        Field::ControlNet.invalid(format!(
                            "{} does not fit this model: {why} (a ControlNet of the other family?)",
                            u.model.display()
                        ))
                    })?;
                    self.loaded.push((u.model.clone(), net));
                    self.loaded.len() - 1
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }

    /// ControlNet `id`.
    pub fn get(&self, id: usize) -> &ControlNet<B> {
        &self.loaded[id].1
    }

    /// The weights of each of `ids`, in order.
    pub fn weights(&self, ids: &[usize]) -> Vec<&ModelWeights<B>> {
        ids.iter().map(|&id| self.loaded[id].1.weights()).collect()
    }

    /// How many are loaded.
    pub fn len(&self) -> usize {
        self.loaded.len()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }
}

/// A load error names the ControlNet field, so front ends point at their ControlNet flag or key (the
/// message already names the file, or says which ControlNet).
fn name_file(e: lcm_core::Error, path: &Path) -> lcm_core::Error {
    match e {
        lcm_core::Error::Invalid { .. } if Field::of(&e).is_some() => e,
        other if other.to_string().contains(&*path.to_string_lossy()) => Field::ControlNet.invalid(other.to_string()),
        other => Field::ControlNet.invalid(format!("{}: {other}", path.display())),
    }
}

/// What a batch's loop takes from its ControlNets: the graph's view of each and the inputs.
pub struct ControlInputs<'a> {
    /// Per ControlNet: its config, id and active steps.
    pub controls: Vec<DenoiseControl<'a>>,
    /// Per ControlNet: its control images, NHWC `[N, H, W, 3]`, one per image of the batch.
    pub images: Vec<Vec<f32>>,
    /// `[controls, B]`: each ControlNet's weight for each row of the UNet's batch.
    pub scales: Vec<f32>,
}

/// Lays out the ControlNets of `reqs` (all with the same models and windows: `check_batch`) over the
/// `steps` the loop runs, `guided` doubling the batch.
pub fn control_inputs<'a, B: Backend>(
    nets: &'a ControlNets<B>,
    ids: &[usize],
    reqs: &[Request],
    steps: usize,
    guided: bool,
) -> ControlInputs<'a> {
    let first = &reqs[0].controls;
    let controls = ids
        .iter()
        .zip(first)
        .map(|(&id, u)| {
            let active = (0..steps).filter(|&i| u.active_at(i, steps)).fold(0u64, |m, i| m | 1 << i);
            DenoiseControl { config: &nets.get(id).config, id, active }
        })
        .collect::<Vec<_>>();
    let mut images = Vec::with_capacity(ids.len());
    let mut scales = Vec::new();
    for (k, c) in controls.iter().enumerate() {
        let mut img = Vec::new();
        let mut row = Vec::new();
        for r in reqs {
            let one = nhwc(&r.controls[k].image, c.config.bgr);
            for _ in 0..r.num_images {
                img.extend_from_slice(&one);
                row.push(r.controls[k].scale);
            }
        }
        images.push(img);
        scales.extend_from_slice(&row);
        if guided {
            scales.extend_from_slice(&row); // the uncond rows take the same weights
        }
    }
    ControlInputs { controls, images, scales }
}

/// A `[1, 3, H, W]` control image as NHWC, its channels reversed for a `bgr` ControlNet.
fn nhwc(image: &Tensor, bgr: bool) -> Vec<f32> {
    let mut t = image.nchw_to_nhwc();
    if bgr {
        t.data.chunks_exact_mut(3).for_each(|px| px.reverse());
    }
    t.data
}
