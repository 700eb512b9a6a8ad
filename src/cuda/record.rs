//! Turns a graph into the list of launches one run makes: resolves every tensor to a device address,
//! fuses `Linear → Geglu` into the GEMM epilogue, expands LoRA-carrying weights into their two GEMMs,
//! and sizes the scratch space the kernels share (ops run one after another on one stream, so a single
//! region serves them all). Runs once per recording, never per replay.

use lcm_core::graph::{Activation, Elem, Graph, Op, Storage, TensorId};
use lcm_core::planner::ArenaPlan;
use lcm_core::{Error, Result};

use super::abi::{LcmAct_LCM_ACT_GELU, LcmAct_LCM_ACT_QUICK_GELU, LcmAct_LCM_ACT_SILU};
use super::backend::{CudaBackend, CudaWeight, STATUS_BYTES};
use super::launch::{self, AttnShape, EltOp, GemmPtrs, GemmShape, Step};

/// Whether tensors `a` and `b` occupy disjoint arena bytes (weights live outside the arena).
fn arena_disjoint(plan: &ArenaPlan, a: TensorId, b: TensorId) -> bool {
    match (plan.offsets[a], plan.offsets[b]) {
        (Some(oa), Some(ob)) => oa + plan.bytes[a] <= ob || ob + plan.bytes[b] <= oa,
        _ => true,
    }
}

pub(crate) struct Recorder<'a> {
    be: &'a CudaBackend,
    g: &'a Graph,
    plan: &'a ArenaPlan,
    weights: &'a [CudaWeight],
    arena: u64,
    uses: Vec<usize>,
    is_output: Vec<bool>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(
        be: &'a CudaBackend,
        g: &'a Graph,
        plan: &'a ArenaPlan,
        weights: &'a [CudaWeight],
        arena: u64,
    ) -> Self {
        let mut is_output = vec![false; g.tensors.len()];
        for &t in &g.outputs {
            is_output[t] = true;
        }
        Recorder { be, g, plan, weights, arena, uses: g.use_counts(), is_output }
    }

    fn shape(&self, t: TensorId) -> &[usize] {
        &self.g.tensors[t].shape
    }

    fn numel(&self, t: TensorId) -> usize {
        self.g.tensors[t].numel()
    }

    fn last(&self, t: TensorId) -> usize {
        self.shape(t).last().copied().unwrap_or(0)
    }

    fn addr(&self, t: TensorId) -> Result<u64> {
        match self.g.tensors[t].storage {
            Storage::Weight(i) => self
                .weights
                .get(i)
                .map(|w| w.buf.ptr)
                .ok_or_else(|| Error::backend(format!("weight {i} was not uploaded"))),
            _ => self.plan.offsets[t]
                .map(|o| self.arena + o as u64)
                .ok_or_else(|| Error::backend(format!("tensor {t} has no place in the arena"))),
        }
    }

    fn opt_addr(&self, t: Option<TensorId>) -> Result<u64> {
        t.map_or(Ok(0), |t| self.addr(t))
    }

    /// The stored weight behind tensor `t`, checked against the shape the graph expects.
    fn weight(&self, t: TensorId) -> Result<&'a CudaWeight> {
        let Storage::Weight(i) = self.g.tensors[t].storage else {
            return Err(Error::backend(format!("tensor {t} is used as a GEMM weight but is not a weight")));
        };
        let w = self.weights.get(i).ok_or_else(|| Error::backend(format!("weight {i} was not uploaded")))?;
        if w.spec.shape != self.shape(t) {
            return Err(Error::backend(format!(
                "weight {} is {:?}, the graph wants {:?}",
                w.spec.name,
                w.spec.shape,
                self.shape(t)
            )));
        }
        Ok(w)
    }

    /// `Linear` at `i` whose single-use output feeds the `Geglu` at `i + 1`: the GEGLU epilogue applies.
    ///
    /// The planner placed the Geglu's output for a lifetime starting at `i + 1`, so it may share bytes
    /// with the Linear's input (whose last read is op `i`): writing it from op `i`'s GEMM would then
    /// overwrite rows other blocks still read. Fuse only when the two are disjoint.
    fn geglu_after(&self, i: usize) -> Option<TensorId> {
        let (Op::Linear { x: lx, bias, out, residual: None, .. }, Some(Op::Geglu { x, out: gout })) =
            (&self.g.ops[i], self.g.ops.get(i + 1))
        else {
            return None;
        };
        let no_alias =
            arena_disjoint(self.plan, *gout, *lx) && bias.is_none_or(|b| arena_disjoint(self.plan, *gout, b));
        (*x == *out && self.uses[*out] == 1 && !self.is_output[*out] && self.last(*out) % 2 == 0 && no_alias)
            .then_some(*gout)
    }

    /// The conv/linear of op `op` as a GEMM problem (without LoRA or GEGLU).
    fn gemm_shape(&self, op: &Op) -> Result<GemmShape> {
        Ok(match *op {
            Op::Conv2d { .. } => {
                let c = self
                    .g
                    .conv_geometry(op)
                    .ok_or_else(|| Error::backend("conv2d wants NHWC input and output and a 4-d weight"))?;
                GemmShape {
                    batch: c.batch,
                    h: c.h,
                    w: c.w,
                    ci: c.ci,
                    ho: c.ho,
                    wo: c.wo,
                    co: c.co,
                    kh: c.kh,
                    kw: c.kw,
                    stride: c.stride,
                    pad_top: c.pad[0],
                    pad_left: c.pad[1],
                    k2: 0,
                    geglu: false,
                }
            }
            Op::Linear { x, w, .. } => {
                let ws = self.shape(w);
                GemmShape::linear(self.numel(x) / ws[1], ws[1], ws[0])
            }
            _ => unreachable!("gemm_shape of a non-GEMM op"),
        })
    }

    /// Scratch bytes the graph's kernels need beyond the status words.
    pub(crate) fn scratch_bytes(&self) -> Result<usize> {
        let mut need = 0usize;
        for op in &self.g.ops {
            let bytes = match *op {
                Op::GroupNorm { x, groups, .. } => {
                    let (b, c) = (self.shape(x)[0], self.last(x));
                    launch::group_norm_plan(b, self.numel(x) / (b * c), c, groups, self.be.limits)?.scratch_floats * 4
                }
                Op::Conv2d { w, .. } | Op::Linear { w, .. } => match &self.weight(w)?.lora {
                    Some(l) => self.gemm_shape(op)?.m() * l.rp * 2,
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
        let lim = self.be.limits;
        let work = scratch + STATUS_BYTES as u64;
        let mut steps = Vec::with_capacity(self.g.ops.len() + 8);
        if self.g.ops.iter().any(|op| matches!(op, Op::Embed { .. })) {
            steps.push(Step::Zero32 { ptr: scratch, words: 2 });
        }
        let mut i = 0;
        while i < self.g.ops.len() {
            let op = &self.g.ops[i];
            if self.g.tensors[op.output()].elem != Elem::Act {
                return Err(Error::backend(format!("{} writes a non-activation tensor", op.name())));
            }
            let mut k = |l: launch::Launch| steps.push(Step::Kernel(l));
            match *op {
                Op::Conv2d { w, bias, residual, out, x, .. } | Op::Linear { w, bias, residual, out, x } => {
                    let weight = self.weight(w)?;
                    let mut s = self.gemm_shape(op)?;
                    let geglu_out = self.geglu_after(i);
                    let mut p = GemmPtrs {
                        x: self.addr(x)?,
                        weight: weight.buf.ptr,
                        bias: self.opt_addr(bias)?,
                        residual: self.opt_addr(residual)?,
                        out: self.addr(geglu_out.unwrap_or(out))?,
                        a2: 0,
                        weight2: 0,
                    };
                    if let Some(l) = &weight.lora {
                        // u = x·Aᵀ (a conv with the LoRA's down weight, same taps), then [x | u]·[W | s·B]ᵀ.
                        let down = GemmShape { co: l.rp, ..s };
                        k(launch::gemm(
                            &down,
                            GemmPtrs { x: p.x, weight: l.down.ptr, out: work, ..Default::default() },
                            lim,
                        )?);
                        s.k2 = l.rp;
                        p.a2 = work;
                        p.weight2 = l.up.ptr;
                    }
                    s.geglu = geglu_out.is_some();
                    k(launch::gemm(&s, p, lim)?);
                    if geglu_out.is_some() {
                        i += 1; // the Geglu op is done
                    }
                }
                Op::GroupNorm { x, gamma, beta, groups, eps, silu, out } => {
                    let (b, c) = (self.shape(x)[0], self.last(x));
                    let ptrs = [self.addr(x)?, self.addr(gamma)?, self.addr(beta)?, self.addr(out)?];
                    for l in launch::group_norm(b, self.numel(x) / (b * c), c, groups, eps, silu, ptrs, work, lim)? {
                        k(l);
                    }
                }
                Op::LayerNorm { x, gamma, beta, eps, out } => {
                    let c = self.last(x);
                    let ptrs = [self.addr(x)?, self.addr(gamma)?, self.addr(beta)?, self.addr(out)?];
                    k(launch::layer_norm(self.numel(x) / c, c, eps, ptrs)?);
                }
                Op::Attention { q, k: kt, v, heads, causal, out } => {
                    let (b, c) = (self.shape(q)[0], self.last(q));
                    let bad = heads == 0 || c % heads != 0 || self.last(kt) != c || self.shape(kt)[0] != b;
                    if bad || self.shape(kt) != self.shape(v) {
                        return Err(Error::backend(format!(
                            "attention: q {:?}, k {:?}, v {:?}, {heads} heads",
                            self.shape(q),
                            self.shape(kt),
                            self.shape(v)
                        )));
                    }
                    let s = AttnShape {
                        batch: b,
                        heads,
                        n_q: self.numel(q) / (b * c),
                        n_kv: self.numel(kt) / (b * c),
                        head_dim: c / heads,
                        causal,
                    };
                    k(launch::attention(&s, self.addr(q)?, self.addr(kt)?, self.addr(v)?, self.addr(out)?, lim)?);
                }
                Op::Geglu { x, out } => {
                    let c = self.last(out);
                    k(launch::eltwise(EltOp::Geglu { c }, self.numel(out), self.addr(x)?, 0, self.addr(out)?, lim)?);
                }
                Op::Act { x, act, out } => {
                    let a = match act {
                        Activation::Silu => LcmAct_LCM_ACT_SILU,
                        Activation::Gelu => LcmAct_LCM_ACT_GELU,
                        Activation::QuickGelu => LcmAct_LCM_ACT_QUICK_GELU,
                    };
                    k(launch::eltwise(EltOp::Act(a), self.numel(out), self.addr(x)?, 0, self.addr(out)?, lim)?);
                }
                Op::Add { a, b, out } => {
                    k(launch::eltwise(
                        EltOp::Add,
                        self.numel(out),
                        self.addr(a)?,
                        self.addr(b)?,
                        self.addr(out)?,
                        lim,
                    )?);
                }
                Op::AddChannel { x, bias, out } => {
                    let s = self.shape(x);
                    let op = EltOp::AddChannel { hw: s[1] * s[2], c: s[3] };
                    k(launch::eltwise(op, self.numel(out), self.addr(x)?, self.addr(bias)?, self.addr(out)?, lim)?);
                }
                Op::Concat { a, b, out } => {
                    let (ca, cb) = (self.last(a), self.last(b));
                    k(launch::concat(self.numel(a) / ca, ca, cb, self.addr(a)?, self.addr(b)?, self.addr(out)?, lim)?);
                }
                Op::Upsample { x, out } => {
                    let (xs, os) = (self.shape(x), self.shape(out));
                    k(launch::upsample(
                        [xs[0], xs[1], xs[2], xs[3], os[1], os[2]],
                        self.addr(x)?,
                        self.addr(out)?,
                        lim,
                    )?);
                }
                Op::Embed { ids, table, positions, out } => {
                    if self.g.tensors[ids].elem != Elem::I32 {
                        return Err(Error::backend("embed: token ids must be I32"));
                    }
                    let (is, ts) = (self.shape(ids), self.shape(table));
                    let ptrs = [self.addr(ids)?, self.addr(table)?, self.addr(positions)?, self.addr(out)?, scratch];
                    k(launch::embed(is[0], is[1], ts[1], ts[0], ptrs, lim)?);
                }
                Op::TimestepEmbed { t, flip_sin_to_cos, freq_shift, out } => {
                    let os = self.shape(out);
                    k(launch::timestep_embed(
                        os[0],
                        os[1],
                        flip_sin_to_cos,
                        freq_shift,
                        self.addr(t)?,
                        self.addr(out)?,
                        lim,
                    )?);
                }
                Op::Scale { x, mul, add, out } => {
                    k(launch::eltwise(
                        EltOp::Scale { mul, add },
                        self.numel(out),
                        self.addr(x)?,
                        0,
                        self.addr(out)?,
                        lim,
                    )?);
                }
            }
            i += 1;
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use lcm_core::{Elem, GraphBuilder};

    use super::*;

    /// The hazard `geglu_after` guards against: in the plain `x -> Linear -> Geglu` graph the planner
    /// puts the Geglu's output on the Linear's input (their lifetimes do not meet), so a GEMM writing
    /// the Geglu's output would overwrite rows of x that other blocks still read.
    #[test]
    fn planner_may_place_the_geglu_output_on_the_linear_input() {
        let mut b = GraphBuilder::new();
        let x = b.input(&[1, 4096, 320], Elem::Act);
        let y = b.linear("ff", x, 2560, true);
        let g = b.geglu(y);
        b.output(g);
        let graph = lcm_core::fuse::fuse(b.finish().unwrap());
        let plan = lcm_core::planner::plan(&graph, 2);
        assert!(!arena_disjoint(&plan, g, x), "the plan changed: this test no longer shows the hazard");
        assert!(arena_disjoint(&plan, y, x) && arena_disjoint(&plan, g, y));
    }
}
