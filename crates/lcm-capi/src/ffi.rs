//! How a call crosses the C boundary: an [`Error`] becomes a status code and the thread's last-error
//! message, a panic is caught and reported as `LCM_ERR_PANIC`, and C strings and arrays are read with
//! their argument's name in every refusal.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use lcm_core::Error;
use lcm_pipeline::spec::{Field, LoraSpec};

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

/// The pipeline's checks name the spec's fields ([`Field`]): here they name the C request's members.
pub(crate) fn request_error(e: Error) -> Failure {
    const FIELDS: &[(Field, &str)] = &[
        (Field::Width, "request.width"),
        (Field::Height, "request.height"),
        (Field::Steps, "request.steps"),
        (Field::NumImages, "request.num_images"),
        (Field::GuidanceScale, "request.guidance_scale"),
        (Field::Strength, "request.strength"),
        (Field::InitImage, "request.init_rgb"),
    ];
    match (Field::of(&e), e) {
        (Some(f), Error::Invalid { what, msg }) => {
            let what = FIELDS.iter().find(|(g, _)| *g == f).map_or(what, |(_, member)| member.to_string());
            Failure(LCM_ERR_INVALID_ARGUMENT, format!("{what}: {msg}"))
        }
        (_, e) => e.into(),
    }
}
