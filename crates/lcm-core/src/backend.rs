//! What a compute backend provides. The executor owns the graph and the plan; a backend owns memory and
//! runs ops. A backend runs a whole graph per call so that one can record it once (a CUDA graph) and
//! replay it.

use crate::error::Result;
use crate::graph::{Elem, WeightSpec};
use crate::program::Program;

/// Host data written into an input slot.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    /// For `Act` and `F32` inputs (latents, timesteps, text context, the LCM schedule).
    F32(&'a [f32]),
    /// For `I32` inputs (token ids).
    I32(&'a [i32]),
}

impl HostData<'_> {
    /// Element count.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(d) => d.len(),
            HostData::I32(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compute device: owns weight storage and activation arenas, and runs a whole [`Program`] per call.
/// Arena offsets are in bytes, as the planner places tensors.
pub trait Backend {
    /// A weight in the backend's own storage and layout.
    type Weight;
    /// The one activation allocation of an executor.
    type Arena;
    /// A prepared LoRA state ([`Backend::lora_image`]); `std::convert::Infallible` on a backend that
    /// merges LoRAs and so never has one.
    type LoraImage: Send;

    /// Short name for reports and errors (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Bytes per activation element (4 for f32, 2 for f16).
    fn act_bytes(&self) -> usize;

    /// This backend's kind on the same device with f32 activations (and weights): what a model that
    /// overflows in lower precision runs on, as diffusers upcasts a `force_upcast` VAE. `None` when
    /// this backend's activations already are f32 (the CPU's).
    fn f32_activations(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Bytes this backend can still allocate for weights and arenas (its memory cap less what is live,
    /// and what the device or host reports free), or `None` when it cannot tell: what a load or a
    /// request is checked against before any work, so that one that cannot fit is refused up front.
    fn memory_available(&self) -> Option<u64> {
        None
    }

    /// Takes a weight in torch layout as f32 (already widened, LoRA already merged) into backend storage.
    fn upload_weight(&self, spec: &WeightSpec, data: &[f32]) -> Result<Self::Weight>;

    /// Rewrites weight `w` (of `spec`) with new values in place: same storage, same address, so a
    /// recorded run stays valid (a merged LoRA swapped).
    fn update_weight(&self, w: &mut Self::Weight, spec: &WeightSpec, data: &[f32]) -> Result<()>;

    /// Whether [`Backend::attach_loras`] works: a weight's products then add an unmerged LoRA kept in
    /// fixed buffers, which [`Backend::set_lora`] swaps by copying.
    fn supports_unmerged_lora(&self) -> bool {
        false
    }

    /// Gives the weights `targets` (indices into `weights` and `specs`) fixed LoRA buffers for ranks up
    /// to `max_rank`, zero (no change), all in one allocation, so that a prepared LoRA state
    /// ([`Backend::lora_image`]) loads with one copy.
    fn attach_loras(
        &self,
        weights: &mut [Self::Weight],
        specs: &[WeightSpec],
        targets: &[usize],
        max_rank: usize,
    ) -> Result<()> {
        let _ = (weights, targets, max_rank);
        Err(no_unmerged_path(self, specs.first().map_or("LoRA", |s| &s.name)))
    }

    /// Copies `lora` into the buffers [`Backend::attach_loras`] gave `w` (`None`: switched off).
    fn set_lora(&self, w: &Self::Weight, spec: &WeightSpec, lora: Option<&LoraDelta>) -> Result<()> {
        let _ = (w, lora);
        Err(no_unmerged_path(self, &spec.name))
    }

    /// A LoRA state for every weight with LoRA buffers, prepared in device memory of its own: each
    /// entry is a weight [`Backend::attach_loras`] gave buffers and its delta (`None`: off; weights of
    /// those buffers that are not listed are off too). [`Backend::load_lora_image`] then swaps to it
    /// with one device copy and no host work: a service's hot-swap between adapters it prepared.
    fn lora_image(&self, slots: &[(&Self::Weight, &WeightSpec, Option<&LoraDelta>)]) -> Result<Self::LoraImage> {
        Err(no_unmerged_path(self, slots.first().map_or("LoRA", |s| &s.1.name)))
    }

    /// Loads a state [`Backend::lora_image`] prepared into the LoRA buffers it was made for.
    fn load_lora_image(&self, image: &Self::LoraImage) -> Result<()>;

    /// An arena of `bytes` bytes (a plan's `size`), allocated once per executor.
    fn alloc_arena(&self, bytes: usize) -> Result<Self::Arena>;

    /// Writes `data` into a tensor of element type `elem` at byte `offset` (`Act` takes the backend's
    /// activation precision; `F32` and `I32` keep their 32 bits).
    fn write(&self, arena: &mut Self::Arena, offset: usize, elem: Elem, data: HostData<'_>) -> Result<()>;

    /// Reads a tensor of element type `elem` at byte `offset` as f32.
    fn read(&self, arena: &Self::Arena, offset: usize, elem: Elem, out: &mut [f32]) -> Result<()>;

    /// Copies `bytes` from `src` at `src_offset` into `dst` at `dst_offset` without a trip through the
    /// host (one executor's output into another's input).
    fn copy(
        &self,
        src: &Self::Arena,
        src_offset: usize,
        dst: &mut Self::Arena,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()>;

    /// Runs every op of `program.graph` in order, op `i` solving `program.problems[i]`. Tensor `t`
    /// lives at `program.plan.offsets[t]` in `arena`, or is `weights[i]` when its storage is
    /// `Weight(i)`. A backend that runs ops synchronously calls `watch` with each op's index after it
    /// ran, and stops with its error (progress and cancellation between denoising steps); one that
    /// queues the whole graph (CUDA) does not call it.
    fn run(
        &self,
        program: &Program,
        weights: &[&Self::Weight],
        arena: &mut Self::Arena,
        watch: Option<&mut dyn FnMut(usize) -> Result<()>>,
    ) -> Result<()>;
}

/// The refusal of the unmerged-LoRA methods by a backend that merges LoRAs.
fn no_unmerged_path<B: Backend + ?Sized>(backend: &B, what: &str) -> crate::Error {
    crate::Error::invalid(what, format!("the {} backend merges LoRAs; it has no unmerged path", backend.name()))
}

/// A LoRA delta for one weight, unmerged: Δ = up @ down (the scales already folded into `up`; several
/// LoRAs on one weight are their factors side by side: rank r1 + r2).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    /// `[rank, in·kh·kw]` row-major (torch's down, flattened).
    pub down: Vec<f32>,
    /// `[out, rank]` row-major.
    pub up: Vec<f32>,
    /// Rows of `down`, columns of `up`.
    pub rank: usize,
}

/// Produces a weight's pristine values (f32, torch layout, before any LoRA) again, from where it was
/// loaded: what a LoRA swap merges from.
pub type WeightSource = Box<dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()> + Send>;

/// A model's weights on a backend, in the order of the graph's weight list.
pub struct ModelWeights<B: Backend> {
    /// Name, torch shape and use of each weight; must equal the graph's `weights` ([`crate::Executor::new`]
    /// checks).
    pub specs: Vec<WeightSpec>,
    /// The uploaded weights: `weights[i]` holds `specs[i]`.
    pub weights: Vec<B::Weight>,
    /// Where the pristine values can be read again (`None`: nowhere, e.g. synthetic weights).
    pub source: Option<WeightSource>,
}

impl<B: Backend> ModelWeights<B> {
    /// Weights with no source to read them again from.
    pub fn new(specs: Vec<WeightSpec>, weights: Vec<B::Weight>) -> Self {
        ModelWeights { specs, weights, source: None }
    }

    /// Elements over all weights (four bytes each as f32, their size in the CPU backend).
    pub fn numel(&self) -> usize {
        self.specs.iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }

    /// The index of weight `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Reads weight `name` pristine from the source, lets `hook` change it (a LoRA merge), and rewrites
    /// it in place on the backend. `buf` is scratch.
    pub fn reload(
        &mut self,
        backend: &B,
        name: &str,
        hook: &mut dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()>,
        buf: &mut Vec<f32>,
    ) -> Result<()> {
        let i = self.index(name).ok_or_else(|| crate::Error::invalid(name, "no such weight in this model"))?;
        let source = self
            .source
            .as_mut()
            .ok_or_else(|| crate::Error::invalid(name, "these weights have no file to read them again from"))?;
        let spec = &self.specs[i];
        source(spec, buf)?;
        hook(spec, buf)?;
        backend.update_weight(&mut self.weights[i], spec, buf)
    }
}
