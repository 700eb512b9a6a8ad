//! The part of Triton's C API the backend calls (TRITONBACKEND 1.x, TRITONSERVER 1.x; from the
//! documented headers tritonbackend.h and tritonserver.h of triton-inference-server/core), declared
//! here and looked up with `dlsym` in the server process when Triton loads the backend: nothing links
//! against libtritonserver.so, so the library's own tests and tools run without Triton.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

/// `TRITONSERVER_Error*` (opaque).
pub type Error = *mut c_void;
/// The opaque handles Triton passes (`TRITONBACKEND_Model*`, `TRITONBACKEND_Request*`, ...).
pub type Handle = *mut c_void;

/// TRITONSERVER_DataType values the contract uses.
pub const TYPE_UINT8: u32 = 2;
pub const TYPE_INT32: u32 = 8;
pub const TYPE_INT64: u32 = 9;
pub const TYPE_FP32: u32 = 11;
pub const TYPE_BYTES: u32 = 13;
/// TRITONSERVER_MemoryType: CPU.
pub const MEMORY_CPU: u32 = 0;
/// TRITONSERVER_InstanceGroupKind: AUTO, CPU, GPU, MODEL.
pub const KIND_CPU: u32 = 1;
pub const KIND_GPU: u32 = 2;
/// TRITONSERVER_Error_Code: INTERNAL, INVALID_ARG.
pub const ERROR_INTERNAL: u32 = 1;
pub const ERROR_INVALID_ARG: u32 = 3;
/// TRITONSERVER_LogLevel: INFO, WARN, ERROR.
pub const LOG_INFO: u32 = 0;
pub const LOG_ERROR: u32 = 2;
/// TRITONSERVER_RequestReleaseFlag ALL; TRITONSERVER_ResponseCompleteFlag FINAL.
pub const REQUEST_RELEASE_ALL: u32 = 1;
pub const RESPONSE_COMPLETE_FINAL: u32 = 1;
/// The TRITONBACKEND API major version this backend is written against, and the least minor.
pub const API_MAJOR: u32 = 1;
pub const API_MINOR: u32 = 10;

macro_rules! api {
    ($($field:ident = $symbol:literal: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The functions, resolved once.
        pub struct Api {
            $(pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            fn resolve() -> Result<Api, String> {
                Ok(Api {
                    $($field: {
                        // SAFETY: RTLD_DEFAULT searches the process's global symbols; the symbol,
                        // when found, is Triton's function of the declared C signature.
                        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, concat!($symbol, "\0").as_ptr().cast()) };
                        if f.is_null() {
                            return Err(format!("{} not found in the process (not run by tritonserver?)", $symbol));
                        }
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(f) }
                    },)*
                })
            }
        }
    };
}

api! {
    error_new = "TRITONSERVER_ErrorNew": fn(u32, *const c_char) -> Error;
    error_delete = "TRITONSERVER_ErrorDelete": fn(Error);
    error_message = "TRITONSERVER_ErrorMessage": fn(Error) -> *const c_char;
    log_message = "TRITONSERVER_LogMessage": fn(u32, *const c_char, i32, *const c_char) -> Error;
    message_to_json = "TRITONSERVER_MessageSerializeToJson": fn(Handle, *mut *const c_char, *mut usize) -> Error;
    message_delete = "TRITONSERVER_MessageDelete": fn(Handle) -> Error;
    api_version = "TRITONBACKEND_ApiVersion": fn(*mut u32, *mut u32) -> Error;
    model_repository = "TRITONBACKEND_ModelRepository": fn(Handle, *mut u32, *mut *const c_char) -> Error;
    model_config = "TRITONBACKEND_ModelConfig": fn(Handle, u32, *mut Handle) -> Error;
    model_state = "TRITONBACKEND_ModelState": fn(Handle, *mut *mut c_void) -> Error;
    model_set_state = "TRITONBACKEND_ModelSetState": fn(Handle, *mut c_void) -> Error;
    instance_model = "TRITONBACKEND_ModelInstanceModel": fn(Handle, *mut Handle) -> Error;
    instance_name = "TRITONBACKEND_ModelInstanceName": fn(Handle, *mut *const c_char) -> Error;
    instance_kind = "TRITONBACKEND_ModelInstanceKind": fn(Handle, *mut u32) -> Error;
    instance_device_id = "TRITONBACKEND_ModelInstanceDeviceId": fn(Handle, *mut i32) -> Error;
    instance_state = "TRITONBACKEND_ModelInstanceState": fn(Handle, *mut *mut c_void) -> Error;
    instance_set_state = "TRITONBACKEND_ModelInstanceSetState": fn(Handle, *mut c_void) -> Error;
    report_statistics = "TRITONBACKEND_ModelInstanceReportStatistics": fn(Handle, Handle, bool, u64, u64, u64, u64) -> Error;
    report_batch_statistics = "TRITONBACKEND_ModelInstanceReportBatchStatistics": fn(Handle, u64, u64, u64, u64, u64) -> Error;
    request_input_count = "TRITONBACKEND_RequestInputCount": fn(Handle, *mut u32) -> Error;
    request_input_by_index = "TRITONBACKEND_RequestInputByIndex": fn(Handle, u32, *mut Handle) -> Error;
    request_release = "TRITONBACKEND_RequestRelease": fn(Handle, u32) -> Error;
    input_properties = "TRITONBACKEND_InputProperties": fn(Handle, *mut *const c_char, *mut u32, *mut *const i64, *mut u32, *mut u64, *mut u32) -> Error;
    input_buffer = "TRITONBACKEND_InputBuffer": fn(Handle, u32, *mut *const c_void, *mut u64, *mut u32, *mut i64) -> Error;
    response_new = "TRITONBACKEND_ResponseNew": fn(*mut Handle, Handle) -> Error;
    response_output = "TRITONBACKEND_ResponseOutput": fn(Handle, *mut Handle, *const c_char, u32, *const i64, u32) -> Error;
    output_buffer = "TRITONBACKEND_OutputBuffer": fn(Handle, *mut *mut c_void, u64, *mut u32, *mut i64) -> Error;
    response_send = "TRITONBACKEND_ResponseSend": fn(Handle, u32, Error) -> Error;
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The resolved functions, or which one is missing.
pub fn api() -> Result<&'static Api, String> {
    API.get_or_init(Api::resolve).as_ref().map_err(Clone::clone)
}

/// A C string for Triton (interior NULs, which no message here holds, become spaces).
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).expect("NULs replaced")
}

/// A C string Triton owns, as text (`""` for null).
///
/// # Safety
/// `p` is null or a NUL-terminated string that outlives the result's use.
pub unsafe fn text<'a>(p: *const c_char) -> std::borrow::Cow<'a, str> {
    if p.is_null() {
        return "".into();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy()
}

impl Api {
    /// A new Triton error (its ownership passes to the caller).
    pub fn error(&self, code: u32, msg: &str) -> Error {
        let msg = cstring(msg);
        // SAFETY: a valid code and a NUL-terminated message; Triton copies it.
        unsafe { (self.error_new)(code, msg.as_ptr()) }
    }

    /// A call's error as a Rust one (`what` names the call), freeing Triton's.
    pub fn check(&self, err: Error, what: &str) -> Result<(), String> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a live error Triton returned; the message is read before the error is deleted.
        let msg = unsafe { text((self.error_message)(err)).into_owned() };
        unsafe { (self.error_delete)(err) };
        Err(format!("{what}: {msg}"))
    }

    /// A line in Triton's log.
    pub fn log(&self, level: u32, msg: &str) {
        let (file, msg) = (cstring(file!()), cstring(msg));
        // SAFETY: NUL-terminated strings Triton copies; a logging failure is dropped (nowhere to say it).
        let err = unsafe { (self.log_message)(level, file.as_ptr(), line!() as i32, msg.as_ptr()) };
        let _ = self.check(err, "log");
    }
}
