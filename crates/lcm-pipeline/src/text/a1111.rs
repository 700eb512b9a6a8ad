//! Prompts encoded as AUTOMATIC1111 encodes them (`modules/sd_hijack_clip.py`,
//! `FrozenCLIPEmbedderWithCustomWordsBase.forward` and `process_tokens`), from the chunks
//! `crate::prompt::chunks` makes:
//! - every 77-token chunk goes through the text encoder on its own (one batch of k chunks here; A1111
//!   runs them one after another, which is the same per chunk) and the states are joined along the
//!   sequence: 77·k keys for cross attention;
//! - emphasis "Original" (`modules/sd_emphasis.py`, A1111's default): each token's state is multiplied
//!   by its weight, then the whole chunk is rescaled so its mean is the unweighted chunk's mean;
//! - SDXL: both encoders take the same text (each with its own chunks: the second pads with "!"); the
//!   pooled embedding is the second encoder's projected final state of the first chunk at its first
//!   end-of-text (A1111's `text.argmax(dim=-1)`: embedding vectors sit at placeholder id 0 there, so
//!   the first `<|endoftext|>` is the largest id), unweighted. A1111 takes the same hidden layer for
//!   the prompt and the negative prompt.
//!
//! The weighted states come back to the host and go into the loop's context inputs from there: a
//! few hundred kilobytes per prompt, once per generation.

use lcm_core::{Backend, Executor, HostData, Result};
use lcm_models::arch::clip::{output, ClipOutput};
use lcm_models::denoise::{input, DenoiseInputs};

use super::{sdxl_inputs, Rows, TextEncoder, TextEncoders};
use crate::prompt::{chunks, Chunk};
use crate::tokenizer::CLIP_MAX_LEN;

/// One prompt in A1111's chunks, for each encoder.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// The first (or only) encoder's chunks.
    pub first: Vec<Chunk>,
    /// SDXL's second encoder's: the same tokens, padded with its tokenizer's pad id.
    pub second: Option<Vec<Chunk>>,
}

impl Chunked {
    /// Context tokens: 77 per chunk.
    pub fn tokens(&self) -> usize {
        self.first.len() * CLIP_MAX_LEN
    }
}

impl<B: Backend> TextEncoders<B> {
    /// `text` as A1111 chunks it for each encoder, with each encoder's trigger words of the loaded
    /// embeddings.
    pub(super) fn chunk(&self, text: &str) -> Result<Chunked> {
        let triggers = &self.embeddings.triggers;
        let first = chunks(&self.first.tokenizer, text, &triggers[0])?;
        let second = match self.second.as_ref() {
            Some(te) => Some(chunks(&te.tokenizer, text, triggers.get(1).map_or(&[][..], Vec::as_slice))?),
            None => None,
        };
        // Each encoder chunks its own tokens, as A1111's one embedder per encoder; SDXL's two tokenizers
        // share a vocabulary, so their counts agree unless a folder ships another one.
        if let Some(s) = second.as_ref().filter(|s| s.len() != first.len()) {
            return Err(lcm_core::Error::invalid(
                "prompt",
                format!(
                    "tokenizer and tokenizer_2 split it into {} and {} chunks of 75 tokens; A1111's syntax \
                     needs them to agree (use BREAK to set the chunks, or the plain syntax)",
                    first.len(),
                    s.len()
                ),
            ));
        }
        Ok(Chunked { first, second })
    }

    /// Writes one prompt's weighted states into the loop's context rows `rows`, each `tokens` long
    /// (the longer half of a guided batch: the rest of a shorter prompt's rows is zeros, which its
    /// cross attention does not see), and for SDXL the pooled embedding.
    pub(super) fn write_chunked(
        &mut self,
        backend: &B,
        prompt: &Chunked,
        rows: &Rows,
        tokens: usize,
        den: &mut Executor<B>,
        inputs: &DenoiseInputs,
    ) -> Result<()> {
        let (states, _) = encode_chunks(&mut self.first, backend, &prompt.first)?;
        write_rows(backend, den, input::CONTEXT, &states, tokens * self.first.model.config.hidden_size, rows)?;
        let (Some(second), Some(chunks)) = (self.second.as_mut(), prompt.second.as_ref()) else {
            return Ok(());
        };
        let (context_2, text_embeds) = sdxl_inputs(inputs)?;
        let (states, pooled) = encode_chunks(second, backend, chunks)?;
        write_rows(backend, den, context_2, &states, tokens * second.model.config.hidden_size, rows)?;
        let pooled = pooled.ok_or_else(|| {
            lcm_core::Error::invalid("text_encoder_2", "is not a CLIPTextModelWithProjection (no text_projection)")
        })?;
        write_rows(backend, den, text_embeds, &pooled, pooled.len(), rows)
    }
}

/// Every chunk through `te`, weighted: the states `[k·77, width]` and, with a projection, the first
/// chunk's pooled embedding.
fn encode_chunks<B: Backend>(
    te: &mut TextEncoder<B>,
    backend: &B,
    chunks: &[Chunk],
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let ids: Vec<i32> = chunks.iter().flat_map(|c| c.ids.iter().map(|&i| i as i32)).collect();
    let mut outs = te.model.forward_outputs(backend, &ids, chunks.len())?;
    let cfg = &te.model.config;
    // FinalNorm graphs have one output; SDXL's (Penultimate) give the configured layer first.
    let context = match cfg.output {
        ClipOutput::FinalNorm => 0,
        ClipOutput::Penultimate => output::CONTEXT,
    };
    let pooled = match (cfg.output, cfg.projection_dim) {
        (ClipOutput::Penultimate, Some(p)) => {
            let eos = te.tokenizer.eos_id();
            let at = chunks[0].ids.iter().position(|&i| i == eos).unwrap_or(0);
            Some(outs[output::PROJECTED].data[at * p..(at + 1) * p].to_vec())
        }
        _ => None,
    };
    let mut states = std::mem::take(&mut outs[context].data);
    let width = cfg.hidden_size;
    for (chunk, z) in chunks.iter().zip(states.chunks_mut(CLIP_MAX_LEN * width)) {
        emphasize(z, &chunk.weights, width);
    }
    Ok((states, pooled))
}

/// A1111's emphasis "Original" on one chunk's states `z` `[77, width]`: each token's row times its
/// weight, then all of it times (mean before / mean after). The means are taken in f64 and rounded
/// once (torch reduces f32 in a different order; either is within an ulp or two of the exact mean);
/// the ratio and the products are f32, as torch's.
pub(crate) fn emphasize(z: &mut [f32], weights: &[f32], width: usize) {
    let mean = |z: &[f32]| (z.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len() as f64) as f32;
    let original = mean(z);
    for (row, &w) in z.chunks_mut(width).zip(weights) {
        row.iter_mut().for_each(|v| *v *= w);
    }
    let ratio = original / mean(z);
    z.iter_mut().for_each(|v| *v *= ratio);
}

/// `data` into input `input` at each row of `rows`, `per` elements a row (zeros after `data`).
fn write_rows<B: Backend>(
    backend: &B,
    den: &mut Executor<B>,
    input: usize,
    data: &[f32],
    per: usize,
    rows: &Rows,
) -> Result<()> {
    let mut row = data.to_vec();
    row.resize(per, 0.0);
    for i in rows.first..rows.first + rows.count {
        den.set_input_at(backend, input, i * per, HostData::F32(&row))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::emphasize;

    #[test]
    fn emphasis_weights_rows_and_keeps_the_mean() {
        let mut z: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        let before: f32 = z.iter().sum::<f32>() / 12.0;
        emphasize(&mut z, &[1.0, 2.0, 0.5], 4);
        let after: f32 = z.iter().sum::<f32>() / 12.0;
        assert!((after - before).abs() < 1e-6, "{before} {after}");
        // Rows 1 and 2 times their weights, then one common ratio.
        let ratio = z[5] / ((5.0 * 0.25 - 1.0) * 2.0);
        assert!((z[6] - (6.0 * 0.25 - 1.0) * 2.0 * ratio).abs() < 1e-6);
        assert!((z[11] - (11.0 * 0.25 - 1.0) * 0.5 * ratio).abs() < 1e-6);
        assert!((z[1] - (0.25 - 1.0) * ratio).abs() < 1e-6);
        // Unit weights leave the states exactly as they were.
        let mut same: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
        let orig = same.clone();
        emphasize(&mut same, &[1.0, 1.0], 4);
        assert_eq!(same, orig);
    }
}
