//! How a call crosses the C boundary: an [`Error`] becomes a status code and the thread's last-error
//! message, a panic is caught and reported as `LCM_ERR_PANIC`, and C strings and arrays are read with
//! their argument's name in every refusal.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use lcm_core::Error;
use lcm_pipeline::control_image::{ControlPreprocess, MAX_SIDE};
use lcm_pipeline::spec::{ControlUnit, Field, LoraSpec, MAX_CONTROLNETS};

use crate::*;

thread_local! {
    pub(crate) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status and message.
pub(crate) struct Failure(pub(crate) LcmStatus, pub(crate) String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Invalid { .. } => LCM_ERR_INVALID_ARGUMENT,
            Error::File { .. } | Error::Tensor { .. } | Error::Config { .. } => LCM_ERR_FILE,
            Error::Backend(_) | Error::NonFinite { .. } => LCM_ERR_BACKEND,
            Error::Cancelled => LCM_ERR_CANCELLED,
        };
        Failure(code, e.to_string())
    }
}

pub(crate) fn invalid(arg: &str, msg: impl std::fmt::Display) -> Failure {
    Failure(LCM_ERR_INVALID_ARGUMENT, format!("{arg}: {msg}"))
}

pub(crate) fn set_last_error(msg: &str) {
    // Interior NULs cannot be in a C string: shown as U+FFFD.
    let c = CString::new(msg.replace('\0', "\u{fffd}")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs an ABI function's body: its status, with the message kept for `lcm_last_error`; a panic is
/// caught here and never unwinds into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> LcmStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            LCM_OK
        }
        Ok(Err(Failure(code, msg))) => {
            set_last_error(&msg);
            code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("lcm panicked (a bug; please report it): {what}"));
            LCM_ERR_PANIC
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn string(p: *const c_char, arg: &str) -> Result<Option<String>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract (NUL-terminated).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(|s| Some(s.to_string())).map_err(|e| invalid(arg, format!("not UTF-8 ({e})")))
}

/// # Safety
/// `p` is NULL or points to `n` readable `LcmLora`s whose paths are NULL or NUL-terminated.
pub(crate) unsafe fn lora_specs(p: *const LcmLora, n: usize, arg: &str) -> Result<Vec<LoraSpec>, Failure> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(invalid(arg, format!("NULL with {n} LoRAs")));
    }
    // SAFETY: the caller's contract (n readable entries).
    let items = unsafe { std::slice::from_raw_parts(p, n) };
    items
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = format!("{arg}[{i}].path");
            // SAFETY: the caller's contract.
            let path = unsafe { string(l.path, &field) }?.ok_or_else(|| invalid(&field, "NULL"))?;
            if !l.scale.is_finite() {
                return Err(invalid(&format!("{arg}[{i}].scale"), format!("{}: must be finite", l.scale)));
            }
            Ok(LoraSpec { path: PathBuf::from(path), scale: l.scale })
        })
        .collect()
}

/// Checks an out-parameter and sets it to NULL, so that a call that fails leaves it NULL.
///
/// # Safety
/// `out` is NULL or points to writable storage for a pointer.
pub(crate) unsafe fn clear_out<T>(out: *mut *mut T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid("out", "NULL"));
    }
    // SAFETY: checked non-NULL; writable by the caller's contract.
    unsafe { *out = std::ptr::null_mut() };
    Ok(())
}

/// # Safety
/// `p` points to `n` (≥ 1) readable `LcmControlNet`s as `lcm_generate_controlled` requires.
pub(crate) unsafe fn control_units(
    p: *const LcmControlNet,
    n: usize,
    width: usize,
    height: usize,
) -> Result<Vec<ControlUnit>, Failure> {
    if p.is_null() {
        return Err(invalid("controlnets", format!("NULL with {n} ControlNets")));
    }
    if n > MAX_CONTROLNETS {
        return Err(invalid("num_controlnets", format!("{n}: at most {MAX_CONTROLNETS}")));
    }
    // SAFETY: the caller's contract (n readable entries).
    let items = unsafe { std::slice::from_raw_parts(p, n) };
    let mut units = Vec::with_capacity(n);
    for (i, c) in items.iter().enumerate() {
        let at = |member: &str| format!("controlnets[{i}].{member}");
        // SAFETY: the caller's contract.
        let model = unsafe { string(c.model, &at("model")) }?.ok_or_else(|| invalid(&at("model"), "NULL"))?;
        // SAFETY: the caller's contract.
        let preprocess = match unsafe { string(c.preprocess, &at("preprocess")) }? {
            None => ControlPreprocess::None,
            Some(s) => s.parse().map_err(|e| named(&at("preprocess"), e))?,
        };
        if c.image_rgb.is_null() {
            return Err(invalid(&at("image_rgb"), "NULL"));
        }
        let (w, h) = (c.image_width as usize, c.image_height as usize);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(invalid(&at("image_width/image_height"), format!("{w}x{h}: each side must be 1..={MAX_SIDE}")));
        }
        // SAFETY: the caller's contract (w·h·3 readable bytes); sizes bounded above.
        let rgb = unsafe { std::slice::from_raw_parts(c.image_rgb, w * h * 3) };
        let rgb = preprocess.apply(rgb, w, h).map_err(|e| named(&at("image_rgb"), e))?;
        let image = ControlUnit::image_at(w, h, &rgb, width, height).map_err(|e| named(&at("image_rgb"), e))?;
        units.push(ControlUnit { model: PathBuf::from(model), image, scale: c.scale, start: c.start, end: c.end });
    }
    Ok(units)
}

/// An [`Error::Invalid`] as a refusal of the argument `arg`.
fn named(arg: &str, e: Error) -> Failure {
    match e {
        Error::Invalid { msg, .. } => invalid(arg, msg),
        e => e.into(),
    }
}

/// The pipeline's checks name the spec's fields ([`Field`]): here they name the C request's members,
/// and for a ControlNet's fields the `controlnets` entry of `controls` (the request's units, in order)
/// at fault. A ControlNet that cannot be read or does not fit the model is `LCM_ERR_FILE`.
pub(crate) fn request_error(e: Error, controls: &[ControlUnit]) -> Failure {
    const FIELDS: &[(Field, &str)] = &[
        (Field::Width, "request.width"),
        (Field::Height, "request.height"),
        (Field::Steps, "request.steps"),
        (Field::NumImages, "request.num_images"),
        (Field::GuidanceScale, "request.guidance_scale"),
        (Field::Strength, "request.strength"),
        (Field::InitImage, "request.init_rgb"),
        (Field::Mask, "request.mask"),
        (Field::Scheduler, "request.scheduler"),
        (Field::Eta, "request.eta"),
        (Field::TimestepSpacing, "request.timestep_spacing"),
        (Field::PredictionType, "options.prediction_type"),
        (Field::Prompt, "request.prompt"),
        (Field::NegativePrompt, "request.negative_prompt"),
    ];
    let member = |f: Field| match f {
        Field::ControlNet => Some("model"),
        Field::ControlImage => Some("image_rgb"),
        Field::ControlScale => Some("scale"),
        Field::ControlStart => Some("start"),
        Field::ControlEnd => Some("end"),
        _ => None,
    };
    match (Field::of(&e), e) {
        (Some(f), Error::Invalid { msg, .. }) if member(f).is_some() => {
            // "ControlNet K (PATH): …" from the request's checks, or a message naming the file.
            let k = msg
                .strip_prefix("ControlNet ")
                .and_then(|r| r.split_once(" ("))
                .and_then(|(k, _)| k.parse::<usize>().ok())
                .and_then(|k| k.checked_sub(1))
                .filter(|&k| k < controls.len())
                .or_else(|| controls.iter().position(|c| msg.contains(&*c.model.to_string_lossy())));
            let what = match k {
                Some(k) => format!("controlnets[{k}].{}", member(f).unwrap_or_default()),
                None => "controlnets".to_string(),
            };
            let code = if f == Field::ControlNet { LCM_ERR_FILE } else { LCM_ERR_INVALID_ARGUMENT };
            Failure(code, format!("{what}: {msg}"))
        }
        (Some(f), Error::Invalid { what, msg }) => {
            let what = FIELDS.iter().find(|(g, _)| *g == f).map_or(what, |(_, member)| member.to_string());
            Failure(LCM_ERR_INVALID_ARGUMENT, format!("{what}: {msg}"))
        }
        (_, e) => e.into(),
    }
}
