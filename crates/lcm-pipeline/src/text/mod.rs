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
//!
//! With [`PromptSyntax::A1111`] the prompts are chunked, weighted and joined as AUTOMATIC1111 does
//! ([`a1111`]); a [`PromptPlan`] says, before the loop is built, how many context tokens each half of
//! the batch has.

mod a1111;
mod embeddings;

use lcm_core::{Backend, Error, Executor, HostData, Result};
use lcm_models::arch::clip::output;
use lcm_models::denoise::{input, DenoiseInputs, TextCopy};
use lcm_models::ClipTextModel;

use crate::embeddings::EmbeddingSet;
use crate::prompt::PromptSyntax;
use crate::spec::Field;
use crate::tokenizer::{ClipTokenizer, CLIP_MAX_LEN};
pub use a1111::Chunked;

/// A tokenizer and the text encoder it feeds.
pub struct TextEncoder<B: Backend> {
    /// Its tokenizer (SDXL's `tokenizer_2` pads with its own pad token).
    pub tokenizer: ClipTokenizer,
    /// The encoder.
    pub model: ClipTextModel<B>,
}

impl<B: Backend> TextEncoder<B> {
    /// The prompt's 77 ids, multi-vector embedding tokens expanded first as diffusers'
    /// `maybe_convert_prompt` does.
    fn ids(&self, prompt: &str) -> Result<Vec<i32>> {
        let prompt = self.tokenizer.convert_prompt(prompt)?;
        Ok(self.tokenizer.encode(&prompt)?.iter().map(|&i| i as i32).collect())
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
    /// The textual-inversion embeddings added ([`TextEncoders::add_embeddings`]) and those skipped.
    pub embeddings: EmbeddingSet,
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

/// The batch's prompts as the encoders will take them, and the loop's context length for each half.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    /// How the prompts are read.
    pub syntax: PromptSyntax,
    /// A1111: each request's prompt and (guided) negative prompt in chunks; `None` for the negative
    /// means zeros (SDXL's empty negative prompt). Empty for the plain syntax.
    chunked: Vec<(Chunked, Option<Chunked>)>,
    /// Context tokens of the cond rows (77 for the plain syntax, 77·chunks for A1111).
    pub cond_tokens: usize,
    /// Context tokens of the uncond rows: A1111 runs a prompt and a negative prompt of different
    /// chunk counts as two UNet calls, which the loop reproduces by limiting each half's cross
    /// attention to its own tokens.
    pub uncond_tokens: usize,
}

impl PromptPlan {
    /// Tokens of the loop's context input: the longer half.
    pub fn tokens(&self) -> usize {
        self.cond_tokens.max(self.uncond_tokens)
    }
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

    /// The batch's prompts read with `syntax`: for A1111, chunked (with the loaded embeddings' trigger
    /// words), every request's prompt the same number of chunks and every negative
    /// prompt too (a batch runs one loop; a server batches only such requests), else an error naming
    /// the batch. A prompt too long for [`crate::prompt::MAX_CHUNKS`] is refused here, before any work.
    pub fn plan(&self, syntax: PromptSyntax, prompts: &[PromptRows<'_>], guided: bool) -> Result<PromptPlan> {
        let plain = PromptPlan { syntax, chunked: Vec::new(), cond_tokens: CLIP_MAX_LEN, uncond_tokens: CLIP_MAX_LEN };
        if syntax == PromptSyntax::Plain {
            return Ok(plain);
        }
        let mut chunked = Vec::with_capacity(prompts.len());
        for p in prompts {
            // The chunker's errors (too long, say) name the prompt they are about.
            let named = |f: Field| {
                move |e: Error| match e {
                    Error::Invalid { msg, .. } => f.invalid(msg),
                    e => e,
                }
            };
            let cond = self.chunk(p.prompt).map_err(named(Field::Prompt))?;
            let negative = p.negative.unwrap_or("");
            // A1111's SDXL conditioner zeroes an empty negative prompt (`force_zero_negative_prompt`
            // in modules/sd_models_xl.py); SD1.5 and SD2 encode "".
            let zeros = self.second.is_some() && negative.is_empty();
            let uncond = (guided && !zeros).then(|| self.chunk(negative)).transpose();
            let uncond = uncond.map_err(named(Field::NegativePrompt))?;
            chunked.push((cond, uncond));
        }
        let tokens =
            |(c, u): &(Chunked, Option<Chunked>)| (c.tokens(), u.as_ref().map_or(CLIP_MAX_LEN, Chunked::tokens));
        let (cond_tokens, uncond_tokens) = tokens(&chunked[0]);
        if let Some((c, u)) = chunked.iter().map(tokens).find(|&t| t != (cond_tokens, uncond_tokens)) {
            return Err(Error::invalid(
                "batch",
                format!(
                    "requests batched together must have prompts of the same length in 75-token chunks \
                     (A1111 syntax): {cond_tokens} and {c} context tokens, negative prompts {uncond_tokens} and {u}"
                ),
            ));
        }
        Ok(PromptPlan {
            chunked,
            cond_tokens,
            uncond_tokens: if guided { uncond_tokens } else { cond_tokens },
            ..plain
        })
    }

    /// Encodes each request's prompts, as `plan` reads them, into the denoising executor `den`, whose
    /// batch holds `n` images (twice that when `guided`: every uncond row first, then every cond
    /// row): the context inputs and, for SDXL, the pooled text embeds. With the plain syntax nothing
    /// goes through the host but token ids (and zeros for a zeroed negative).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_into(
        &mut self,
        backend: &B,
        plan: &PromptPlan,
        prompts: &[PromptRows<'_>],
        n: usize,
        guided: bool,
        den: &mut Executor<B>,
        inputs: &DenoiseInputs,
    ) -> Result<()> {
        let tokens = plan.tokens();
        for (k, p) in prompts.iter().enumerate() {
            let cond = Rows { first: p.first + if guided { n } else { 0 }, count: p.count };
            let uncond = Rows { first: p.first, count: p.count };
            if let Some((c, u)) = plan.chunked.get(k) {
                self.write_chunked(backend, c, &cond, tokens, den, inputs)?;
                if guided {
                    match u {
                        Some(u) => self.write_chunked(backend, u, &uncond, tokens, den, inputs)?,
                        None => self.zeros(backend, &uncond, tokens, den, inputs)?,
                    }
                }
                continue;
            }
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
                    None if self.force_zeros_for_empty_prompt => self.zeros(backend, &uncond, tokens, den, inputs)?,
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

    /// diffusers' `torch.zeros_like` negative context and pooled embeds, for rows of `tokens` tokens.
    fn zeros(
        &self,
        backend: &B,
        rows: &Rows,
        tokens: usize,
        den: &mut Executor<B>,
        inputs: &DenoiseInputs,
    ) -> Result<()> {
        let (context_2, text_embeds) = sdxl_inputs(inputs)?;
        let second = self.second.as_ref().expect("SDXL has a second encoder");
        let p = second.model.config.projection_dim.unwrap_or(0);
        for (input, width) in [
            (input::CONTEXT, tokens * self.first.model.config.hidden_size),
            (context_2, tokens * second.model.config.hidden_size),
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
