//! The step family (kernels/lcm_step.cu): the sampler step over the latents, guidance included, and
//! inpainting's blend after it — launch planning and the record arms for `LcmStep` and `InpaintBlend`.

use lcm_core::lcm::{Prediction, Sampling, StepRow, StepRule};
use lcm_core::{Elem, Error, Op, Problem, Result};

use crate::cuda::abi::{LcmBlendParams, LcmPrediction, LcmStepParams, LcmStepRow, LcmStepRule};
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{dim, stride_grid, Launch, Limits, Params, Step};
use crate::cuda::record::{mislowered, Recorder};

/// The sampler step over `n` latent elements; `ptrs` = sample, model output, noise (0 at steps that take
/// none), schedule row, out.
pub fn lcm_step(n: usize, guided: bool, sampling: &Sampling, ptrs: [u64; 5], lim: Limits) -> Result<Launch> {
    let [sample, model_output, noise, row, out] = ptrs;
    const _: () = assert!(std::mem::size_of::<LcmStepRow>() == std::mem::size_of::<StepRow>());
    let rule = match sampling.rule {
        StepRule::Consistency => LcmStepRule::LCM_RULE_CONSISTENCY,
        StepRule::Ddim => LcmStepRule::LCM_RULE_DDIM,
        StepRule::Euler => LcmStepRule::LCM_RULE_EULER,
    };
    let (prediction, clip) = (sampling.prediction, sampling.clip);
    let prediction = match prediction {
        Prediction::Epsilon => LcmPrediction::LCM_PRED_EPSILON,
        Prediction::VPrediction => LcmPrediction::LCM_PRED_V,
        Prediction::Sample => LcmPrediction::LCM_PRED_SAMPLE,
    };
    Ok(Launch {
        kernel: Kernel::LcmStep,
        grid: stride_grid(n, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Step(LcmStepParams {
            sample,
            model_output,
            noise,
            row,
            out,
            n: n as u64,
            clip_range: clip.unwrap_or(0.0),
            clip: clip.is_some() as i32,
            prediction: prediction as i32,
            guided: guided as i32,
            rule: rule as i32,
            pad0: 0,
        }),
    })
}

/// Inpainting's blend over `n` latent elements of `c` channels; `ptrs` = x, image, noise, mask, schedule
/// row, out.
pub fn inpaint_blend(n: usize, c: usize, last: bool, ptrs: [u64; 6], lim: Limits) -> Result<Launch> {
    let [x, image, noise, mask, row, out] = ptrs;
    Ok(Launch {
        kernel: Kernel::InpaintBlend,
        grid: stride_grid(n, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Blend(LcmBlendParams {
            x,
            image,
            noise,
            mask,
            row,
            out,
            n: n as u64,
            c: dim(c, "channels")?,
            last: last as i32,
        }),
    })
}

pub(crate) fn record(r: &Recorder, op: &Op, problem: &Problem, steps: &mut Vec<Step>) -> Result<()> {
    if let (Op::InpaintBlend { x, image, noise, mask, schedule, step, last, out }, Problem::Blend { n, c }) =
        (*op, *problem)
    {
        let row = r.addr(schedule)? + (step * std::mem::size_of::<StepRow>()) as u64;
        let ptrs = [r.addr(x)?, r.addr(image)?, r.addr(noise)?, r.addr(mask)?, row, r.addr(out)?];
        steps.push(Step::Kernel(inpaint_blend(n, c, last, ptrs, r.limits())?));
        return Ok(());
    }
    let (Op::LcmStep { x, model_output, noise, schedule, step, guided, sampling, out }, Problem::Map { n }) =
        (*op, *problem)
    else {
        return Err(mislowered(op, problem));
    };
    r.f16_only("lcm_step")?;
    if r.elem(model_output) != Elem::Act || r.elem(x) != Elem::F32 {
        return Err(Error::backend("lcm_step: F32 latents and Act model output expected"));
    }
    let row = r.addr(schedule)? + (step * std::mem::size_of::<StepRow>()) as u64;
    let noise = match noise {
        Some((z, k)) => r.addr(z)? + (k * n * 4) as u64,
        None => 0,
    };
    let ptrs = [r.addr(x)?, r.addr(model_output)?, noise, row, r.addr(out)?];
    steps.push(Step::Kernel(lcm_step(n, guided, &sampling, ptrs, r.limits())?));
    Ok(())
}
