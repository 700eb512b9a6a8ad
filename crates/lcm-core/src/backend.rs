//! What a compute backend provides. The executor owns the graph and the plan; a backend owns memory and
//! runs ops. A backend runs a whole graph per call so that one can record it once (a CUDA graph) and
//! replay it.

use crate::error::Result;
use crate::graph::{Graph, WeightSpec};
use crate::planner::ArenaPlan;

/// Host data written into an input slot.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

impl HostData<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(d) => d.len(),
            HostData::I32(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub trait Backend {
    /// A weight in the backend's own storage and layout.
    type Weight;
    /// The one activation allocation of an executor.
    type Arena;

    fn name(&self) -> &'static str;

    /// Bytes per activation element (4 for f32, 2 for f16).
    fn act_bytes(&self) -> usize;

    /// Takes a weight in torch layout as f32 (already widened, LoRA already merged) into backend storage.
    fn upload_weight(&self, spec: &WeightSpec, data: &[f32]) -> Result<Self::Weight>;

    fn alloc_arena(&self, bytes: usize) -> Result<Self::Arena>;

    fn write(&self, arena: &mut Self::Arena, offset: usize, data: HostData<'_>) -> Result<()>;

    fn read(&self, arena: &Self::Arena, offset: usize, out: &mut [f32]) -> Result<()>;

    /// Runs every op of `graph` in order. Tensor `t` lives at `plan.offsets[t]` in `arena`, or is
    /// `weights[i]` when its storage is `Weight(i)`.
    fn run(&self, graph: &Graph, plan: &ArenaPlan, weights: &[Self::Weight], arena: &mut Self::Arena) -> Result<()>;
}

/// A model's weights on a backend, in the order of the graph's weight list.
pub struct ModelWeights<B: Backend> {
    pub specs: Vec<WeightSpec>,
    pub weights: Vec<B::Weight>,
}

impl<B: Backend> ModelWeights<B> {
    /// Bytes the weights take as f32 (their size in the CPU backend).
    pub fn numel(&self) -> usize {
        self.specs.iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }
}
