//! Running the engine from Python: without the GIL (other Python threads, another pipeline, an asyncio
//! loop go on meanwhile), with Ctrl-C and a raising callback cancelling between steps.
//!
//! The engine runs on a scoped worker thread while the calling thread, GIL released, waits for it and
//! every [`POLL`] takes the GIL for a moment to run Python's signal handlers (`check_signals`: only the
//! main thread's call runs them). A KeyboardInterrupt, or an exception from the progress callback, sets
//! the engine's cancel flag (`Pipeline::generate_with` stops at the next stage or step) and is raised
//! once the engine has returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use lcm_pipeline::pipeline::StepEvent;
use pyo3::prelude::*;

use crate::errors::{to_py, LcmError};

/// How often the waiting thread looks for Ctrl-C: short against a step, long against taking the GIL.
const POLL: Duration = Duration::from_millis(50);

/// Runs `work` (given the progress sink and the cancel flag) on a worker thread with the GIL released.
/// `callback(step, timestep, elapsed_s)` is called after each step, with the GIL, on the worker thread.
pub fn run_cancellable<T: Send>(
    py: Python<'_>,
    callback: Option<&Py<PyAny>>,
    work: impl FnOnce(&mut dyn FnMut(StepEvent), &AtomicBool) -> lcm_core::Result<T> + Send,
) -> PyResult<T> {
    let cancel = AtomicBool::new(false);
    // The first Python exception raised while the engine ran (KeyboardInterrupt, the callback's).
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let raise = |e: PyErr| {
        raised.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        cancel.store(true, Ordering::Relaxed);
    };
    let outcome = py.detach(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut progress = |e: StepEvent| {
                    if let Some(cb) = callback {
                        Python::attach(|py| {
                            let args = (e.step - 1, e.timestep, e.elapsed.as_secs_f64());
                            if let Err(err) = cb.call1(py, args) {
                                raise(err);
                            }
                        });
                    }
                };
                work(&mut progress, &cancel)
            });
            while !worker.is_finished() {
                std::thread::sleep(POLL);
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    raise(e);
                }
            }
            worker.join()
        })
    });
    if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    match outcome {
        Ok(result) => result.map_err(to_py),
        Err(_) => Err(LcmError::new_err("the engine panicked (a bug: please report it with the inputs)")),
    }
}
