//! The worker's prepared LoRA sets (`Pipeline::prepare_loras`): the last `--lora-cache` sets a batch
//! ran with, most recent first, so that a service switching among a few adapters swaps to one it saw
//! lately with `Pipeline::use_loras` (on CUDA one device copy, no file read) instead of from the files.
//! Each entry holds its LoRA buffers' contents in device memory on CUDA (~135 MB for a rank-64 LoRA on
//! SD1.5), only the opened files on the CPU.

use std::collections::VecDeque;

use lcm_core::{Backend, Result};
use lcm_pipeline::lora_swap::PreparedLoras;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::LoraSpec;

use super::loras::LoraChoice;

pub struct LoraCache<B: Backend> {
    capacity: usize,
    entries: VecDeque<(Vec<LoraChoice>, PreparedLoras<B>)>,
}

/// How a swap was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swapped {
    /// To a set prepared for an earlier batch.
    Cached,
    /// Prepared now (and kept), or from the files when the cache holds nothing.
    New,
}

impl<B: Backend> LoraCache<B> {
    /// Keeps up to `capacity` sets; 0: every swap reads the files (`Pipeline::set_loras`).
    pub fn new(capacity: usize) -> Self {
        LoraCache { capacity, entries: VecDeque::new() }
    }

    /// Switches `pipe` to `specs` (the base LoRAs and the request's `choice`). Refusals come before any
    /// weight changes, as `set_loras`'s do; nothing is kept then.
    pub fn swap(&mut self, pipe: &mut Pipeline<B>, choice: &[LoraChoice], specs: &[LoraSpec]) -> Result<Swapped> {
        if let Some(i) = self.entries.iter().position(|(c, _)| c == choice) {
            let entry = self.entries.remove(i).expect("index in range");
            let used = pipe.use_loras(&entry.1);
            self.entries.push_front(entry);
            return used.map(|()| Swapped::Cached);
        }
        if self.capacity == 0 {
            return pipe.set_loras(specs).map(|()| Swapped::New);
        }
        let prepared = pipe.prepare_loras(specs)?;
        pipe.use_loras(&prepared)?;
        self.entries.truncate(self.capacity - 1);
        self.entries.push_front((choice.to_vec(), prepared));
        Ok(Swapped::New)
    }
}
