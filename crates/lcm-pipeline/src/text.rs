//! The prompt side of a pipeline: one CLIP text encoder (StableDiffusionPipeline) or two
//! (StableDiffusionXLPipeline), encoded straight into the denoising loop's inputs on the backend.
//!
//! SDXL, as diffusers' `encode_prompt` does it: the same prompt through both tokenizers and encoders;
//! the context is both encoders' `hidden_states[-(clip_skip + 2)]` side by side (the loop's two context
//! inputs, joined in its graph); the pooled `text_embeds` are text_encoder_2's projected final state at
//! its pooled token. With classifier-free guidance and no negative prompt, a pipeline with
//! `force_zeros_for_empty_prompt` uses zeros for the negative context and pooled embeds; otherwise the
//! negative prompt ("" when absent) is encoded the same way but from `hidden_states[-2]` whatever
//! `clip_skip` says (diffusers applies clip_skip to the positive prompt only).

use lcm_core::{Backend, Error, Executor, HostData, Result};
use lcm_models::arch::clip::output;
use lcm_models::denoise::{input, DenoiseInputs, TextCopy};
use lcm_models::ClipTextModel;

use crate::tokenizer::{ClipTokenizer, CLIP_MAX_LEN};

/// A tokenizer and the text encoder it feeds.
pub struct TextEncoder<B: Backend> {
    /// Its tokenizer (SDXL's `tokenizer_2` pads with its own pad token).
    pub tokenizer: ClipTokenizer,
    /// The encoder.
    pub model: ClipTextModel<B>,
}

impl<B: Backend> TextEncoder<B> {
    fn ids(&self, prompt: &str) -> Result<Vec<i32>> {
        Ok(self.tokenizer.encode(prompt)?.iter().map(|&i| i as i32).collect())
    }
}

/// A pipeline's text encoders.
pub struct TextEncoders<B: Backend> {
    /// `text_encoder` + `tokenizer`.
    pub first: TextEncoder<B>,
    /// SDXL's `text_encoder_2` + `tokenizer_2`; `None` for SD1.5-family pipelines.
    pub second: Option<TextEncoder<B>>,
    /// `force_zeros_for_empty_prompt` from SDXL's `model_index.json` (diffusers' default: true).
    pub force_zeros_for_empty_prompt: bool,
}

/// One request's prompts and the images of the batch they are for.
pub struct PromptRows<'a> {
    /// The prompt.
    pub prompt: &'a str,
    /// The negative prompt, used with classifier-free guidance.
    pub negative: Option<&'a str>,
    /// The request's first image in the batch.
    pub first: usize,
    /// Its images.
    pub count: usize,
}

/// Which rows of the loop's batch a prompt fills.
struct Rows {
    first: usize,
    count: usize,
}

impl<B: Backend> TextEncoders<B> {
    /// The width of the first encoder's part of the context when there are two (the loop's context
    /// split), else `None`.
    pub fn context_split(&self) -> Option<usize> {
        self.second.as_ref().map(|_| self.first.model.config.hidden_size)
    }

    /// Encodes each request's prompts into the denoising executor `den`, whose batch holds `n` images
    /// (twice that when `guided`: every uncond row first, then every cond row): the context inputs
    /// and, for SDXL, the pooled text embeds. Nothing goes through the host but token ids (and zeros
    /// for a zeroed negative).
    pub fn encode_into(
        &mut self,
        backend: &B,
        prompts: &[PromptRows<'_>],
        n: usize,
        guided: bool,
        den: &mut Executor<B>,
        inputs: &DenoiseInputs,
    ) -> Result<()> {
        for p in prompts {
            let cond = Rows { first: p.first + if guided { n } else { 0 }, count: p.count };
            let uncond = Rows { first: p.first, count: p.count };
            if self.second.is_none() {
                if guided {
                    self.encode_sd(backend, p.negative.unwrap_or(""), &uncond, den)?;
                }
                self.encode_sd(backend, p.prompt, &cond, den)?;
                continue;
            }
            self.encode_sdxl(backend, p.prompt, output::CONTEXT, &cond, den, inputs)?;
            if guided {
                match p.negative {
                    None if self.force_zeros_for_empty_prompt => self.zeros(backend, &uncond, den, inputs)?,
                    neg => {
                        let neg = neg.unwrap_or("");
                        self.encode_sdxl(backend, neg, output::NEGATIVE_CONTEXT, &uncond, den, inputs)?
                    }
                }
            }
        }
        Ok(())
    }

    fn encode_sd(&mut self, backend: &B, prompt: &str, rows: &Rows, den: &mut Executor<B>) -> Result<()> {
        let te = &mut self.first;
        let ids = te.ids(prompt)?;
        let per = CLIP_MAX_LEN * te.model.config.hidden_size;
        let at: Vec<usize> = (rows.first..rows.first + rows.count).map(|i| i * per).collect();
        te.model.encode_into(backend, &ids, den, input::CONTEXT, &at)
    }

    fn encode_sdxl(
        &mut self,
        backend: &B,
        prompt: &str,
        context: usize,
        rows: &Rows,
        den: &mut Executor<B>,
        inputs: &DenoiseInputs,
    ) -> Result<()> {
        let (context_2, text_embeds) = sdxl_inputs(inputs)?;
        let second = self.second.as_mut().expect("SDXL has a second encoder");
        for (te, dst, pooled) in [(&mut self.first, input::CONTEXT, None), (second, context_2, Some(text_embeds))] {
            let ids = te.ids(prompt)?;
            let cfg = &te.model.config;
            let per = CLIP_MAX_LEN * cfg.hidden_size;
            let rows_at = |width: usize| (rows.first..rows.first + rows.count).map(|i| i * width).collect::<Vec<_>>();
            let mut copies = vec![TextCopy { output: context, elements: 0..per, input: dst, at: rows_at(per) }];
            if let Some(input) = pooled {
                let p = cfg.projection_dim.ok_or_else(|| {
                    Error::invalid("text_encoder_2", "is not a CLIPTextModelWithProjection (no text_projection)")
                })?;
                let token = cfg.pooled_position(&ids);
                copies.push(TextCopy {
                    output: output::PROJECTED,
                    elements: token * p..(token + 1) * p,
                    input,
                    at: rows_at(p),
                });
            }
            te.model.encode_copies(backend, &ids, den, &copies)?;
        }
        Ok(())
    }

    /// diffusers' `torch.zeros_like` negative context and pooled embeds.
    fn zeros(&self, backend: &B, rows: &Rows, den: &mut Executor<B>, inputs: &DenoiseInputs) -> Result<()> {
        let (context_2, text_embeds) = sdxl_inputs(inputs)?;
        let second = self.second.as_ref().expect("SDXL has a second encoder");
        let p = second.model.config.projection_dim.unwrap_or(0);
        for (input, width) in [
            (input::CONTEXT, CLIP_MAX_LEN * self.first.model.config.hidden_size),
            (context_2, CLIP_MAX_LEN * second.model.config.hidden_size),
            (text_embeds, p),
        ] {
            let zeros = vec![0.0f32; rows.count * width];
            den.set_input_at(backend, input, rows.first * width, HostData::F32(&zeros))?;
        }
        Ok(())
    }
}

fn sdxl_inputs(inputs: &DenoiseInputs) -> Result<(usize, usize)> {
    match (inputs.context_2, inputs.text_embeds) {
        (Some(c), Some(t)) => Ok((c, t)),
        _ => Err(Error::invalid(
            "denoising loop",
            "two text encoders need a UNet with addition_embed_type \"text_time\" (SDXL's) and a split context",
        )),
    }
}
