//! Which requests can run as one batch: one place for the rule the pipeline checks and the servers'
//! queues (lcm serve, the Triton backend) batch by.

use std::path::PathBuf;

use super::{Request, SamplerOptions};
use crate::prompt::PromptSyntax;

/// What requests must share to run as one batch (`Pipeline::generate_batch`): the schedule (size,
/// steps, guidance scale, img2img strength, inpainting or not), the sampler, how prompts are read, and
/// the ControlNets with their guidance windows (they shape the graph). Prompts, seeds, init images,
/// control images and weights are each request's own.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchKey {
    pub(crate) size: (usize, usize),
    pub(crate) steps: usize,
    pub(crate) guidance_scale: u32,
    pub(crate) strength: Option<u32>,
    pub(crate) masked: bool,
    /// `None`: the pipeline's default sampler (the pipeline resolves it before comparing).
    pub(crate) sampler: Option<SamplerOptions>,
    pub(crate) prompt_syntax: PromptSyntax,
    pub(crate) controls: Vec<(PathBuf, u64, u64)>,
}

impl Request {
    /// This request's [`BatchKey`]: requests with equal keys run as one batch.
    pub fn batch_key(&self) -> BatchKey {
        BatchKey {
            size: (self.width, self.height),
            steps: self.steps,
            guidance_scale: self.guidance_scale.to_bits(),
            strength: self.init_image.as_ref().map(|i| i.strength.to_bits()),
            masked: self.init_image.as_ref().is_some_and(|i| i.mask.is_some()),
            sampler: self.sampler,
            prompt_syntax: self.prompt_syntax,
            controls: self.controls.iter().map(|c| (c.model.clone(), c.start.to_bits(), c.end.to_bits())).collect(),
        }
    }

    /// Whether a server's queue may batch the two without the tokenizer: equal [`BatchKey`]s and, for
    /// A1111-syntax prompts, the same prompt texts (their length in 75-token chunks shapes the graph,
    /// which only the pipeline's tokenizer knows; the same text is never a guess).
    pub fn batches_with(&self, other: &Request) -> bool {
        self.batch_key() == other.batch_key()
            && (self.prompt_syntax == PromptSyntax::Plain
                || (self.prompt == other.prompt && self.negative_prompt == other.negative_prompt))
    }
}
