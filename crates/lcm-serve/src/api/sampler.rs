//! The sampler a request runs: A1111's `sampler_name` (or its older `sampler_index`), `scheduler`
//! (the "Schedule type" of A1111 1.9+) and `eta`; the OpenAI endpoints' `sampler` extension. Every
//! request leaves here with `Request::sampler` set to the sampler it will run (the server's default
//! when it names none), so its PNG and answer name it.

use lcm_pipeline::pipeline::MAX_STEPS;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions, Spacing};

use super::*;

/// A1111's schedule types lcm runs: (name, label, the diffusers `timestep_spacing` it is).
/// "Automatic" is the sampler's own. "SGM Uniform" is `linspace(t(σmax), t(σmin), n+1)[:-1]`
/// (A1111's sd_schedulers.py), which diffusers' scheduler docs give as `timestep_spacing="trailing"`
/// (trailing rounds those timesteps to integers). The others (Karras, Exponential, Uniform, …) reshape
/// the sigmas themselves, which no diffusers spacing does: they are refused by name.
pub const A1111_SCHEDULERS: [(&str, &str, Option<Spacing>); 2] =
    [("automatic", "Automatic", None), ("sgm_uniform", "SGM Uniform", Some(Spacing::Trailing))];

/// A1111's older aliases of the samplers (its `/sdapi/v1/samplers` lists them).
pub fn a1111_aliases(kind: SamplerKind) -> &'static [&'static str] {
    match kind {
        SamplerKind::Euler => &["k_euler"],
        SamplerKind::EulerAncestral => &["k_euler_a", "k_euler_ancestral"],
        _ => &[],
    }
}

fn accepted_names() -> String {
    let names: Vec<String> = SamplerKind::ALL.iter().map(|k| format!("\"{}\"", k.a1111_name())).collect();
    names.join(", ")
}

/// A sampler by its A1111 name (case-insensitive), alias or lcm name ("euler-a").
fn a1111_kind(field: &str, name: &str) -> Result<SamplerKind, ApiError> {
    let lower = name.trim().to_ascii_lowercase();
    SamplerKind::from_a1111(name)
        .or_else(|| SamplerKind::parse(&lower))
        .or_else(|| SamplerKind::ALL.into_iter().find(|&k| a1111_aliases(k).contains(&lower.as_str())))
        .ok_or_else(|| ApiError::bad(field, format!("`{name}`: lcm runs the samplers {}", accepted_names())))
}

/// The `steps` bound of a request running `sampler`: the server's default sampler's, else
/// [`MAX_STEPS`] (the pipeline checks that sampler's own bound when it runs the request).
pub(super) fn max_steps(limits: &Limits, sampler: &SamplerOptions) -> usize {
    if *sampler == limits.sampler {
        limits.max_steps
    } else {
        MAX_STEPS
    }
}

/// A1111's `sampler_name` (else `sampler_index`; absent: the server's sampler), `scheduler` and
/// `eta` (TCD's gamma / DDIM's eta; for "Euler a", A1111's ancestral eta, which diffusers' sampler
/// fixes at 1; the samplers without one ignore it, as A1111's do).
pub(super) fn a1111_sampler(f: &Fields, limits: &Limits) -> Result<SamplerOptions, ApiError> {
    let named = match (f.string("sampler_name", 64)?, f.string("sampler_index", 64)?) {
        (Some(name), _) => Some(a1111_kind("sampler_name", &name)?),
        (None, Some(name)) => Some(a1111_kind("sampler_index", &name)?),
        (None, None) => None,
    };
    let mut options = match named {
        Some(kind) if kind != limits.sampler.kind => SamplerOptions::new(kind),
        _ => limits.sampler,
    };
    let kind = options.kind;
    if let Some(name) = f.string("scheduler", 64)? {
        let Some(&(_, label, spacing)) = A1111_SCHEDULERS
            .iter()
            .find(|(n, label, _)| n.eq_ignore_ascii_case(name.trim()) || label.eq_ignore_ascii_case(name.trim()))
        else {
            let labels: Vec<String> = A1111_SCHEDULERS.iter().map(|s| format!("\"{}\"", s.1)).collect();
            return Err(ApiError::bad(
                "scheduler",
                format!(
                    "`{name}`: lcm runs the schedule types {} (the others reshape the sigmas, which diffusers' \
                     samplers do not)",
                    labels.join(", ")
                ),
            ));
        };
        if let Some(spacing) = spacing {
            if matches!(kind, SamplerKind::Lcm | SamplerKind::Tcd) {
                return Err(ApiError::bad(
                    "scheduler",
                    format!(
                        "`{label}`: the {} sampler picks its timesteps from its distillation grid; send \"Automatic\"",
                        kind.a1111_name()
                    ),
                ));
            }
            options.timestep_spacing = Some(spacing);
        }
    }
    if let Some(eta) = f.float("eta", 0.0, 1.0)? {
        match kind {
            SamplerKind::Tcd | SamplerKind::Ddim => options.eta = Some(eta),
            SamplerKind::EulerAncestral if eta != 1.0 => {
                return Err(ApiError::bad(
                    "eta",
                    format!(
                        "{eta}: lcm's \"Euler a\" is diffusers' EulerAncestralDiscreteScheduler, whose noise is \
                         A1111's eta 1: send 1 or omit it"
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(options)
}

/// The OpenAI endpoints' `sampler` extension: an lcm name ("lcm", "tcd", "euler", "euler-a",
/// "ddim"; A1111's are accepted too), with the model's settings; absent: the server's sampler.
pub(super) fn openai_sampler(name: Option<&str>, limits: &Limits) -> Result<SamplerOptions, ApiError> {
    let Some(name) = name else { return Ok(limits.sampler) };
    let kind = SamplerKind::parse(name.trim()).or_else(|| SamplerKind::from_a1111(name)).ok_or_else(|| {
        let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
        ApiError::bad("sampler", format!("`{name}`: lcm runs the samplers {}", names.join(", ")))
    })?;
    Ok(if kind == limits.sampler.kind { limits.sampler } else { SamplerOptions::new(kind) })
}
