//! `lcm bench --lora-rank R`: an unmerged LoRA of rank R on every LoRA target of the UNet, through the
//! CUDA backend's second-K-segment GEMM (docs/kernels.md, "LoRA"), so the bench shows what run-time
//! (swappable) adapters cost per step against merged weights, and what a swap costs: `lora_swap` loads
//! a prepared LoRA (one device copy, as `Pipeline::use_loras`), `lora_set` fills every buffer from the
//! host (as `Pipeline::set_loras`). The factors are seeded random numbers: only their shapes matter for
//! the timing.

use lcm_core::{Backend, Error, LoraDelta, Result, WeightKind, WeightSpec};
use lcm_cpu::CpuBackend;
use lcm_models::checkpoint::synthetic::random_source;
use lcm_models::Unet;

use lcm_pipeline::lora_swap::unet_lora_targets;

use crate::cuda::CudaBackend;

/// Parameters of a rank-`rank` LoRA on `spec`: down `[rank, in·kh·kw]` plus up `[out, rank]`.
pub fn lora_params(spec: &WeightSpec, rank: usize) -> usize {
    let fan_in: usize = spec.shape[1..].iter().product();
    rank * (fan_in + spec.shape[0])
}

/// What `--lora-rank` attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraSummary {
    pub rank: usize,
    pub targets: usize,
    pub params: usize,
}

/// The user scale of the bench's LoRA: with fan-in scaled factors it keeps the delta below the base
/// weight, as a real adapter's is.
pub const BENCH_LORA_SCALE: f32 = 0.25;

/// Calls `f(weight index, down, up)` with seeded random factors of `rank` for every LoRA target in
/// `specs`, one target at a time (rank 64 on SD1.5 is 67 M values: not all held at once). down is
/// `[rank, in, kh, kw]` (or `[rank, in]`), up `[out, rank]`, both from the synthetic-weight source
/// (fan-in scaled, f16-rounded). A GPU test merges the same factors on the CPU to check the unmerged path.
pub fn for_each_random_lora(
    specs: &[WeightSpec],
    rank: usize,
    seed: u64,
    mut f: impl FnMut(usize, &[f32], &[f32]) -> Result<()>,
) -> Result<LoraSummary> {
    if rank == 0 {
        return Err(Error::invalid("--lora-rank", "0: expected at least 1"));
    }
    let targets = unet_lora_targets(specs);
    let mut source = random_source(seed ^ 0x4C6F_5241);
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let mut summary = LoraSummary { rank, targets: targets.len(), params: 0 };
    for i in targets {
        let spec = &specs[i];
        let mut down_shape = spec.shape.clone();
        down_shape[0] = rank;
        let down_spec = WeightSpec { name: format!("{}.lora_down", spec.name), shape: down_shape, kind: spec.kind };
        let up_shape = vec![spec.shape[0], rank];
        let up_spec = WeightSpec { name: format!("{}.lora_up", spec.name), shape: up_shape, kind: WeightKind::Linear };
        source(&down_spec, &mut down)?;
        source(&up_spec, &mut up)?;
        f(i, &down, &up)?;
        summary.params += lora_params(spec, rank);
    }
    Ok(summary)
}

/// Two seeded random LoRAs of one rank prepared on the device for the UNet's LoRA buffers, and the
/// second's deltas on the host: what the `lora_swap` stage (a prepared swap: one device copy) and the
/// `lora_set` stage (converted and uploaded from the host, buffer by buffer) time.
pub struct LoraSwaps<B: Backend> {
    /// Prepared images of LoRA A (loaded first) and LoRA B.
    pub images: [B::LoraImage; 2],
    /// (UNet weight index, LoRA B's delta with the bench scale folded into up) for every target.
    pub host: Vec<(usize, LoraDelta)>,
}

/// A backend `lcm bench` runs on: the unmerged LoRA is the backend's own business.
pub trait BenchBackend: Backend + Sized {
    /// Gives every LoRA target of `unet` buffers (one region) and loads the seeded random LoRA of
    /// [`for_each_random_lora`] into them, unmerged, with [`BENCH_LORA_SCALE`]; also prepares a second
    /// one (seed + 1) for the swap stages.
    fn attach_unmerged_lora(
        &self,
        unet: &mut Unet<Self>,
        rank: usize,
        seed: u64,
    ) -> Result<(LoraSummary, LoraSwaps<Self>)>;

    /// Waits until the work queued so far has run (for timing what is asynchronous).
    fn sync(&self) -> Result<()>;
}

/// The CLI checks this before loading anything; this is the library's own refusal.
pub fn cpu_refusal() -> Error {
    Error::invalid(
        "--lora-rank",
        "an unmerged LoRA runs on the CUDA backend only (the CPU backend merges LoRAs into the weights at \
         load, which costs nothing per step); use --device cuda, or leave --lora-rank out",
    )
}

impl BenchBackend for CpuBackend {
    fn attach_unmerged_lora(&self, _: &mut Unet<Self>, _: usize, _: u64) -> Result<(LoraSummary, LoraSwaps<Self>)> {
        Err(cpu_refusal())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The seeded random LoRA's deltas on every target of `specs`, with [`BENCH_LORA_SCALE`] folded in.
fn random_deltas(specs: &[WeightSpec], rank: usize, seed: u64) -> Result<(LoraSummary, Vec<(usize, LoraDelta)>)> {
    let mut deltas = Vec::new();
    let summary = for_each_random_lora(specs, rank, seed, |i, down, up| {
        let up = up.iter().map(|&u| BENCH_LORA_SCALE * u).collect();
        deltas.push((i, LoraDelta { down: down.to_vec(), up, rank }));
        Ok(())
    })?;
    Ok((summary, deltas))
}

impl BenchBackend for CudaBackend {
    fn attach_unmerged_lora(
        &self,
        unet: &mut Unet<Self>,
        rank: usize,
        seed: u64,
    ) -> Result<(LoraSummary, LoraSwaps<Self>)> {
        let weights = &mut unet.runner_mut().weights;
        let specs = weights.specs.clone();
        // Attaching changes the weights' fingerprint, so the next run records (and captures) the LoRA
        // launches.
        self.attach_loras(&mut weights.weights, &specs, &unet_lora_targets(&specs), rank)?;
        let image = |deltas: &[(usize, LoraDelta)]| {
            let entries: Vec<_> = deltas.iter().map(|(i, d)| (&weights.weights[*i], &specs[*i], Some(d))).collect();
            self.lora_image(&entries)
        };
        let (summary, a) = random_deltas(&specs, rank, seed)?;
        let image_a = image(&a)?;
        drop(a); // one LoRA's factors on the host at a time (rank 64 on SDXL: ~0.8 GB of f32)
        let (_, b) = random_deltas(&specs, rank, seed + 1)?;
        let image_b = image(&b)?;
        self.load_lora_image(&image_a)?;
        Ok((summary, LoraSwaps { images: [image_a, image_b], host: b }))
    }

    fn sync(&self) -> Result<()> {
        self.synchronize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lcm_models::{arch::sd15, UnetConfig};
    use std::path::Path;

    /// DESIGN.md: LCM-LoRA (rank 64) on SD1.5 has 67.3 M parameters on these targets.
    #[test]
    fn sd15_targets_at_rank_64_are_lcm_lora_sized() {
        let cfg = UnetConfig::from_json(Path::new("sd15"), sd15::UNET_CONFIG).unwrap();
        let specs = cfg.graph(1, 8, 8, 1).unwrap().weights;
        let targets = unet_lora_targets(&specs);
        let params: usize = targets.iter().map(|&i| lora_params(&specs[i], 64)).sum();
        let names: Vec<&str> = targets.iter().map(|&i| specs[i].name.as_str()).collect();
        assert!(names.contains(&"down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"));
        assert!(names.contains(&"up_blocks.0.upsamplers.0.conv.weight"));
        assert!(names.contains(&"down_blocks.1.resnets.0.conv_shortcut.weight"));
        assert!(!names
            .iter()
            .any(|n| n.starts_with("conv_in") || n.starts_with("conv_out") || n.contains("time_embedding")));
        println!("{} targets, {params} parameters at rank 64", targets.len());
        assert!((67_000_000..67_600_000).contains(&params), "{} targets, {params} parameters", targets.len());
    }
}
