//! Runs one graph on one backend: plans the arena once, allocates it once, then each `run` only writes
//! inputs, launches, and reads outputs.

use crate::backend::{Backend, HostData, ModelWeights};
use crate::error::{Error, Result};
use crate::fuse::fuse;
use crate::graph::{Elem, Graph};
use crate::planner::{plan, ArenaPlan};

pub struct Executor<B: Backend> {
    graph: Graph,
    plan: ArenaPlan,
    arena: B::Arena,
}

impl<B: Backend> Executor<B> {
    /// Fuses `graph`, plans it, and allocates its arena. `weights` must be the weights the graph names,
    /// in the same order (the model builds both from one description; this checks it).
    pub fn new(backend: &B, graph: Graph, weights: &ModelWeights<B>) -> Result<Self> {
        if graph.weights != weights.specs {
            let first = graph
                .weights
                .iter()
                .zip(&weights.specs)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("graph wants {} {:?}, loaded {} {:?}", a.name, a.shape, b.name, b.shape))
                .unwrap_or_else(|| {
                    format!("{} weights in the graph, {} loaded", graph.weights.len(), weights.specs.len())
                });
            return Err(Error::invalid("executor", format!("weights do not match the graph: {first}")));
        }
        let graph = fuse(graph);
        let plan = plan(&graph, backend.act_bytes());
        let arena = backend.alloc_arena(plan.size)?;
        Ok(Executor { graph, plan, arena })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    pub fn arena(&self) -> &B::Arena {
        &self.arena
    }

    /// Writes input `i` (in graph order). Its length must equal the input's element count.
    pub fn set_input(&mut self, backend: &B, i: usize, data: HostData<'_>) -> Result<()> {
        let t =
            *self.graph.inputs.get(i).ok_or_else(|| Error::invalid("executor", format!("graph has no input {i}")))?;
        let desc = &self.graph.tensors[t];
        let kind_ok = matches!((desc.elem, data), (Elem::Act, HostData::F32(_)) | (Elem::I32, HostData::I32(_)));
        if !kind_ok || data.len() != desc.numel() {
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
        match self.plan.offsets[t] {
            Some(off) => backend.write(&mut self.arena, off, data),
            None => Ok(()), // an input nothing reads
        }
    }

    pub fn run(&mut self, backend: &B, weights: &ModelWeights<B>) -> Result<()> {
        backend.run(&self.graph, &self.plan, &weights.weights, &mut self.arena)
    }

    /// Reads output `i` as f32 (NHWC as the graph holds it).
    pub fn output(&self, backend: &B, i: usize) -> Result<Vec<f32>> {
        let t =
            *self.graph.outputs.get(i).ok_or_else(|| Error::invalid("executor", format!("graph has no output {i}")))?;
        let mut out = vec![0.0; self.graph.tensors[t].numel()];
        let off = self.plan.offsets[t].ok_or_else(|| Error::invalid("executor", "output is not in the arena"))?;
        backend.read(&self.arena, off, &mut out)?;
        Ok(out)
    }

    pub fn output_shape(&self, i: usize) -> &[usize] {
        &self.graph.tensors[self.graph.outputs[i]].shape
    }
}
