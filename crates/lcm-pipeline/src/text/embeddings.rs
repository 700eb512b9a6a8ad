//! Textual-inversion embeddings in the text encoders, as diffusers' `load_textual_inversion` adds
//! them: new tokenizer tokens and new rows of each encoder's token table; and each encoder's trigger
//! words for A1111's syntax.

use lcm_core::{Backend, Error, Result};

use super::{TextEncoder, TextEncoders};
use crate::embeddings::{Embedding, EmbeddingDir, EmbeddingInfo, SkippedEmbedding, Vectors};
use crate::prompt::TriggerWord;

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
        let clash = self.embeddings.loaded.iter().zip(&self.embeddings.triggers[0]).find(|(_, t)| same(&t.tokens));
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

    /// The embeddings a spec names, added in one growth of each token table: its files first (any that
    /// does not fit is an error), then its folder's (those that do not fit are skipped and listed, as
    /// A1111 skips them).
    pub(crate) fn add_named_embeddings(
        &mut self,
        backend: &B,
        files: Vec<Embedding>,
        dir: Option<EmbeddingDir>,
    ) -> Result<()> {
        let mut accepted = Vec::new();
        for e in files {
            self.check_embedding(&e, &accepted)?;
            accepted.push(e);
        }
        if let Some(found) = dir {
            self.embeddings.skipped.extend(found.skipped);
            for e in found.embeddings {
                match self.check_embedding(&e, &accepted) {
                    Ok(()) => accepted.push(e),
                    Err(err) => {
                        self.embeddings.skipped.push(SkippedEmbedding { path: e.path, reason: err.to_string() })
                    }
                }
            }
        }
        self.add_embeddings(backend, &accepted)?;
        Ok(())
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
            if let (Some(te), Some(second)) = (self.second.as_ref(), second_ids.as_ref()) {
                // The second encoder's own BPE ids and rows (one vocabulary on SDXL; tiny test
                // tokenizers differ).
                let vectors = second[span.clone()].to_vec();
                ids.push(vectors.clone());
                self.embeddings.triggers[1]
                    .push(TriggerWord { tokens: te.tokenizer.encode_base(&e.trigger)?, vectors });
            }
            self.embeddings.loaded.push(EmbeddingInfo {
                trigger: e.trigger.clone(),
                path: e.path.clone(),
                vectors: e.vectors(),
                widths: std::iter::once(e.first.width).chain(e.second.as_ref().map(|g| g.width)).collect(),
                tokens: names[span].to_vec(),
                ids,
            });
            self.embeddings.triggers[0].push(trigger.clone());
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
                "its tokenizer gives the new tokens ids {:?}, but the token table has {next} rows: tokenizer \
                 and text encoder disagree on the vocabulary size",
                ids
            ),
        ));
    }
    te.model.append_token_rows(backend, rows)?;
    te.tokenizer = tokenizer;
    Ok(ids)
}
