//! Runs one graph on one backend: fuses, lowers and plans it once, allocates its arena once, then each
//! `run` only writes inputs, launches, and reads outputs.

use crate::backend::{Backend, HostData, ModelWeights};
use crate::error::{Error, Result};
use crate::graph::{Elem, Graph};
use crate::planner::ArenaPlan;
use crate::program::Program;

/// One graph on one backend for one input shape: its program and its arena. Weights are passed to each
/// call, so executors for several shapes share one [`ModelWeights`].
pub struct Executor<B: Backend> {
    program: Program,
    arena: B::Arena,
}

impl<B: Backend> Executor<B> {
    /// Fuses, lowers and plans `graph`, and allocates its arena. `weights` must be the weights the graph
    /// names, in the same order (the model builds both from one description; this checks it). Errors
    /// name the first mismatched weight, or the op whose shapes do not fit.
    pub fn new(backend: &B, graph: Graph, weights: &ModelWeights<B>) -> Result<Self> {
        Self::with_parts(backend, graph, &[weights])
    }

    /// [`Executor::new`] for a graph that runs several models' weights (a UNet and its ControlNets):
    /// the graph's weights are `parts`' specs one model after the other
    /// (`GraphBuilder::set_weight_scope`), and each run gets the same parts in the same order.
    pub fn with_parts(backend: &B, graph: Graph, parts: &[&ModelWeights<B>]) -> Result<Self> {
        let loaded = || parts.iter().flat_map(|p| &p.specs);
        if !graph.weights.iter().eq(loaded()) {
            let first = graph
                .weights
                .iter()
                .zip(loaded())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("graph wants {} {:?}, loaded {} {:?}", a.name, a.shape, b.name, b.shape))
                .unwrap_or_else(|| {
                    format!("{} weights in the graph, {} loaded", graph.weights.len(), loaded().count())
                });
            return Err(Error::invalid("executor", format!("weights do not match the graph: {first}")));
        }
        let program = Program::new(graph, backend.act_bytes())?;
        let arena = backend.alloc_arena(program.plan.size)?;
        Ok(Executor { program, arena })
    }

    /// The fused graph.
    pub fn graph(&self) -> &Graph {
        &self.program.graph
    }

    /// The arena plan.
    pub fn plan(&self) -> &ArenaPlan {
        &self.program.plan
    }

    /// What the backend runs: graph, problems and plan.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The backend's arena, for backend-level checks (poisoning, recorded launches).
    pub fn arena(&self) -> &B::Arena {
        &self.arena
    }

    /// Writes input `i` (in graph order). Its data must be f32 for an `Act` or `F32` input, i32 for an
    /// `I32` one, and its length the input's element count.
    pub fn set_input(&mut self, backend: &B, i: usize, data: HostData<'_>) -> Result<()> {
        // A short write is set_input_at's business; a whole input must be whole. (An unknown `i` is
        // reported there.)
        if let Some(&t) = self.program.graph.inputs.get(i) {
            let desc = &self.program.graph.tensors[t];
            if data.len() != desc.numel() {
                return Err(Error::invalid(
                    "executor",
                    format!(
                        "input {i} wants {} {:?} elements of shape {:?}, got {}",
                        desc.numel(),
                        desc.elem,
                        desc.shape,
                        data.len()
                    ),
                ));
            }
        }
        self.set_input_at(backend, i, 0, data)
    }

    /// Writes `data` into input `i` starting at its element `at` (the rest of the input keeps what it
    /// held): a part of an input that changes on its own, such as zeros for one half of a guided batch.
    pub fn set_input_at(&mut self, backend: &B, i: usize, at: usize, data: HostData<'_>) -> Result<()> {
        let t = *self
            .program
            .graph
            .inputs
            .get(i)
            .ok_or_else(|| Error::invalid("executor", format!("graph has no input {i}")))?;
        let desc = &self.program.graph.tensors[t];
        let kind_ok =
            matches!((desc.elem, data), (Elem::Act | Elem::F32, HostData::F32(_)) | (Elem::I32, HostData::I32(_)));
        if !kind_ok || at + data.len() > desc.numel() {
            return Err(Error::invalid(
                "executor",
                format!(
                    "input {i} ({:?} {:?}) cannot take {} elements at element {at}",
                    desc.elem,
                    desc.shape,
                    data.len()
                ),
            ));
        }
        match self.program.plan.offsets[t] {
            Some(off) => {
                backend.write(&mut self.arena, off + at * desc.elem.bytes(backend.act_bytes()), desc.elem, data)
            }
            None => Ok(()),
        }
    }

    /// Runs the graph once on the inputs as last written. `weights` must have the specs the executor
    /// was built with (checked by [`Executor::new`], not here).
    pub fn run(&mut self, backend: &B, weights: &ModelWeights<B>) -> Result<()> {
        self.run_parts(backend, &[weights], None)
    }

    /// [`Executor::run`], with `watch` called after each op where the backend runs ops one by one (the
    /// CPU): an error from it stops the run.
    pub fn run_watched(
        &mut self,
        backend: &B,
        weights: &ModelWeights<B>,
        watch: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        self.run_parts(backend, &[weights], Some(watch))
    }

    /// [`Executor::run_watched`] with the weights of several models ([`Executor::with_parts`]), in the
    /// order the executor was built with.
    pub fn run_parts(
        &mut self,
        backend: &B,
        parts: &[&ModelWeights<B>],
        watch: Option<&mut dyn FnMut(usize) -> Result<()>>,
    ) -> Result<()> {
        let weights: Vec<&B::Weight> = parts.iter().flat_map(|p| &p.weights).collect();
        if weights.len() != self.program.graph.weights.len() {
            return Err(Error::invalid(
                "executor",
                format!("{} weights given for a graph of {}", weights.len(), self.program.graph.weights.len()),
            ));
        }
        backend.run(&self.program, &weights, &mut self.arena, watch)
    }

    /// Copies output `i` into input `j` of `dst`, starting at its element `at`, on the backend (no host
    /// trip): one model's result straight into the next model's input.
    pub fn copy_output_to(&self, backend: &B, i: usize, dst: &mut Executor<B>, j: usize, at: usize) -> Result<()> {
        let n = self.program.graph.outputs.get(i).map_or(0, |&t| self.program.graph.tensors[t].numel());
        self.copy_output_range_to(backend, i, 0..n, dst, j, at)
    }

    /// Copies elements `range` of output `i` into input `j` of `dst` from its element `at`, on the
    /// backend: one row of a result (the text encoder's state at the EOS token) into the next model.
    pub fn copy_output_range_to(
        &self,
        backend: &B,
        i: usize,
        range: std::ops::Range<usize>,
        dst: &mut Executor<B>,
        j: usize,
        at: usize,
    ) -> Result<()> {
        let missing = |what: &str| Error::invalid("executor", format!("no {what}"));
        let src_t = *self.program.graph.outputs.get(i).ok_or_else(|| missing(&format!("output {i}")))?;
        let dst_t = *dst.program.graph.inputs.get(j).ok_or_else(|| missing(&format!("input {j}")))?;
        let (s, d) = (&self.program.graph.tensors[src_t], &dst.program.graph.tensors[dst_t]);
        if s.elem != d.elem || range.start > range.end || range.end > s.numel() || at + range.len() > d.numel() {
            return Err(Error::invalid(
                "executor",
                format!(
                    "elements {range:?} of output {i} ({:?} {:?}) do not fit input {j} ({:?} {:?}) at element {at}",
                    s.elem, s.shape, d.elem, d.shape
                ),
            ));
        }
        let eb = s.elem.bytes(backend.act_bytes());
        let (Some(src_off), Some(dst_off)) = (self.program.plan.offsets[src_t], dst.program.plan.offsets[dst_t]) else {
            return Ok(()); // an input nothing reads
        };
        backend.copy(&self.arena, src_off + range.start * eb, &mut dst.arena, dst_off + at * eb, range.len() * eb)
    }

    /// Reads output `i` as f32 (NHWC as the graph holds it).
    pub fn output(&self, backend: &B, i: usize) -> Result<Vec<f32>> {
        let t = *self
            .program
            .graph
            .outputs
            .get(i)
            .ok_or_else(|| Error::invalid("executor", format!("graph has no output {i}")))?;
        let mut out = vec![0.0; self.program.graph.tensors[t].numel()];
        let off =
            self.program.plan.offsets[t].ok_or_else(|| Error::invalid("executor", "output is not in the arena"))?;
        backend.read(&self.arena, off, self.program.graph.tensors[t].elem, &mut out)?;
        Ok(out)
    }

    /// Shape of output `i` (NHWC as the graph holds it); panics if there is no output `i`.
    pub fn output_shape(&self, i: usize) -> &[usize] {
        &self.program.graph.tensors[self.program.graph.outputs[i]].shape
    }
}
