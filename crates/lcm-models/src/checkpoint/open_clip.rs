//! SDXL single files hold their second text encoder (OpenCLIP ViT-bigG) under OpenCLIP's own names,
//! `conditioner.embedders.1.model.…`; lcm builds it as transformers' CLIPTextModelWithProjection.
//! The mapping, as diffusers' `convert_open_clip_checkpoint` does it:
//! - `token_embedding.weight`, `positional_embedding` → `text_model.embeddings.{token,position}_embedding`;
//! - `transformer.resblocks.N.`: `ln_1`/`ln_2` → `layer_norm1/2`, `attn.out_proj` → `self_attn.out_proj`,
//!   `mlp.c_fc`/`mlp.c_proj` → `mlp.fc1/fc2`, and `attn.in_proj_{weight,bias}` holds q, k and v
//!   stacked on the rows (in that order) → `self_attn.{q,k,v}_proj`;
//! - `ln_final` → `text_model.final_layer_norm`;
//! - `text_projection` `[hidden, projection]` is applied as `x @ P`: transposed into the `[projection,
//!   hidden]` linear weight.
//!
//! `logit_scale` (the contrastive loss's temperature) is no weight of the text tower.

use super::mapped::{FileKey, Take};

/// The file key of the CLIPTextModelWithProjection weight `name` in an OpenCLIP text tower stored
/// after `prefix`; `None` for a name the tower does not have.
pub fn open_clip_key(prefix: &str, name: &str) -> Option<FileKey> {
    let whole = |k: &str| Some(FileKey::whole(format!("{prefix}{k}")));
    match name {
        "text_projection.weight" => {
            return Some(FileKey { key: format!("{prefix}text_projection"), take: Take::Transposed })
        }
        "text_model.embeddings.token_embedding.weight" => return whole("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight" => return whole("positional_embedding"),
        _ => {}
    }
    let rest = name.strip_prefix("text_model.")?;
    if let Some(param) = rest.strip_prefix("final_layer_norm.") {
        return whole(&format!("ln_final.{param}"));
    }
    let rest = rest.strip_prefix("encoder.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let block = format!("{prefix}transformer.resblocks.{layer}.");
    let (module, param) = rest.rsplit_once('.')?;
    let qkv = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"];
    if let Some(i) = qkv.iter().position(|&m| m == module) {
        return Some(FileKey { key: format!("{block}attn.in_proj_{param}"), take: Take::Third(i) });
    }
    let theirs = match module {
        "self_attn.out_proj" => "attn.out_proj",
        "layer_norm1" => "ln_1",
        "layer_norm2" => "ln_2",
        "mlp.fc1" => "mlp.c_fc",
        "mlp.fc2" => "mlp.c_proj",
        _ => return None,
    };
    Some(FileKey::whole(format!("{block}{theirs}.{param}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_qkv_and_projection_are_cut_as_diffusers_converts_them() {
        let p = "conditioner.embedders.1.model.";
        let k = open_clip_key(p, "text_model.encoder.layers.3.self_attn.k_proj.bias").unwrap();
        assert_eq!(k, FileKey { key: format!("{p}transformer.resblocks.3.attn.in_proj_bias"), take: Take::Third(1) });
        let mut stacked: Vec<f32> = (0..12).map(|x| x as f32).collect(); // q, k, v of [2, 2]
        assert_eq!(k.file_shape(&[2, 2]).as_ref(), &[6, 2]);
        k.extract(&mut stacked, &[6, 2]);
        assert_eq!(stacked, [4.0, 5.0, 6.0, 7.0]);
        let t = open_clip_key(p, "text_projection.weight").unwrap();
        assert_eq!(t.file_shape(&[3, 2]).as_ref(), &[2, 3]);
        let mut m = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [[1, 2, 3], [4, 5, 6]]
        t.extract(&mut m, &[2, 3]);
        assert_eq!(m, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let fc = open_clip_key(p, "text_model.encoder.layers.0.mlp.fc2.weight").unwrap();
        assert_eq!(fc.key, format!("{p}transformer.resblocks.0.mlp.c_proj.weight"));
        assert_eq!(open_clip_key(p, "text_model.encoder.layers.0.self_attn.nope.weight"), None);
    }
}
