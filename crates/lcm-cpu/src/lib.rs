//! lcm-cpu: the f32 reference backend. Every op the graph has, computed plainly and exactly (f64
//! statistics, exact GELU), parallel over rayon's threads, with real GEMMs underneath. The CUDA kernels
//! and every model are judged against it.

#![warn(missing_docs)]

pub mod attention;
pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod lcm_step;
pub mod memory;
pub mod norm;
pub mod packed;
pub mod simd;
pub mod winograd;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lcm_core::lcm::StepRow;
use lcm_core::planner::ArenaPlan;
use lcm_core::{Backend, Elem, Error, Graph, HostData, Op, Result, Storage, TensorId, WeightKind, WeightSpec};
use lcm_core::{Problem, Program};

use crate::attention::AttnShape;
use crate::lcm_step::StepInputs;
use crate::memory::{HostArena, HostMemory};
use crate::packed::{Epilogue, PackedB};
use crate::winograd::WinogradWeight;

/// A weight in the layout the CPU ops read.
pub enum CpuWeight {
    /// A linear weight packed as its GEMM's B (`[in, out]`, [`PackedB`]).
    Packed(PackedB),
    /// A convolution's weight.
    Conv(ConvWeight),
    /// The rest (norm scales, biases, tables) as given.
    Plain(Vec<f32>),
}

/// A convolution's weight as its GEMM's B ([`conv::GemmWeight`]), and its Winograd transform, made
/// on the first call that runs by Winograd ([`winograd::applies`]): only the convolutions big enough
/// to gain pay its 4x memory, and a LoRA merge (a new weight) starts without it.
pub struct ConvWeight {
    gemm: conv::GemmWeight,
    winograd: OnceLock<WinogradWeight>,
}

type Profile = BTreeMap<&'static str, (u64, Duration, u64)>;

/// The f32 reference backend. An arena is one counted `Vec<f32>` ([`memory`]); `I32` inputs keep their bits in f32 slots.
#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Per op family: (calls, time, multiply-accumulates), when profiling is on.
    profile: Option<Mutex<Profile>>,
    /// The fused Linear → GEGLU's full-width product before the epilogue halves it: kept between calls
    /// (it only grows), so the steady state allocates nothing.
    scratch: Mutex<Vec<f32>>,
    /// Live arenas' bytes and their cap.
    memory: HostMemory,
}

impl CpuBackend {
    /// A backend without profiling.
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// Caps the bytes this backend's arenas may hold at once (`None`: only the host's available
    /// memory). An arena past it is refused with an `Error` when its executor is built, before any op
    /// runs; the pipelines on the backend stay usable. A pipeline load whose weights pass what is left
    /// ([`Backend::memory_available`]) is refused before it reads them.
    pub fn set_memory_limit(&self, bytes: Option<u64>) {
        self.memory.set_limit(bytes);
    }

    /// The bytes of this backend's live arenas.
    pub fn arena_bytes(&self) -> u64 {
        self.memory.live_bytes()
    }

    /// A backend that times every op (see [`CpuBackend::profile`]).
    pub fn profiling() -> Self {
        CpuBackend { profile: Some(Mutex::new(BTreeMap::new())), ..CpuBackend::default() }
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
    type Arena = HostArena;
    /// The CPU merges LoRAs (a swap re-merges from the pristine weights): it never has a prepared state.
    type LoraImage = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn act_bytes(&self) -> usize {
        4
    }

    fn memory_available(&self) -> Option<u64> {
        self.memory.available()
    }

    fn load_lora_image(&self, image: &Self::LoraImage) -> Result<()> {
        match *image {}
    }

    fn upload_weight(&self, spec: &WeightSpec, data: &[f32]) -> Result<CpuWeight> {
        let numel: usize = spec.shape.iter().product();
        if data.len() != numel {
            return Err(Error::invalid(&spec.name, format!("{} values for shape {:?}", data.len(), spec.shape)));
        }
        Ok(match (spec.kind, spec.shape.as_slice()) {
            (WeightKind::Conv, &[co, ci, kh, kw]) => {
                CpuWeight::Conv(ConvWeight { gemm: conv::pack_weight(data, co, ci, kh, kw), winograd: OnceLock::new() })
            }
            // y = x·Wᵀ: B is Wᵀ, the view of the row-major [n, k] W with strides (1, k).
            (WeightKind::Linear, &[n, k]) => CpuWeight::Packed(PackedB::new(k, n, data, 1, k)),
            _ => CpuWeight::Plain(data.to_vec()),
        })
    }

    fn update_weight(&self, w: &mut CpuWeight, spec: &WeightSpec, data: &[f32]) -> Result<()> {
        *w = self.upload_weight(spec, data)?;
        Ok(())
    }

    fn alloc_arena(&self, bytes: usize) -> Result<HostArena> {
        self.memory.alloc(bytes)
    }

    fn write(&self, arena: &mut HostArena, offset: usize, _elem: Elem, data: HostData<'_>) -> Result<()> {
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

    fn read(&self, arena: &HostArena, offset: usize, _elem: Elem, out: &mut [f32]) -> Result<()> {
        let at = offset / 4;
        out.copy_from_slice(&arena[at..at + out.len()]);
        Ok(())
    }

    fn copy(
        &self,
        src: &HostArena,
        src_offset: usize,
        dst: &mut HostArena,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let (s, d, n) = (src_offset / 4, dst_offset / 4, bytes / 4);
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
        Ok(())
    }

    fn run(
        &self,
        program: &Program,
        weights: &[&CpuWeight],
        arena: &mut HostArena,
        mut watch: Option<&mut dyn FnMut(usize) -> Result<()>>,
    ) -> Result<()> {
        let graph = &program.graph;
        let mem = Memory { graph, plan: &program.plan, weights, base: arena.as_mut_ptr(), len: arena.len() };
        for (i, (op, problem)) in graph.ops.iter().zip(&program.problems).enumerate() {
            let start = self.profile.as_ref().map(|_| Instant::now());
            self.run_op(&mem, op, problem)?;
            if let (Some(p), Some(t)) = (&self.profile, start) {
                let mut p = p.lock().expect("profile lock");
                let e = p.entry(profile_name(op, problem)).or_default();
                *e = (e.0 + 1, e.1 + t.elapsed(), e.2 + problem.macs());
            }
            if let Some(w) = watch.as_mut() {
                w(i)?;
            }
        }
        Ok(())
    }
}

/// The profile's name for an op: its own, with the Winograd convolutions apart from the others.
fn profile_name(op: &Op, problem: &Problem) -> &'static str {
    match (op, problem) {
        (Op::Conv2d { .. }, Problem::Gemm(g)) if winograd::applies(g) => "conv2d_winograd",
        _ => op.name(),
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
    weights: &'a [&'a CpuWeight],
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

    /// A linear weight, packed.
    fn packed(&self, t: TensorId) -> &PackedB {
        match self.weight(t) {
            CpuWeight::Packed(p) => p,
            _ => panic!("tensor {t}: a linear weight stored otherwise"),
        }
    }

    /// A convolution's weight.
    fn conv(&self, t: TensorId) -> &ConvWeight {
        match self.weight(t) {
            CpuWeight::Conv(c) => c,
            _ => panic!("tensor {t}: a convolution's weight stored otherwise"),
        }
    }

    fn weight(&self, t: TensorId) -> &CpuWeight {
        match self.graph.tensors[t].storage {
            Storage::Weight(i) => self.weights[i],
            _ => panic!("tensor {t}: a GEMM's weight is not a weight"),
        }
    }

    fn src(&self, t: TensorId) -> &[f32] {
        match self.graph.tensors[t].storage {
            Storage::Weight(i) => match self.weights[i] {
                CpuWeight::Plain(d) => d,
                _ => panic!("tensor {t}: a GEMM weight read as plain values"),
            },
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
}

impl CpuBackend {
    fn run_op(&self, m: &Memory, op: &Op, problem: &Problem) -> Result<()> {
        let out = m.dst(op);
        match (*op, *problem) {
            (Op::Conv2d { x, w, bias, residual, .. }, Problem::Gemm(g)) => {
                let (w, x) = (m.conv(w), m.src(x));
                let epi = Epilogue { bias: bias.map(|b| m.src(b)), residual: residual.map(|r| m.src(r)) };
                if winograd::applies(&g) {
                    let u = w.winograd.get_or_init(|| WinogradWeight::new(&w.gemm, g.ci, g.co));
                    winograd::conv2d(&g, x, u, out, epi);
                } else {
                    conv::conv2d(&g, x, &w.gemm, out, epi);
                }
            }
            (Op::Linear { x, w, bias, residual, .. }, Problem::Gemm(g)) => {
                let (rows, n, k) = (g.m(), g.co, g.ci);
                let (w, bias) = (m.packed(w), bias.map(|b| m.src(b)));
                if g.geglu {
                    let mut full = self.scratch.lock().expect("scratch lock");
                    memory::grow(&mut full, rows * n);
                    let full = &mut full[..rows * n];
                    packed::gemm(rows, m.src(x), k, w, full, Epilogue { bias, residual: None });
                    eltwise::geglu(full, n / 2, out);
                } else {
                    packed::gemm(rows, m.src(x), k, w, out, Epilogue { bias, residual: residual.map(|r| m.src(r)) });
                }
            }
            (Op::GroupNorm { x, gamma, beta, eps, silu, .. }, Problem::GroupNorm { batch, hw, c, groups }) => {
                norm::group_norm(m.src(x), m.src(gamma), m.src(beta), batch, hw, c, groups, eps, silu, out);
            }
            (Op::LayerNorm { x, gamma, beta, eps, .. }, Problem::LayerNorm { c, .. }) => {
                norm::layer_norm(m.src(x), m.src(gamma), m.src(beta), c, eps, out);
            }
            (Op::Attention { q, k, v, .. }, Problem::Attention(a)) => {
                let s = AttnShape {
                    batch: a.batch,
                    n: a.n_q,
                    m: a.n_kv,
                    c: a.channels(),
                    heads: a.heads,
                    causal: a.causal,
                    key_limit: a.key_limit,
                };
                attention::attention(&s, m.src(q), m.src(k), m.src(v), out);
            }
            (Op::Geglu { x, .. }, Problem::Geglu { c, .. }) => eltwise::geglu(m.src(x), c, out),
            (Op::Map { kind, x, y, .. }, Problem::Map { .. }) => eltwise::map(kind, m.src(x), y.map(|y| m.src(y)), out),
            (Op::AddChannel { x, bias, .. }, Problem::AddChannel { batch, c, .. }) => {
                eltwise::add_channel(m.src(x), m.src(bias), batch, c, out);
            }
            (Op::AddScaled { x, y, scale, row, .. }, Problem::AddScaled { batch, per_image }) => {
                let weights = &m.src(scale)[row * batch..(row + 1) * batch];
                eltwise::add_scaled(m.src(x), m.src(y), weights, per_image, out);
            }
            (Op::Concat { a, b, .. }, Problem::Concat { ca, cb, .. }) => {
                eltwise::concat(m.src(a), m.src(b), ca, cb, out)
            }
            (Op::Upsample { x, .. }, Problem::Upsample { h, w, c, ho, wo, .. }) => {
                eltwise::upsample_nearest(m.src(x), h, w, c, ho, wo, out);
            }
            (Op::Embed { ids, table, positions, .. }, Problem::Embed { tokens, c, vocab, .. }) => {
                eltwise::embed(m.src(ids), m.src(table), m.src(positions), tokens, c, vocab, out).map_err(|id| {
                    Error::invalid("token ids", format!("id {id} is outside the vocabulary of {vocab} tokens"))
                })?;
            }
            (Op::TimestepEmbed { t, row, flip_sin_to_cos, freq_shift, .. }, Problem::Timestep { batch, dim }) => {
                let ts = &m.src(t)[row * batch..(row + 1) * batch];
                eltwise::timestep_embed(ts, dim, flip_sin_to_cos, freq_shift, out);
            }
            (Op::Cast { x, div, add, row, .. }, Problem::Cast { .. }) => {
                // A schedule row's divisor: the sampler's scale_model_input (x / input_div + 0 is exact).
                let div = row.map_or(div, |(schedule, step)| StepRow::of(m.src(schedule), step).input_div);
                eltwise::cast(m.src(x), div, add, out)
            }
            (Op::LcmStep { x, model_output, noise, schedule, step, guided, sampling, .. }, Problem::Map { n }) => {
                let row = &StepRow::of(m.src(schedule), step);
                let noise = noise.map(|(z, k)| &m.src(z)[k * n..(k + 1) * n]);
                let s = StepInputs { x: m.src(x), model_output: m.src(model_output), noise };
                lcm_step::lcm_step(s, row, guided, &sampling, out);
            }
            (Op::InpaintBlend { x, image, noise, mask, schedule, step, last, .. }, Problem::Blend { c, .. }) => {
                let row = &StepRow::of(m.src(schedule), step);
                lcm_step::inpaint_blend(m.src(x), m.src(image), m.src(noise), m.src(mask), c, row, last, out);
            }
            (op, p) => return Err(Error::backend(format!("{} was lowered to {p:?}", op.name()))),
        }
        Ok(())
    }
}
