//! The engine's errors as Python exceptions: a bad argument is a `ValueError` naming the keyword
//! argument (`num_inference_steps`, not the spec's `steps`), a missing file a `FileNotFoundError`
//! naming it, everything else (a file in the wrong format, a tensor that does not fit, the device)
//! `lcm.LcmError`.

use lcm_core::Error;
use lcm_pipeline::spec::Field;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    lcm,
    LcmError,
    PyException,
    "An engine error: a model file in the wrong format, a tensor that does not fit the model, the device \
     failing, a generation cancelled. The message names the file or tensor."
);

/// The keyword argument of `Pipeline.__call__` / `Pipeline.from_pretrained` that sets `field`
/// (diffusers' names where diffusers has the argument).
fn kwarg(field: Field) -> &'static str {
    match field {
        Field::Steps => "num_inference_steps",
        Field::NumImages => "num_images_per_prompt",
        Field::InitImage => "image",
        Field::Mask => "mask_image",
        Field::ConfigDir | Field::TokenizerDir => "config",
        Field::Width
        | Field::Height
        | Field::GuidanceScale
        | Field::Strength
        | Field::VaeTiling
        | Field::VaeTileSize
        | Field::ControlNet
        | Field::ControlImage
        | Field::ControlScale
        | Field::ControlStart
        | Field::ControlEnd
        | Field::Scheduler
        | Field::Eta
        | Field::TimestepSpacing
        | Field::PredictionType
        | Field::Prompt
        | Field::NegativePrompt
        | Field::PromptSyntax => field.name(),
    }
}

/// The Python exception for an engine error.
pub fn to_py(e: Error) -> PyErr {
    let field = Field::of(&e);
    match e {
        Error::Invalid { what, msg } => invalid(field.map_or(what.as_str(), |f| kwarg(f)), msg),
        Error::File { ref path, .. } if !path.exists() => PyFileNotFoundError::new_err(e.to_string()),
        e => LcmError::new_err(e.to_string()),
    }
}

/// A `ValueError` naming the argument `name`.
pub fn invalid(name: &str, msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{name}: {msg}"))
}
