//! Turns a program (graph + lowered problems + plan) into the list of launches one run makes: resolves
//! every tensor to a device address and hands each op to its kernel family (`ops/<family>.rs`), which
//! plans its launches; sizes the scratch space the kernels share (ops run one after another on one
//! stream, so a single region serves them all). Runs once per recording, never per replay. Shapes come
//! from the lowering (`lcm_core::lower`), never from tensor shapes here.

use lcm_core::graph::{Elem, Op, Storage, TensorId};
use lcm_core::{Error, Problem, Program, Result};

use super::backend::{CudaBackend, CudaWeight, STATUS_BYTES};
use super::launch::{no_f32, Launch, Limits, Precision, Step};
use super::lora::LoraBuffers;
use super::ops::{attention, eltwise, gemm, lcm_step, norm};

/// Where a plan without a device puts the arena, the scratch buffer and weight `i` (`PLAN_WEIGHTS` +
/// 256·i): non-zero, since the planners read a zero address as "absent" (no bias, no residual).
const PLAN_ARENA: u64 = 1 << 40;
const PLAN_SCRATCH: u64 = 1 << 41;
const PLAN_WEIGHTS: u64 = 1 << 42;

pub(crate) struct Recorder<'a> {
    limits: Limits,
    precision: Precision,
    p: &'a Program,
    /// The uploaded weights; `None` when planning without a device (`plan_launches`).
    weights: Option<&'a [&'a CudaWeight]>,
    arena: u64,
    /// The scratch buffer: status words (the embed error flag), then kernel workspaces.
    scratch: u64,
}

/// A weight as the GEMM planner needs it: its address and the unmerged LoRA attached to it.
pub(crate) struct WeightRef<'a> {
    pub(crate) ptr: u64,
    pub(crate) lora: Option<&'a LoraBuffers>,
}

/// The launches one run of `program` makes on a GPU with `limits` whose activations are `precision`,
/// each with the index of the op (in `program.graph.ops`) it runs: the recorder the backend runs, with
/// placeholder addresses and no LoRA, so no device is needed (`lcm bench --plan`). Memsets (the embed
/// error flag) are left out: they are not kernels.
pub fn plan_launches(program: &Program, limits: Limits, precision: Precision) -> Result<Vec<(usize, Launch)>> {
    let mut r = Recorder { limits, precision, p: program, weights: None, arena: PLAN_ARENA, scratch: 0 };
    let (steps, ops) = r.record_ops(PLAN_SCRATCH)?;
    Ok(steps
        .into_iter()
        .zip(ops)
        .filter_map(|(s, op)| match s {
            Step::Kernel(l) => Some((op, l)),
            Step::Zero32 { .. } => None,
        })
        .collect())
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(be: &'a CudaBackend, p: &'a Program, weights: &'a [&'a CudaWeight], arena: u64) -> Self {
        Recorder { limits: be.limits, precision: be.precision, p, weights: Some(weights), arena, scratch: 0 }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// What `Elem::Act` tensors are stored in.
    pub(crate) fn act_precision(&self) -> Precision {
        self.precision
    }

    pub(crate) fn elem(&self, t: TensorId) -> Elem {
        self.p.graph.tensors[t].elem
    }

    /// The element type tensor `t` is stored in here.
    pub(crate) fn precision(&self, t: TensorId) -> Precision {
        match self.elem(t) {
            Elem::Act => self.precision,
            _ => Precision::F32,
        }
    }

    /// The f16-only families refuse an f32-activation backend by name.
    pub(crate) fn f16_only(&self, family: &str) -> Result<()> {
        match self.precision {
            Precision::F16 => Ok(()),
            Precision::F32 => Err(no_f32(family)),
        }
    }

    pub(crate) fn addr(&self, t: TensorId) -> Result<u64> {
        match self.p.graph.tensors[t].storage {
            Storage::Weight(_) => self.weight_at(t).map(|w| w.ptr),
            _ => self.p.plan.offsets[t]
                .map(|o| self.arena + o as u64)
                .ok_or_else(|| Error::backend(format!("tensor {t} has no place in the arena"))),
        }
    }

    pub(crate) fn opt_addr(&self, t: Option<TensorId>) -> Result<u64> {
        t.map_or(Ok(0), |t| self.addr(t))
    }

    /// The status words (an `int[2]` error flag the embed kernel sets), zeroed at the start of a run.
    pub(crate) fn status(&self) -> u64 {
        self.scratch
    }

    /// The kernels' shared workspace, [`Recorder::scratch_bytes`] long.
    pub(crate) fn work(&self) -> u64 {
        self.scratch + STATUS_BYTES as u64
    }

    /// The stored weight behind tensor `t`, checked against the shape the graph expects.
    pub(crate) fn weight(&self, t: TensorId) -> Result<WeightRef<'a>> {
        let Storage::Weight(_) = self.p.graph.tensors[t].storage else {
            return Err(Error::backend(format!("tensor {t} is used as a GEMM weight but is not a weight")));
        };
        self.weight_at(t)
    }

    fn weight_at(&self, t: TensorId) -> Result<WeightRef<'a>> {
        let Storage::Weight(i) = self.p.graph.tensors[t].storage else {
            return Err(Error::backend(format!("tensor {t} is not a weight")));
        };
        let Some(weights) = self.weights else {
            return match self.p.graph.weights.get(i) {
                Some(_) => Ok(WeightRef { ptr: PLAN_WEIGHTS + 256 * i as u64, lora: None }),
                None => Err(Error::backend(format!("weight {i} is not in the graph"))),
            };
        };
        let w = *weights.get(i).ok_or_else(|| Error::backend(format!("weight {i} was not uploaded")))?;
        if w.spec.shape != self.p.graph.shape(t) {
            return Err(Error::backend(format!(
                "weight {} is {:?}, the graph wants {:?}",
                w.spec.name,
                w.spec.shape,
                self.p.graph.shape(t)
            )));
        }
        Ok(WeightRef { ptr: w.buf.ptr, lora: w.lora.as_deref() })
    }

    /// Scratch bytes the graph's kernels need beyond the status words.
    pub(crate) fn scratch_bytes(&self) -> Result<usize> {
        let mut need = 0usize;
        for (op, problem) in self.p.graph.ops.iter().zip(&self.p.problems) {
            let bytes = match problem {
                Problem::GroupNorm { .. } => norm::scratch_bytes(self, problem)?,
                Problem::Gemm(_) => gemm::scratch_bytes(self, op, problem)?,
                _ => 0,
            };
            need = need.max(bytes.div_ceil(256) * 256);
        }
        Ok(need)
    }

    /// The steps of one run, with the status words at `scratch` and kernel workspaces after them.
    pub(crate) fn record(&mut self, scratch: u64) -> Result<Vec<Step>> {
        Ok(self.record_ops(scratch)?.0)
    }

    /// [`Recorder::record`], with the index of the op each step runs (the memset counts as op 0's).
    fn record_ops(&mut self, scratch: u64) -> Result<(Vec<Step>, Vec<usize>)> {
        self.scratch = scratch;
        let g = &self.p.graph;
        let mut steps = Vec::with_capacity(g.ops.len() + 8);
        let mut step_ops = Vec::with_capacity(g.ops.len() + 8);
        if g.ops.iter().any(|op| matches!(op, Op::Embed { .. })) {
            steps.push(Step::Zero32 { ptr: self.status(), words: 2 });
        }
        for (i, (op, problem)) in g.ops.iter().zip(&self.p.problems).enumerate() {
            let want = match op {
                Op::LcmStep { .. } | Op::InpaintBlend { .. } => Some(Elem::F32),
                Op::Cast { .. } => None, // Act or F32 either way; the cast's kernel checks the pair
                _ => Some(Elem::Act),
            };
            if let Some(want) = want.filter(|&w| self.elem(op.output()) != w) {
                return Err(Error::backend(format!("{} writes {:?}, not {want:?}", op.name(), self.elem(op.output()))));
            }
            // One arm per kernel family; exhaustive, so a new op does not compile until a family takes it.
            match op {
                Op::Conv2d { .. } | Op::Linear { .. } => gemm::record(self, op, problem, &mut steps)?,
                Op::Attention { .. } => attention::record(self, op, problem, &mut steps)?,
                Op::GroupNorm { .. } | Op::LayerNorm { .. } => norm::record(self, op, problem, &mut steps)?,
                Op::Map { .. }
                | Op::Geglu { .. }
                | Op::AddChannel { .. }
                | Op::AddScaled { .. }
                | Op::Concat { .. }
                | Op::Upsample { .. }
                | Op::Embed { .. }
                | Op::TimestepEmbed { .. }
                | Op::Cast { .. } => eltwise::record(self, op, problem, &mut steps)?,
                Op::LcmStep { .. } | Op::InpaintBlend { .. } => lcm_step::record(self, op, problem, &mut steps)?,
            }
            step_ops.resize(steps.len(), i);
        }
        Ok((steps, step_ops))
    }
}

/// The error of an op that reached a family with a problem of another kind (a lowering bug).
pub(crate) fn mislowered(op: &Op, problem: &Problem) -> Error {
    Error::backend(format!("{} was lowered to {problem:?}", op.name()))
}
