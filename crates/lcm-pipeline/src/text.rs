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

use crate::embeddings::{Embedding, EmbeddingInfo, EmbeddingSet, TriggerWord, Vectors};
use crate::tokenizer::{ClipTokenizer, CLIP_MAX_LEN};

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

impl<B: Backend> TextEncoders<B> {
    /// Whether `e` can be added after these encoders' embeddings and those of `earlier` (a batch being
    /// checked before it is added): its family and widths fit the encoders (an SDXL model takes
    /// `clip_l` + `clip_g` embeddings only, SD1.5 / SD2 one tensor of the encoder's width — A1111 skips
    /// the others, diffusers fails on their width), no token diffusers would add for it
    /// ([`Embedding::token_names`]) is in either vocabulary already (diffusers' refusal), and its
    /// trigger word's BPE ids differ from every other embedding's (A1111 could not tell them apart).
    pub fn check_embedding(&self, e: &Embedding, earlier: &[Embedding]) -> Result<()> {
        self.check_family(e)?;
        let names = e.token_names();
        for te in std::iter::once(&self.first).chain(&self.second) {
            if let Some(n) = names.iter().find(|n| te.tokenizer.inner().token_to_id(n).is_some()) {
                let whose = match self.embeddings.loaded.iter().find(|l| l.tokens.contains(n)) {
                    Some(other) => format!("another embedding's ({})", other.path.display()),
                    None => "a vocabulary token".to_string(),
                };
                return Err(Error::file(
                    &e.path,
                    format!("token `{n}` is already in the tokenizer's vocabulary ({whose}): give another token name"),
                ));
            }
        }
        if let Some(other) = earlier.iter().find(|o| o.token_names().iter().any(|n| names.contains(n))) {
            return Err(Error::file(
                &e.path,
                format!("trigger word `{}` gives a token that {} also adds", e.trigger, other.path.display()),
            ));
        }
        let tokens = self.first.tokenizer.encode_base(&e.trigger)?;
        let same = |t: &[u32]| t == tokens.as_slice();
        let clash = self.embeddings.loaded.iter().zip(&self.embeddings.triggers).find(|(_, t)| same(&t.tokens));
        let clash = clash.map(|(l, _)| l.path.clone());
        let clash = match clash {
            Some(p) => Some(p),
            None => earlier
                .iter()
                .map(|o| Ok((o, self.first.tokenizer.encode_base(&o.trigger)?)))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .find(|(_, t)| same(t))
                .map(|(o, _)| o.path.clone()),
        };
        if let Some(other) = clash {
            return Err(Error::file(
                &e.path,
                format!(
                    "trigger word `{}` tokenizes as {}'s does: A1111's prompts could not tell them apart",
                    e.trigger,
                    other.display()
                ),
            ));
        }
        Ok(())
    }

    /// The family and width rule of [`TextEncoders::check_embedding`].
    fn check_family(&self, e: &Embedding) -> Result<()> {
        let width = |te: &TextEncoder<B>| te.model.config.hidden_size;
        let wrong_width = |v: &Vectors, want: usize, which: &str| {
            Error::tensor(
                &e.path,
                &v.tensor,
                format!("has width {}; {which} takes {want} (an embedding for another model family?)", v.width),
            )
        };
        match (&self.second, &e.second) {
            (None, None) if e.first.width != width(&self.first) => {
                Err(wrong_width(&e.first, width(&self.first), "the text encoder"))
            }
            (None, Some(_)) => Err(Error::file(
                &e.path,
                format!(
                    "is an SDXL embedding (`clip_l` + `clip_g`); this model has one text encoder, of width {}",
                    width(&self.first)
                ),
            )),
            (Some(second), None) => Err(Error::file(
                &e.path,
                format!(
                    "is an SD1.5 / SD2 embedding (one tensor `{}`, width {}); this SDXL model takes embeddings with                      `clip_l` [n, {}] and `clip_g` [n, {}] tensors",
                    e.first.tensor,
                    e.first.width,
                    width(&self.first),
                    width(second)
                ),
            )),
            (Some(second), Some(g)) => {
                if e.first.width != width(&self.first) {
                    return Err(wrong_width(&e.first, width(&self.first), "SDXL's first text encoder (clip_l)"));
                }
                if g.width != width(second) {
                    return Err(wrong_width(g, width(second), "SDXL's second text encoder (clip_g)"));
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Adds textual-inversion embeddings as diffusers' `load_textual_inversion` does, for each text
    /// encoder (SDXL: `clip_l` vectors to the first, `clip_g` to the second, the same token names in
    /// both tokenizers): the tokens `trigger`, `trigger_1`, … join the tokenizer and each vector becomes
    /// a new row of the token-embedding table at the id the tokenizer gives it. Every embedding is
    /// checked first ([`TextEncoders::check_embedding`]); on an error nothing changes. Returns each
    /// embedding's trigger word for A1111's syntax, also kept in [`TextEncoders::embeddings`].
    pub fn add_embeddings(&mut self, backend: &B, embeddings: &[Embedding]) -> Result<Vec<TriggerWord>> {
        for (i, e) in embeddings.iter().enumerate() {
            self.check_embedding(e, &embeddings[..i])?;
        }
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = embeddings.iter().flat_map(Embedding::token_names).collect();
        let first_rows: Vec<f32> = embeddings.iter().flat_map(|e| e.first.data.iter().copied()).collect();
        let first_ids = add_rows(backend, &mut self.first, &names, &first_rows)?;
        let second_ids = match self.second.as_mut() {
            None => None,
            Some(te) => {
                let rows: Vec<f32> =
                    embeddings.iter().flat_map(|e| e.second.iter().flat_map(|g| g.data.clone())).collect();
                Some(add_rows(backend, te, &names, &rows)?)
            }
        };
        let mut triggers = Vec::with_capacity(embeddings.len());
        let mut at = 0;
        for e in embeddings {
            let span = at..at + e.vectors();
            at = span.end;
            let trigger = TriggerWord {
                tokens: self.first.tokenizer.encode_base(&e.trigger)?,
                vectors: first_ids[span.clone()].to_vec(),
            };
            let mut ids = vec![trigger.vectors.clone()];
            ids.extend(second_ids.as_ref().map(|s| s[span.clone()].to_vec()));
            self.embeddings.loaded.push(EmbeddingInfo {
                trigger: e.trigger.clone(),
                path: e.path.clone(),
                vectors: e.vectors(),
                widths: std::iter::once(e.first.width).chain(e.second.as_ref().map(|g| g.width)).collect(),
                tokens: names[span].to_vec(),
                ids,
            });
            self.embeddings.triggers.push(trigger.clone());
            triggers.push(trigger);
        }
        Ok(triggers)
    }
}

/// Adds `names` to one encoder's tokenizer and `rows` to its table: the tokenizer's new ids must be
/// the table's next rows (as transformers' `resize_token_embeddings(len(tokenizer) + n)` makes them).
/// The table grows first, then the tokenizer, so that a failure leaves the tokenizer as it was.
fn add_rows<B: Backend>(backend: &B, te: &mut TextEncoder<B>, names: &[String], rows: &[f32]) -> Result<Vec<u32>> {
    let mut tokenizer = te.tokenizer.clone();
    let ids = tokenizer.add_embedding_tokens(names)?;
    let next = te.model.config.vocab_size;
    if ids.iter().enumerate().any(|(k, &id)| id as usize != next + k) {
        return Err(Error::invalid(
            "text encoder",
            format!(
                "its tokenizer gives the new tokens ids {:?}, but the token table has {next} rows: tokenizer and                  text encoder disagree on the vocabulary size",
                ids
            ),
        ));
    }
    te.model.append_token_rows(backend, rows)?;
    te.tokenizer = tokenizer;
    Ok(ids)
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
