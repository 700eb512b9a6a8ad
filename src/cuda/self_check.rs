//! The start-up self-check: a few tiny launches of every kernel family against the CPU backend, so a
//! GPU (or driver, or build) that computes wrong answers is refused before it serves a request, never
//! silently used. Milliseconds on a GPU; `LCM_SKIP_SELF_CHECK=1` skips it (a service that ran it once).

use lcm_core::lcm::{Prediction, Sampling, StepRow, StepRule, STEP_ROW};
use lcm_core::{
    rel_l2, Activation, Backend, Elem, Error, Executor, Graph, GraphBuilder, HostData, ModelWeights, Result, WeightKind,
};
use lcm_cpu::CpuBackend;

use super::{CudaBackend, Precision};

/// f16 kernels against the f32 reference: what the GPU tests allow per kernel.
const TOL: f64 = 1e-2;

/// xorshift: deterministic data in [-1, 1).
struct Data(u64);

impl Data {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect()
    }
}

fn graph(f: impl FnOnce(&mut GraphBuilder) -> Vec<usize>) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    for out in f(&mut b) {
        b.output(out);
    }
    b.finish()
}

/// One kernel family's check: a small graph, run with activations of `precision`.
pub struct Family {
    pub name: &'static str,
    pub precision: Precision,
    pub graph: Graph,
}

/// One small graph per kernel family (each launch path: vector and scalar loads, both GEMM tiles, the
/// GEGLU epilogue, narrow, causal and wide attention, multi-chunk GroupNorm, the loop's own ops, and the
/// f32 instantiations a `force_upcast` VAE runs): what the start-up self-check runs, and the GPU suites'
/// first smoke test.
pub fn families() -> Result<Vec<Family>> {
    let f16 = |name, graph| Family { name, precision: Precision::F16, graph };
    Ok(vec![
        f16(
            "GEMM (conv, linear, GEGLU epilogue)",
            graph(|b| {
                let x = b.input(&[1, 9, 7, 16], Elem::Act);
                let c = b.conv2d("conv", x, 24, 3, 1, [1; 4], true);
                let rgb = b.input(&[1, 6, 5, 3], Elem::Act);
                let s = b.conv2d("conv_rgb", rgb, 8, 3, 2, [0, 0, 1, 1], true);
                let t = b.input(&[1, 300, 64], Elem::Act);
                let l = b.linear("big", t, 520, true);
                let g = b.linear("ff", t, 64, true);
                vec![c, s, l, b.geglu(g)]
            })?,
        ),
        f16(
            "attention",
            graph(|b| {
                [(70, 2, 40, false), (33, 2, 64, true), (20, 1, 512, false)]
                    .iter()
                    .map(|&(n, heads, d, causal)| {
                        let q = b.input(&[1, n, heads * d], Elem::Act);
                        let k = b.input(&[1, n, heads * d], Elem::Act);
                        let v = b.input(&[1, n, heads * d], Elem::Act);
                        b.attention(q, k, v, heads, causal)
                    })
                    .collect()
            })?,
        ),
        f16(
            "GroupNorm and LayerNorm",
            graph(|b| {
                let x = b.input(&[1, 40, 20, 64], Elem::Act);
                let g = b.group_norm("gn", x, 32, 1e-5, true);
                let y = b.input(&[2, 5, 12], Elem::Act);
                let s = b.group_norm("gn_scalar", y, 4, 1e-5, false);
                vec![g, s, b.layer_norm("ln", x, 1e-5)]
            })?,
        ),
        f16(
            "element-wise (activations, add, add_scaled, concat, upsample, GEGLU, embed, timestep)",
            graph(|b| {
                let x = b.input(&[1, 4, 4, 16], Elem::Act);
                let y = b.activation(x, Activation::Gelu);
                let y = b.add(x, y);
                let y = b.activation(y, Activation::Relu);
                let y = b.scale(y, 4.0, -2.0);
                let y = b.activation(y, Activation::TanhClamp);
                let y = b.scale(y, 0.5, 0.1);
                let t = b.input(&[1], Elem::Act);
                let te = b.timestep_embed(t, 16, true, 0.0);
                let y = b.add_channel(y, te);
                let w = b.input(&[2, 1], Elem::F32); // row 1 read: a ControlNet's weight per image
                let y = b.add_scaled(y, x, w, 1);
                let y = b.concat(y, x);
                let up = b.upsample(y, 8, 8);
                let ids = b.input(&[1, 5], Elem::I32);
                let table = b.weight("table", &[30, 8], WeightKind::Plain);
                let pos = b.weight("pos", &[5, 8], WeightKind::Plain);
                let e = b.embed(ids, table, pos);
                vec![up, b.geglu(e)]
            })?,
        ),
        f16(
            "denoising step (cast, LCM/DDIM/Euler steps with guidance, scale_model_input, inpainting blend)",
            graph(|b| {
                let x = b.input(&[1, 3, 5, 4], Elem::F32);
                let eps = b.input(&[2, 3, 5, 4], Elem::Act);
                let schedule = b.input(&[2, STEP_ROW], Elem::F32);
                let noise = b.input(&[1, 1, 3, 5, 4], Elem::F32);
                let doubled = b.cast(x, Elem::Act, 2, 1.0, 0.0);
                let next = b.lcm_step(x, eps, Some((noise, 0)), schedule, 0, true, Sampling::LCM);
                let v = Sampling { rule: StepRule::Ddim, prediction: Prediction::VPrediction, clip: None };
                let next = b.lcm_step(next, eps, Some((noise, 0)), schedule, 1, true, v);
                let scaled = b.scale_model_input(next, 2, schedule, 1);
                let euler = Sampling { rule: StepRule::Euler, ..Sampling::LCM };
                let next = b.lcm_step(next, eps, None, schedule, 1, true, euler);
                let (image, mask) = (b.input(&[1, 3, 5, 4], Elem::F32), b.input(&[1, 3, 5, 1], Elem::F32));
                let blended = b.inpaint_blend(next, image, x, mask, schedule, 0, false);
                vec![doubled, scaled, blended, b.cast(next, Elem::Act, 1, 0.18215, 0.0)]
            })?,
        ),
        Family {
            name: "f32 activations (a force_upcast VAE: tf32 GEMM tiles, wide attention, GroupNorm, element-wise)",
            precision: Precision::F32,
            graph: graph(|b| {
                let z = b.input(&[1, 6, 5, 4], Elem::F32);
                let x = b.cast(z, Elem::Act, 1, 1.0, 0.0);
                let x = b.conv2d("conv_in", x, 32, 3, 1, [1; 4], true);
                let x = b.group_norm("gn", x, 8, 1e-6, true);
                let r = b.conv2d("conv", x, 32, 3, 1, [1; 4], true);
                let x = b.add(x, r);
                let x = b.activation(x, Activation::Silu);
                let x = b.scale(x, 0.5, 0.25);
                let t = b.input(&[1, 30, 512], Elem::Act);
                let a = b.attention(t, t, t, 1, false);
                let big = b.input(&[1, 300, 64], Elem::Act);
                let l = b.linear("big", big, 520, true);
                vec![b.upsample(x, 12, 10), a, l]
            })?,
        },
    ])
}

fn upload<B: Backend>(be: &B, g: &Graph, values: &[Vec<f32>]) -> Result<ModelWeights<B>> {
    let weights = g.weights.iter().zip(values).map(|(s, v)| be.upload_weight(s, v)).collect::<Result<_>>()?;
    Ok(ModelWeights::new(g.weights.clone(), weights))
}

/// Runs `g` on both backends with the same data; the worst relative L2 over its outputs.
fn compare(gpu: &CudaBackend, g: Graph, data: &mut Data) -> Result<f64> {
    let cpu = CpuBackend::new();
    // Weights scaled by 1/sqrt(fan-in), so activations stay O(1).
    let values: Vec<Vec<f32>> = g
        .weights
        .iter()
        .map(|s| {
            data.vec(s.shape.iter().product(), 1.0 / (s.shape[1..].iter().product::<usize>().max(1) as f32).sqrt())
        })
        .collect();
    let (gw, cw) = (upload(gpu, &g, &values)?, upload(&cpu, &g, &values)?);
    let mut ge = Executor::new(gpu, g.clone(), &gw)?;
    let mut ce = Executor::new(&cpu, g.clone(), &cw)?;
    for (i, &t) in g.inputs.iter().enumerate() {
        let d = &g.tensors[t];
        match d.elem {
            Elem::I32 => {
                let ids: Vec<i32> = (0..d.numel() as i32).map(|k| (k * 7) % 30).collect();
                ge.set_input(gpu, i, HostData::I32(&ids))?;
                ce.set_input(&cpu, i, HostData::I32(&ids))?;
            }
            _ => {
                let v = if d.shape.last() == Some(&STEP_ROW) {
                    // Real steps' coefficients (t = 999 of SD1.5's schedule, guidance 1.5), every rule's.
                    let row = StepRow {
                        timestep: 999.0,
                        guidance: 1.5,
                        sqrt_alpha_t: 0.0683,
                        sqrt_beta_t: 0.9977,
                        sigma: 14.61,
                        sigma_sq1: 214.45,
                        input_div: 14.644,
                        x0_coef: 0.23,
                        skip_coef: 0.001,
                        eps_coef: 0.97,
                        dt: -6.3,
                        renoise: 0.9,
                        noise: 0.43,
                        keep_image: 0.23,
                        keep_noise: 0.97,
                        pad: 0.0,
                    };
                    row.as_slice().repeat(d.numel() / STEP_ROW)
                } else {
                    data.vec(d.numel(), 1.0)
                };
                ge.set_input(gpu, i, HostData::F32(&v))?;
                ce.set_input(&cpu, i, HostData::F32(&v))?;
            }
        }
    }
    ge.run(gpu, &gw)?;
    ce.run(&cpu, &cw)?;
    let mut worst = 0.0f64;
    for i in 0..g.outputs.len() {
        let e = rel_l2(&ge.output(gpu, i)?, &ce.output(&cpu, i)?);
        worst = if e.is_nan() { f64::INFINITY } else { worst.max(e) };
    }
    Ok(worst)
}

impl CudaBackend {
    /// Runs every kernel family once at a tiny size against the CPU backend; an error names the first
    /// family whose results are off (or whose launch failed).
    pub fn self_check(&self) -> Result<()> {
        let mut data = Data(0x9E37_79B9_7F4A_7C15);
        for Family { name: family, precision, graph: g } in families()? {
            let e = compare(&self.with_precision(precision), g, &mut data)
                .map_err(|e| Error::backend(format!("self-check of {family} on {}: {e}", self.device_name())))?;
            if e >= TOL {
                return Err(Error::backend(format!(
                    "self-check of {family} on {}: relative L2 {e:.2e} against the CPU (limit {TOL:.0e}); this GPU/driver/build computes wrong results",
                    self.device_name()
                )));
            }
        }
        Ok(())
    }
}
