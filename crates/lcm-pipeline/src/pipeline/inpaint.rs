//! Inpainting's part of a batch (diffusers' StableDiffusionInpaintPipeline / StableDiffusionXLInpaintPipeline):
//! which kind the UNet runs, the draws and inputs of each request, the mask on the latent grid.

use lcm_core::{Backend, Result, Tensor};
use lcm_models::denoise::Inpaint;

use super::Pipeline;
use crate::rng::TorchRng;
use crate::scheduler::Scheduler;
use crate::spec::{Field, InitImage, Request};

impl<B: Backend> Pipeline<B> {
    /// How `req` inpaints with this UNet, if it does: an inpainting UNet (2·latent + 1 input channels)
    /// needs a mask and concatenates it; an ordinary one blends. Errors name the mask.
    pub(super) fn inpaint_kind(&self, req: &Request) -> Result<Option<Inpaint>> {
        let u = &self.unet.config;
        let masked = req.init_image.as_ref().is_some_and(|i| i.mask.is_some());
        let inpainting_unet = u.in_channels == 2 * u.out_channels + 1;
        match (masked, inpainting_unet) {
            (false, false) => Ok(None),
            (true, false) => Ok(Some(Inpaint::Blend)),
            (true, true) => Ok(Some(Inpaint::Concat)),
            (false, true) => Err(Field::Mask.invalid(format!(
                "this is an inpainting UNet ({} input channels: latents, mask, masked image): it needs an init \
                 image and a mask",
                u.in_channels
            ))),
        }
    }

    /// Inpainting's draws for one request (diffusers' StableDiffusionInpaintPipeline `prepare_latents`
    /// and `prepare_mask_latents`), in its order: the image's posterior sample (for an ordinary UNet or
    /// strength < 1), the noise, the masked image's posterior sample (always: diffusers draws it even
    /// where the UNet never reads it). The latents are the noise at strength 1, else the image latents
    /// noised to the first timestep. NCHW, `n` images (the image's latents repeated).
    pub(super) fn inpaint_draws(
        &mut self,
        init: &InitImage,
        n: usize,
        (scheduler, first): (&Scheduler, usize),
        kind: Inpaint,
        (h, w): (usize, usize),
        rng: &mut TorchRng,
    ) -> Result<InpaintDraws> {
        let mask = init.mask.as_ref().ok_or_else(|| Field::Mask.invalid("inpainting without a mask"))?;
        let full_strength = init.strength == 1.0;
        let image = match kind == Inpaint::Blend || !full_strength {
            true => Some(self.image_latents(&init.pixels, rng)?.repeat(n)),
            false => None,
        };
        let noise0 = rng.randn(image.as_ref().map_or(0, Vec::len).max(n * self.unet.config.out_channels * h * w));
        let latents = match &image {
            Some(img) if !full_strength => {
                let mut l = img.clone();
                scheduler.add_noise(&mut l, &noise0, first)?;
                l
            }
            // noise · init_noise_sigma (× 1, exact, but for Euler)
            _ => noise0.iter().map(|z| z * scheduler.init_noise_sigma()).collect(),
        };
        // masked_image = image · (mask < 0.5): the kept pixels, zero (mid-grey) where repainted.
        let hw = mask.numel();
        let masked_pixels: Vec<f32> =
            init.pixels.data.iter().enumerate().map(|(i, &p)| p * (1.0 - mask.data[i % hw])).collect();
        let masked = self.image_latents(&Tensor::new(init.pixels.shape.clone(), masked_pixels), rng)?.repeat(n);
        Ok(InpaintDraws {
            latents,
            image: image.unwrap_or_default(),
            noise0,
            masked,
            mask: latent_mask(mask, h, w).repeat(n),
        })
    }
}

/// One request's inpainting draws and derived inputs, NCHW, for its `n` images.
pub(super) struct InpaintDraws {
    pub(super) latents: Vec<f32>,
    /// The image's latents (empty where the UNet does not need them).
    pub(super) image: Vec<f32>,
    /// The noise the latents were drawn with.
    pub(super) noise0: Vec<f32>,
    /// The masked image's latents.
    pub(super) masked: Vec<f32>,
    /// The mask on the latent grid, `[n, 1, h, w]`.
    pub(super) mask: Vec<f32>,
}

/// A batch's inpainting inputs, NHWC, gathered request by request.
#[derive(Default)]
pub(super) struct Inpainted {
    pub(super) image: Vec<f32>,
    pub(super) noise0: Vec<f32>,
    pub(super) masked: Vec<f32>,
    pub(super) mask: Vec<f32>,
}

impl Inpainted {
    pub(super) fn extend(&mut self, d: InpaintDraws, nhwc: impl Fn(usize, Vec<f32>) -> Vec<f32>, n: usize) {
        if !d.image.is_empty() {
            self.image.extend(nhwc(n, d.image));
        }
        self.noise0.extend(nhwc(n, d.noise0));
        self.masked.extend(nhwc(n, d.masked));
        self.mask.extend(d.mask); // one channel: NCHW and NHWC agree
    }
}

/// The mask `[1, 1, H, W]` resized to the latent grid `h`x`w` by nearest-neighbour sampling, as
/// `torch.nn.functional.interpolate(mask, size=(h, w))` does: source index floor(i·(H/h)) with the
/// scale in f32.
fn latent_mask(mask: &Tensor, h: usize, w: usize) -> Vec<f32> {
    let (mh, mw) = (mask.shape[2], mask.shape[3]);
    let (sy, sx) = (mh as f32 / h as f32, mw as f32 / w as f32);
    let src = |i: usize, s: f32, n: usize| ((i as f32 * s).floor() as usize).min(n - 1);
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| mask.data[src(y, sy, mh) * mw + src(x, sx, mw)])
        .collect()
}
