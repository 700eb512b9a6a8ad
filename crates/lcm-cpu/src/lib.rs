//! lcm-cpu: the f32 reference backend. Every op the graph has, computed plainly and exactly (f64
//! statistics, exact GELU), parallel over rayon's threads, with real GEMMs underneath. The CUDA kernels
//! and every model are judged against it.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod norm;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lcm_core::planner::ArenaPlan;
use lcm_core::{Backend, Error, Graph, HostData, Op, Result, Storage, TensorId, WeightKind, WeightSpec};

use crate::attention::AttnShape;
use crate::gemm::MatRef;

/// A weight in the layout the CPU ops read: conv weights as `[kh·kw·Ci, Co]`, the rest as given.
pub struct CpuWeight {
    pub data: Vec<f32>,
}

type Profile = BTreeMap<&'static str, (u64, Duration, u64)>;

#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Per op family: (calls, time, multiply-accumulates), when profiling is on.
    profile: Option<Mutex<Profile>>,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { profile: None }
    }

    /// A backend that times every op (see [`CpuBackend::profile`]).
    pub fn profiling() -> Self {
        CpuBackend { profile: Some(Mutex::new(BTreeMap::new())) }
    }

    /// Time per op family so far, most expensive first: (name, calls, time, MACs).
    pub fn profile(&self) -> Vec<(&'static str, u64, Duration, u64)> {
        let Some(p) = &self.profile else { return Vec::new() };
        let mut v: Vec<_> = p.lock().expect("profile lock").iter().map(|(k, &(n, t, m))| (*k, n, t, m)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.2));
        v
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Arena = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn act_bytes(&self) -> usize {
        4
    }

    fn upload_weight(&self, spec: &WeightSpec, data: &[f32]) -> Result<CpuWeight> {
        let numel: usize = spec.shape.iter().product();
        if data.len() != numel {
            return Err(Error::invalid(&spec.name, format!("{} values for shape {:?}", data.len(), spec.shape)));
        }
        let data = match (spec.kind, spec.shape.as_slice()) {
            (WeightKind::Conv, &[co, ci, kh, kw]) => conv::pack_weight(data, co, ci, kh, kw),
            _ => data.to_vec(),
        };
        Ok(CpuWeight { data })
    }

    fn alloc_arena(&self, bytes: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; bytes / 4])
    }

    fn write(&self, arena: &mut Vec<f32>, offset: usize, data: HostData<'_>) -> Result<()> {
        let at = offset / 4;
        match data {
            HostData::F32(d) => arena[at..at + d.len()].copy_from_slice(d),
            // Token ids keep their bits in the f32 arena; `embed` reads them back the same way.
            HostData::I32(d) => {
                arena[at..at + d.len()].iter_mut().zip(d).for_each(|(a, &i)| *a = f32::from_bits(i as u32))
            }
        }
        Ok(())
    }

    fn read(&self, arena: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        let at = offset / 4;
        out.copy_from_slice(&arena[at..at + out.len()]);
        Ok(())
    }

    fn run(&self, graph: &Graph, plan: &ArenaPlan, weights: &[CpuWeight], arena: &mut Vec<f32>) -> Result<()> {
        let mem = Memory { graph, plan, weights, base: arena.as_mut_ptr(), len: arena.len() };
        for op in &graph.ops {
            let start = self.profile.as_ref().map(|_| Instant::now());
            run_op(&mem, op)?;
            if let (Some(p), Some(t)) = (&self.profile, start) {
                let mut p = p.lock().expect("profile lock");
                let e = p.entry(op.name()).or_default();
                *e = (e.0 + 1, e.1 + t.elapsed(), e.2 + graph.op_macs(op));
            }
        }
        Ok(())
    }
}

/// Resolves tensor ids to slices of the arena or of the weights.
///
/// The arena is one `Vec<f32>` that ops read from and write to at once. The planner guarantees that an
/// op's output range is disjoint from every range alive while it runs (all its inputs included), which
/// is what makes handing out one `&mut` and several `&` into the same allocation sound here; `dst`
/// checks it for the op at hand.
struct Memory<'a> {
    graph: &'a Graph,
    plan: &'a ArenaPlan,
    weights: &'a [CpuWeight],
    base: *mut f32,
    len: usize,
}

impl Memory<'_> {
    fn range(&self, t: TensorId) -> (usize, usize) {
        let off = self.plan.offsets[t].unwrap_or_else(|| panic!("tensor {t} has no arena slot")) / 4;
        let n = self.graph.tensors[t].numel();
        assert!(off + n <= self.len, "tensor {t} outside the arena");
        (off, n)
    }

    fn src(&self, t: TensorId) -> &[f32] {
        match self.graph.tensors[t].storage {
            Storage::Weight(i) => &self.weights[i].data,
            _ => {
                let (off, n) = self.range(t);
                // SAFETY: in bounds (checked); see the struct comment for aliasing.
                unsafe { std::slice::from_raw_parts(self.base.add(off), n) }
            }
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn dst(&self, op: &Op) -> &mut [f32] {
        let t = op.output();
        let (off, n) = self.range(t);
        for i in op.inputs() {
            if !matches!(self.graph.tensors[i].storage, Storage::Weight(_)) {
                let (o2, n2) = self.range(i);
                assert!(off + n <= o2 || o2 + n2 <= off, "planner bug: {} output overlaps its input", op.name());
            }
        }
        // SAFETY: in bounds, and disjoint from every input of this op (checked above).
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off), n) }
    }

    fn shape(&self, t: TensorId) -> &[usize] {
        &self.graph.tensors[t].shape
    }
}

/// `out += bias (per last-dim channel) + residual`, the GEMM epilogue.
fn epilogue(out: &mut [f32], n: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) {
    use rayon::prelude::*;
    if bias.is_none() && residual.is_none() {
        return;
    }
    out.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        if let Some(b) = bias {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
        if let Some(res) = residual {
            row.iter_mut().zip(&res[r * n..(r + 1) * n]).for_each(|(o, r)| *o += r);
        }
    });
}

fn run_op(m: &Memory, op: &Op) -> Result<()> {
    let out = m.dst(op);
    match *op {
        Op::Conv2d { x, w, bias, residual, .. } => {
            let s = m.graph.conv_geometry(op).expect("conv2d shapes were checked when the graph was built");
            conv::conv2d(&s, m.src(x), m.src(w), out);
            epilogue(out, s.co, bias.map(|b| m.src(b)), residual.map(|r| m.src(r)));
        }
        Op::Linear { x, w, bias, residual, .. } => {
            let (n, k) = (m.shape(w)[0], m.shape(w)[1]);
            let rows = m.graph.tensors[x].numel() / k;
            // y = x·Wᵀ: W is [n, k] row-major, so Wᵀ is the view with strides (1, k).
            gemm::gemm(
                rows,
                n,
                k,
                MatRef { data: m.src(x), rs: k, cs: 1 },
                MatRef { data: m.src(w), rs: 1, cs: k },
                out,
            );
            epilogue(out, n, bias.map(|b| m.src(b)), residual.map(|r| m.src(r)));
        }
        Op::GroupNorm { x, gamma, beta, groups, eps, silu, .. } => {
            let s = m.shape(x);
            let (c, batch) = (s[s.len() - 1], s[0]);
            let hw = m.graph.tensors[x].numel() / (batch * c);
            norm::group_norm(m.src(x), m.src(gamma), m.src(beta), batch, hw, c, groups, eps, silu, out);
        }
        Op::LayerNorm { x, gamma, beta, eps, .. } => {
            let c = *m.shape(x).last().expect("shaped");
            norm::layer_norm(m.src(x), m.src(gamma), m.src(beta), c, eps, out);
        }
        Op::Attention { q, k, v, heads, causal, .. } => {
            let (qs, ks) = (m.shape(q), m.shape(k));
            let c = *qs.last().expect("shaped");
            let batch = qs[0];
            let s = AttnShape {
                batch,
                n: m.graph.tensors[q].numel() / (batch * c),
                m: m.graph.tensors[k].numel() / (ks[0] * c),
                c,
                heads,
                causal,
            };
            attention::attention(&s, m.src(q), m.src(k), m.src(v), out);
        }
        Op::Geglu { x, .. } => elementwise::geglu(m.src(x), *m.shape(op.output()).last().expect("shaped"), out),
        Op::Act { x, act, .. } => elementwise::activation(m.src(x), act, out),
        Op::Add { a, b, .. } => elementwise::add(m.src(a), m.src(b), out),
        Op::AddChannel { x, bias, .. } => {
            let s = m.shape(x);
            elementwise::add_channel(m.src(x), m.src(bias), s[0], s[3], out);
        }
        Op::Concat { a, b, .. } => {
            let (ca, cb) = (*m.shape(a).last().expect("shaped"), *m.shape(b).last().expect("shaped"));
            elementwise::concat(m.src(a), m.src(b), ca, cb, out);
        }
        Op::Upsample { x, out: o } => {
            let (xs, os) = (m.shape(x), m.shape(o));
            elementwise::upsample_nearest(m.src(x), xs[1], xs[2], xs[3], os[1], os[2], out);
        }
        Op::Embed { ids, table, positions, .. } => {
            let (ts, tokens) = (m.shape(table), m.shape(ids)[1]);
            elementwise::embed(m.src(ids), m.src(table), m.src(positions), tokens, ts[1], ts[0], out).map_err(
                |id| Error::invalid("token ids", format!("id {id} is outside the vocabulary of {} tokens", ts[0])),
            )?;
        }
        Op::TimestepEmbed { t, flip_sin_to_cos, freq_shift, out: o } => {
            elementwise::timestep_embed(m.src(t), m.shape(o)[1], flip_sin_to_cos, freq_shift, out);
        }
        Op::Scale { x, mul, add, .. } => elementwise::map(m.src(x), out, |v| v * mul + add),
    }
    Ok(())
}
