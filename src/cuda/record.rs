//! Turns a program (graph + lowered problems + plan) into the list of launches one run makes: resolves
//! every tensor to a device address, expands LoRA-carrying weights into their two GEMMs, and sizes the
//! scratch space the kernels share (ops run one after another on one stream, so a single region serves
//! them all). Runs once per recording, never per replay. Shapes come from the lowering
//! (`lcm_core::lower`), never from tensor shapes here.

use lcm_core::graph::{Activation, Elem, Op, Storage, TensorId};
use lcm_core::{Error, Problem, Program, Result};

use super::abi::{
    LcmAct_LCM_ACT_GELU, LcmAct_LCM_ACT_QUICK_GELU, LcmAct_LCM_ACT_RELU, LcmAct_LCM_ACT_SILU, LcmAct_LCM_ACT_TANH_CLAMP,
};
use super::backend::{CudaBackend, CudaWeight, STATUS_BYTES};
use super::launch::{self, no_f32, EltOp, GemmPtrs, Precision, Step};

pub(crate) struct Recorder<'a> {
    be: &'a CudaBackend,
    p: &'a Program,
    weights: &'a [CudaWeight],
    arena: u64,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(be: &'a CudaBackend, p: &'a Program, weights: &'a [CudaWeight], arena: u64) -> Self {
        Recorder { be, p, weights, arena }
    }

    fn elem(&self, t: TensorId) -> Elem {
        self.p.graph.tensors[t].elem
    }

    /// The element type tensor `t` is stored in here.
    fn precision(&self, t: TensorId) -> Precision {
        match self.elem(t) {
            Elem::Act => self.be.precision,
            _ => Precision::F32,
        }
    }

    /// The f16-only families refuse an f32-activation backend by name.
    fn f16_only(&self, family: &str) -> Result<()> {
        match self.be.precision {
            Precision::F16 => Ok(()),
            Precision::F32 => Err(no_f32(family)),
        }
    }

    fn addr(&self, t: TensorId) -> Result<u64> {
        match self.p.graph.tensors[t].storage {
            Storage::Weight(i) => self
                .weights
                .get(i)
                .map(|w| w.buf.ptr)
                .ok_or_else(|| Error::backend(format!("weight {i} was not uploaded"))),
            _ => self.p.plan.offsets[t]
                .map(|o| self.arena + o as u64)
                .ok_or_else(|| Error::backend(format!("tensor {t} has no place in the arena"))),
        }
    }

    fn opt_addr(&self, t: Option<TensorId>) -> Result<u64> {
        t.map_or(Ok(0), |t| self.addr(t))
    }

    /// The stored weight behind tensor `t`, checked against the shape the graph expects.
    fn weight(&self, t: TensorId) -> Result<&'a CudaWeight> {
        let Storage::Weight(i) = self.p.graph.tensors[t].storage else {
            return Err(Error::backend(format!("tensor {t} is used as a GEMM weight but is not a weight")));
        };
        let w = self.weights.get(i).ok_or_else(|| Error::backend(format!("weight {i} was not uploaded")))?;
        if w.spec.shape != self.p.graph.shape(t) {
            return Err(Error::backend(format!(
                "weight {} is {:?}, the graph wants {:?}",
                w.spec.name,
                w.spec.shape,
                self.p.graph.shape(t)
            )));
        }
        Ok(w)
    }

    /// Scratch bytes the graph's kernels need beyond the status words.
    pub(crate) fn scratch_bytes(&self) -> Result<usize> {
        let mut need = 0usize;
        for (op, problem) in self.p.graph.ops.iter().zip(&self.p.problems) {
            let bytes = match (*op, *problem) {
                (_, Problem::GroupNorm { batch, hw, c, groups }) => {
                    launch::group_norm_plan(batch, hw, c, groups, self.be.precision, self.be.limits)?.scratch_floats * 4
                }
                (Op::Conv2d { w, .. } | Op::Linear { w, .. }, Problem::Gemm(g)) => match &self.weight(w)?.lora {
                    Some(l) => g.m() * l.rp * 2,
                    None => 0,
                },
                _ => 0,
            };
            need = need.max(bytes.div_ceil(256) * 256);
        }
        Ok(need)
    }

    /// The steps of one run, with kernel workspaces at `scratch + STATUS_BYTES`.
    pub(crate) fn record(&mut self, scratch: u64) -> Result<Vec<Step>> {
        let (lim, prec) = (self.be.limits, self.be.precision);
        let work = scratch + STATUS_BYTES as u64;
        let g = &self.p.graph;
        let mut steps = Vec::with_capacity(g.ops.len() + 8);
        if g.ops.iter().any(|op| matches!(op, Op::Embed { .. })) {
            steps.push(Step::Zero32 { ptr: scratch, words: 2 });
        }
        for (op, problem) in g.ops.iter().zip(&self.p.problems) {
            let want = match op {
                Op::LcmStep { .. } => Some(Elem::F32),
                Op::Cast { .. } => None, // Act or F32 either way; the cast's kernel checks the pair
                _ => Some(Elem::Act),
            };
            if let Some(want) = want.filter(|&w| self.elem(op.output()) != w) {
                return Err(Error::backend(format!("{} writes {:?}, not {want:?}", op.name(), self.elem(op.output()))));
            }
            let mut k = |l: launch::Launch| steps.push(Step::Kernel(l));
            let bad = || Error::backend(format!("{} was lowered to {problem:?}", op.name()));
            match (*op, *problem) {
                (
                    Op::Conv2d { w, bias, residual, out, x, .. } | Op::Linear { w, bias, residual, out, x, .. },
                    Problem::Gemm(s),
                ) => {
                    let weight = self.weight(w)?;
                    let mut p = GemmPtrs {
                        x: self.addr(x)?,
                        weight: weight.buf.ptr,
                        bias: self.opt_addr(bias)?,
                        residual: self.opt_addr(residual)?,
                        out: self.addr(out)?,
                        a2: 0,
                        weight2: 0,
                    };
                    let mut k2 = 0;
                    if let Some(l) = &weight.lora {
                        // u = x·Aᵀ (a conv with the LoRA's down weight, same taps), then [x | u]·[W | s·B]ᵀ.
                        let down = lcm_core::Gemm { co: l.rp, geglu: false, ..s };
                        k(launch::gemm(
                            &down,
                            0,
                            GemmPtrs { x: p.x, weight: l.down_ptr(), out: work, ..Default::default() },
                            prec,
                            lim,
                        )?);
                        k2 = l.rp;
                        p.a2 = work;
                        p.weight2 = l.up_ptr();
                    }
                    k(launch::gemm(&s, k2, p, prec, lim)?);
                }
                (Op::GroupNorm { x, gamma, beta, eps, silu, out, .. }, Problem::GroupNorm { batch, hw, c, groups }) => {
                    let ptrs = [self.addr(x)?, self.addr(gamma)?, self.addr(beta)?, self.addr(out)?];
                    for l in launch::group_norm(batch, hw, c, groups, eps, silu, ptrs, work, prec, lim)? {
                        k(l);
                    }
                }
                (Op::LayerNorm { x, gamma, beta, eps, out }, Problem::LayerNorm { rows, c }) => {
                    self.f16_only("layer_norm")?;
                    let ptrs = [self.addr(x)?, self.addr(gamma)?, self.addr(beta)?, self.addr(out)?];
                    k(launch::layer_norm(rows, c, eps, ptrs)?);
                }
                (Op::Attention { q, k: kt, v, out, .. }, Problem::Attention(s)) => {
                    let ptrs = [self.addr(q)?, self.addr(kt)?, self.addr(v)?, self.addr(out)?];
                    k(launch::attention(&s, ptrs[0], ptrs[1], ptrs[2], ptrs[3], prec, lim)?);
                }
                (Op::Geglu { x, out }, Problem::Geglu { rows, c }) => {
                    k(launch::eltwise(EltOp::Geglu { c }, rows * c, self.addr(x)?, 0, self.addr(out)?, prec, lim)?);
                }
                (Op::Act { x, act, out }, Problem::Map { n }) => {
                    let a = match act {
                        Activation::Silu => LcmAct_LCM_ACT_SILU,
                        Activation::Gelu => LcmAct_LCM_ACT_GELU,
                        Activation::QuickGelu => LcmAct_LCM_ACT_QUICK_GELU,
                        Activation::Relu => LcmAct_LCM_ACT_RELU,
                        Activation::TanhClamp => LcmAct_LCM_ACT_TANH_CLAMP,
                    };
                    k(launch::eltwise(EltOp::Act(a), n, self.addr(x)?, 0, self.addr(out)?, prec, lim)?);
                }
                (Op::Add { a, b, out }, Problem::Map { n }) => {
                    k(launch::eltwise(EltOp::Add, n, self.addr(a)?, self.addr(b)?, self.addr(out)?, prec, lim)?);
                }
                (Op::AddChannel { x, bias, out }, Problem::AddChannel { batch, hw, c }) => {
                    let op = EltOp::AddChannel { hw, c };
                    let ptrs = [self.addr(x)?, self.addr(bias)?, self.addr(out)?];
                    k(launch::eltwise(op, batch * hw * c, ptrs[0], ptrs[1], ptrs[2], prec, lim)?);
                }
                (Op::Concat { a, b, out }, Problem::Concat { rows, ca, cb }) => {
                    self.f16_only("concat")?;
                    k(launch::concat(rows, ca, cb, self.addr(a)?, self.addr(b)?, self.addr(out)?, lim)?);
                }
                (Op::Upsample { x, out }, Problem::Upsample { batch, h, w, c, ho, wo }) => {
                    k(launch::upsample([batch, h, w, c, ho, wo], self.addr(x)?, self.addr(out)?, prec, lim)?);
                }
                (Op::Embed { ids, table, positions, out }, Problem::Embed { batch, tokens, c, vocab }) => {
                    self.f16_only("embed")?;
                    if self.elem(ids) != Elem::I32 {
                        return Err(Error::backend("embed: token ids must be I32"));
                    }
                    let ptrs = [self.addr(ids)?, self.addr(table)?, self.addr(positions)?, self.addr(out)?, scratch];
                    k(launch::embed(batch, tokens, c, vocab, ptrs, lim)?);
                }
                (Op::TimestepEmbed { t, row, flip_sin_to_cos, freq_shift, out }, Problem::Timestep { batch, dim }) => {
                    self.f16_only("timestep_embed")?;
                    let t = self.addr(t)? + (row * batch * 2) as u64; // row `row` of f16 timesteps
                    k(launch::timestep_embed(batch, dim, flip_sin_to_cos, freq_shift, t, self.addr(out)?, lim)?);
                }
                (Op::Scale { x, mul, add, out }, Problem::Map { n }) => {
                    k(launch::eltwise(EltOp::Scale { mul, add }, n, self.addr(x)?, 0, self.addr(out)?, prec, lim)?);
                }
                (Op::Cast { x, div, add, out }, Problem::Cast { n, n_in }) => {
                    let elems = [self.precision(x), self.precision(out)];
                    k(launch::cast(elems, [n, n_in], div, add, self.addr(x)?, self.addr(out)?, lim)?);
                }
                (
                    Op::LcmStep { x, model_output, noise, schedule, step, guided, prediction, clip, out },
                    Problem::Map { n },
                ) => {
                    self.f16_only("lcm_step")?;
                    if self.elem(model_output) != Elem::Act || self.elem(x) != Elem::F32 {
                        return Err(Error::backend("lcm_step: F32 latents and Act model output expected"));
                    }
                    let row = self.addr(schedule)? + (step * std::mem::size_of::<lcm_core::lcm::StepRow>()) as u64;
                    let noise = match noise {
                        Some(z) => self.addr(z)? + (step * n * 4) as u64,
                        None => 0,
                    };
                    let ptrs = [self.addr(x)?, self.addr(model_output)?, noise, row, self.addr(out)?];
                    k(launch::lcm_step(n, guided, prediction, clip, ptrs, lim)?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(steps)
    }
}
