//! The TRITONBACKEND entry points Triton calls. Each one runs inside `catch_unwind`: a panic becomes a
//! Triton error, never an unwind into C++.
//!
//! A model's state is its [`Settings`] (read once from `config.pbtxt`); an instance's state is its own
//! loaded [`Engine`] on the instance's device (KIND_GPU: that GPU; KIND_CPU: the CPU backend). Triton
//! calls `execute` for one instance from one thread at a time; instances run in parallel.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::Mutex;
use std::time::Instant;

use lcm::cuda::{CudaBackend, DeviceKind};
use lcm::{Device, Engine, Opened};
use lcm_pipeline::infer::{self, Defaults};
use lcm_pipeline::load::default_image_size;

use crate::api::{self, api, text, Api, Error, Handle};
use crate::config::Settings;
use crate::tensors::{read_inputs, send_answer};

struct ModelState {
    settings: Settings,
    max_batch_size: usize,
}

struct InstanceState {
    engine: Mutex<Engine>,
    defaults: Defaults,
    max_images: usize,
}

/// Runs `f` as an entry point: its error or panic becomes a Triton error.
fn entry(what: &str, f: impl FnOnce(&Api) -> Result<(), String>) -> Error {
    let api = match api() {
        Ok(api) => api,
        Err(e) => {
            // Without TRITONSERVER_ErrorNew there is no error to return; say why where a user looks.
            eprintln!("libtriton_lcm: {e}");
            return null_mut();
        }
    };
    let result =
        catch_unwind(AssertUnwindSafe(|| f(api))).unwrap_or_else(|p| Err(format!("panic: {}", panic_text(&p))));
    match result {
        Ok(()) => null_mut(),
        Err(msg) => api.error(api::ERROR_INTERNAL, &format!("lcm backend, {what}: {msg}")),
    }
}

pub(crate) fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// # Safety
/// Called by Triton with a live backend handle.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_Initialize(_backend: Handle) -> Error {
    entry("initialize", |api| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: out-pointers to locals.
        api.check(unsafe { (api.api_version)(&mut major, &mut minor) }, "TRITONBACKEND_ApiVersion")?;
        if major != api::API_MAJOR || minor < api::API_MINOR {
            return Err(format!(
                "Triton's backend API is {major}.{minor}; this backend needs {}.{} or a later {}.x",
                api::API_MAJOR,
                api::API_MINOR,
                api::API_MAJOR
            ));
        }
        api.log(api::LOG_INFO, &format!("lcm backend: TRITONBACKEND API {major}.{minor}"));
        Ok(())
    })
}

/// # Safety
/// Called by Triton with a live model handle.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInitialize(model: Handle) -> Error {
    entry("model initialize", |api| {
        let (mut kind, mut location) = (0u32, std::ptr::null());
        // SAFETY: a live model; out-pointers to locals; the strings are Triton's, read at once.
        api.check(unsafe { (api.model_repository)(model, &mut kind, &mut location) }, "TRITONBACKEND_ModelRepository")?;
        let model_dir = PathBuf::from(unsafe { text(location) }.into_owned());
        let mut message: Handle = null_mut();
        api.check(unsafe { (api.model_config)(model, 1, &mut message) }, "TRITONBACKEND_ModelConfig")?;
        let (mut base, mut size) = (std::ptr::null(), 0usize);
        let json = api.check(unsafe { (api.message_to_json)(message, &mut base, &mut size) }, "model config JSON").map(
            // SAFETY: Triton's buffer of `size` bytes, alive until the message is deleted below.
            |()| String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(base.cast::<u8>(), size) }).into_owned(),
        );
        api.check(unsafe { (api.message_delete)(message) }, "TRITONSERVER_MessageDelete")?;
        let json = json?;
        let settings = Settings::from_config_json(&json, &model_dir).map_err(|e| e.to_string())?;
        let max_batch_size = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("max_batch_size").and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok())))
            .unwrap_or(0) as usize;
        let state = Box::into_raw(Box::new(ModelState { settings, max_batch_size }));
        // SAFETY: the box is the model's until ModelFinalize takes it back.
        if let Err(e) = api.check(unsafe { (api.model_set_state)(model, state.cast()) }, "set model state") {
            drop(unsafe { Box::from_raw(state) });
            return Err(e);
        }
        Ok(())
    })
}

/// # Safety
/// Called by Triton with a live model handle, after its instances are finalized.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelFinalize(model: Handle) -> Error {
    entry("model finalize", |api| {
        let mut state: *mut c_void = null_mut();
        // SAFETY: a live model; its state is the box ModelInitialize set (or null).
        api.check(unsafe { (api.model_state)(model, &mut state) }, "model state")?;
        if !state.is_null() {
            drop(unsafe { Box::from_raw(state.cast::<ModelState>()) });
        }
        Ok(())
    })
}

/// # Safety
/// Called by Triton with a live instance handle.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceInitialize(instance: Handle) -> Error {
    entry("instance initialize", |api| {
        let (mut model, mut state, mut name) = (null_mut(), null_mut(), std::ptr::null());
        let (mut kind, mut device_id) = (0u32, 0i32);
        // SAFETY: a live instance and its model; out-pointers to locals.
        unsafe {
            api.check((api.instance_model)(instance, &mut model), "instance model")?;
            api.check((api.model_state)(model, &mut state), "model state")?;
            api.check((api.instance_name)(instance, &mut name), "instance name")?;
            api.check((api.instance_kind)(instance, &mut kind), "instance kind")?;
            api.check((api.instance_device_id)(instance, &mut device_id), "instance device")?;
        }
        // SAFETY: the model's state outlives its instances.
        let model_state = unsafe { &*state.cast::<ModelState>() };
        let name = unsafe { text(name) }.into_owned();
        let spec = model_state.settings.spec.clone();
        let t = Instant::now();
        let opened = match kind {
            api::KIND_CPU => Opened::open(Device::Cpu).map(|(o, _)| o),
            api::KIND_GPU => CudaBackend::open(DeviceKind::Gpu(device_id)).map(|b| Opened::Cuda(Box::new(b))),
            _ => Opened::open(Device::Auto).map(|(o, note)| {
                if let Some(note) = note {
                    api.log(api::LOG_INFO, &format!("{name}: {note}"));
                }
                o
            }),
        }
        .map_err(|e| e.to_string())?;
        let on = opened.name();
        let side = default_image_size(&spec).map_err(|e| e.to_string())?;
        let engine = opened.load(spec).map_err(|e| e.to_string())?;
        api.log(api::LOG_INFO, &format!("{name}: loaded on {on} in {:.0} ms", t.elapsed().as_secs_f64() * 1e3));
        let defaults = Defaults { width: side, height: side, ..Defaults::default() };
        let max_images = model_state.max_batch_size.max(1);
        let state = Box::into_raw(Box::new(InstanceState { engine: Mutex::new(engine), defaults, max_images }));
        // SAFETY: the box is the instance's until ModelInstanceFinalize takes it back.
        if let Err(e) = api.check(unsafe { (api.instance_set_state)(instance, state.cast()) }, "set instance state") {
            drop(unsafe { Box::from_raw(state) });
            return Err(e);
        }
        Ok(())
    })
}

/// # Safety
/// Called by Triton with a live instance handle.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceFinalize(instance: Handle) -> Error {
    entry("instance finalize", |api| {
        let mut state: *mut c_void = null_mut();
        // SAFETY: a live instance; its state is the box ModelInstanceInitialize set (or null).
        api.check(unsafe { (api.instance_state)(instance, &mut state) }, "instance state")?;
        if !state.is_null() {
            drop(unsafe { Box::from_raw(state.cast::<InstanceState>()) });
        }
        Ok(())
    })
}

/// Every request gets a response (its images or its own error) and is released here, so this
/// returns success whenever the instance's state could be read.
///
/// # Safety
/// Called by Triton with a live instance and `count` live requests.
#[no_mangle]
pub unsafe extern "C" fn TRITONBACKEND_ModelInstanceExecute(
    instance: Handle,
    requests: *mut Handle,
    count: u32,
) -> Error {
    entry("execute", |api| {
        let exec_start = now_ns();
        let mut state: *mut c_void = null_mut();
        // SAFETY: a live instance; its state is the box ModelInstanceInitialize set.
        api.check(unsafe { (api.instance_state)(instance, &mut state) }, "instance state")?;
        let state = unsafe { &*state.cast::<InstanceState>() };
        // SAFETY: Triton's array of `count` requests, copied out before it returns.
        let requests: Vec<Handle> = unsafe { std::slice::from_raw_parts(requests, count as usize) }.to_vec();
        let parsed: Vec<_> = requests
            .iter()
            .map(|&r| {
                // SAFETY: each request is live until released below.
                let inputs = unsafe { read_inputs(api, r) }?;
                infer::requests(&inputs, &state.defaults, &mut lcm_pipeline::rng::random_seed)
            })
            .collect();
        let rows: usize = parsed.iter().map(|p| p.as_ref().map_or(0, Vec::len)).sum();
        let compute_start = now_ns();
        let answers = catch_unwind(AssertUnwindSafe(|| {
            let mut engine = state.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            crate::run::run(&mut engine, parsed, state.max_images)
        }))
        .unwrap_or_else(|p| {
            let msg = format!("panic while generating: {}", crate::backend::panic_text(&p));
            requests.iter().map(|_| Err(lcm_core::Error::Backend(msg.clone()))).collect()
        });
        let compute_end = now_ns();
        for (&request, answer) in requests.iter().zip(answers) {
            let ok = answer.is_ok();
            // SAFETY: a live request, answered and released exactly once.
            unsafe {
                if let Err(e) = send_answer(api, request, answer) {
                    api.log(api::LOG_ERROR, &format!("lcm backend: could not send a response: {e}"));
                }
                let stats =
                    (api.report_statistics)(instance, request, ok, exec_start, compute_start, compute_end, now_ns());
                let _ = api.check(stats, "statistics");
                let _ = api.check((api.request_release)(request, api::REQUEST_RELEASE_ALL), "release");
            }
        }
        if rows > 0 {
            // SAFETY: a live instance.
            let stats = unsafe {
                (api.report_batch_statistics)(instance, rows as u64, exec_start, compute_start, compute_end, now_ns())
            };
            let _ = api.check(stats, "batch statistics");
        }
        Ok(())
    })
}

/// Triton's timestamps: std::chrono::steady_clock, CLOCK_MONOTONIC on Linux.
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: an out-pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
