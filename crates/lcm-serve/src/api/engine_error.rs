//! An engine refusal as the 4xx answer naming the request's own JSON key.

use super::*;

/// An engine refusal ([`Error::Invalid`]) for a request parsed from `api` with the ControlNet units
/// `controls`: 400 naming the request's JSON key for the spec's [`Field`] (a ControlNet's own
/// settings: the unit's, `alwayson_scripts.controlnet.args[1].model`), with ControlNet paths shown as
/// their names. Other errors are 500s.
pub fn engine_error(api: Api, controls: &[ControlChoice], e: &Error) -> ApiError {
    let hide =
        |m: &str| crate::controlnets::hide_paths(m, controls.iter().map(|c| (c.name.as_str(), c.path.as_path())));
    if api == Api::Oip {
        return crate::oip::engine_refusal(e);
    }
    let Error::Invalid { msg, .. } = e else {
        return ApiError::internal(format!("generation failed: {}", hide(&e.to_string())));
    };
    let a1111 = !matches!(api, Api::OpenAi | Api::Edits);
    let edits = api == Api::Edits;
    let field = match Field::of(e) {
        Some(Field::Width) => (if a1111 { "width" } else { "size" }).to_string(),
        Some(Field::Height) => (if a1111 { "height" } else { "size" }).to_string(),
        Some(Field::Steps) => "steps".into(),
        Some(Field::NumImages) => (if a1111 { "batch_size" } else { "n" }).to_string(),
        Some(Field::GuidanceScale) => (if a1111 { "cfg_scale" } else { "guidance_scale" }).to_string(),
        Some(Field::Strength) => (if edits { "strength" } else { "denoising_strength" }).to_string(),
        Some(Field::InitImage) => (if edits { "image" } else { "init_images[0]" }).to_string(),
        Some(Field::Mask) => "mask".into(),
        Some(Field::Scheduler) => (if a1111 { "sampler_name" } else { "sampler" }).to_string(),
        Some(Field::Eta) => "eta".into(),
        Some(Field::TimestepSpacing) => (if a1111 { "scheduler" } else { "sampler" }).to_string(),
        Some(Field::Prompt) => "prompt".into(),
        Some(Field::NegativePrompt) => "negative_prompt".into(),
        Some(
            f @ (Field::ControlNet
            | Field::ControlImage
            | Field::ControlScale
            | Field::ControlStart
            | Field::ControlEnd),
        ) => {
            // "ControlNet K (PATH): …" from the request's checks, or a message naming the file.
            let numbered = msg
                .strip_prefix("ControlNet ")
                .and_then(|r| r.split_once(" ("))
                .and_then(|(k, _)| k.parse::<usize>().ok())
                .and_then(|k| controls.get(k.wrapping_sub(1)));
            let unit = numbered
                .or_else(|| controls.iter().find(|c| msg.contains(&*c.path.to_string_lossy())))
                .or(controls.first());
            match unit {
                None => "alwayson_scripts.controlnet".into(),
                Some(u) => {
                    let key = match f {
                        Field::ControlImage => u.image_key,
                        Field::ControlScale => "weight",
                        Field::ControlStart => "guidance_start",
                        Field::ControlEnd => "guidance_end",
                        _ => "model",
                    };
                    format!("{}.{key}", u.field)
                }
            }
        }
        _ => "request".into(),
    };
    ApiError::bad(field, hide(msg))
}
