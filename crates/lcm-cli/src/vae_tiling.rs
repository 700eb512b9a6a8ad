//! `--vae-tiling [--vae-tile-size PX]`, shared by generate, serve and bench.

use clap::Args;

#[derive(Args, Debug, Clone, Copy)]
pub struct VaeTilingArgs {
    /// Decode (and for img2img encode) in overlapping tiles, as diffusers' enable_vae_tiling(): the
    /// VAE's memory stays that of one tile whatever the image size (2048x2048 fits); seams are blended,
    /// so the image differs slightly from an untiled one. Tiles are the VAE config's sample_size (512
    /// for SD1.5, 1024 for SDXL) unless --vae-tile-size is given. Images within one tile are not tiled.
    #[arg(long)]
    pub vae_tiling: bool,
    /// With --vae-tiling: the tile side in pixels, a multiple of 32 (smaller tiles, less memory).
    #[arg(long, value_name = "PX", requires = "vae_tiling")]
    pub vae_tile_size: Option<usize>,
}

impl VaeTilingArgs {
    /// What `Pipeline::set_vae_tiling` takes: `None` (off), `Some(None)` (the VAE's tile) or `Some(Some(px))`.
    pub fn setting(&self) -> Option<Option<usize>> {
        self.vae_tiling.then_some(self.vae_tile_size)
    }
}
