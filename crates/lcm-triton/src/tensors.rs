//! A Triton request's input tensors as [`infer::Input`]s, and its answer as a response: the image
//! tensor, or a Triton error whose message names the input at fault.

use std::ptr::null_mut;

use lcm_core::Error as LcmError;
use lcm_pipeline::infer::{self, Data, DataType, Input, INPUTS};

use crate::api::{self, cstring, text, Api, Handle};
use crate::run::{Answer, Images};

/// Triton's type code for each of the contract's types.
fn triton_type(d: DataType) -> u32 {
    match d {
        DataType::Bytes => api::TYPE_BYTES,
        DataType::Uint8 => api::TYPE_UINT8,
        DataType::Int32 => api::TYPE_INT32,
        DataType::Int64 => api::TYPE_INT64,
        DataType::Fp32 => api::TYPE_FP32,
    }
}

/// Every input of `request`, its buffers joined (Triton hands CPU memory to a CPU-reading backend).
///
/// # Safety
/// `request` is live.
pub unsafe fn read_inputs(api: &Api, request: Handle) -> lcm_core::Result<Vec<Input>> {
    let internal = |e: String| LcmError::Backend(e);
    let mut count = 0u32;
    // SAFETY: a live request; out-pointers to locals.
    api.check(unsafe { (api.request_input_count)(request, &mut count) }, "input count").map_err(internal)?;
    let mut inputs = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut input: Handle = null_mut();
        let (mut name, mut dtype, mut shape, mut dims) = (std::ptr::null(), 0u32, std::ptr::null(), 0u32);
        let (mut byte_size, mut buffers) = (0u64, 0u32);
        // SAFETY: as above; the name and shape are the input's, read before the request is released.
        unsafe {
            api.check((api.request_input_by_index)(request, index, &mut input), "input").map_err(internal)?;
            let props = (api.input_properties)(
                input,
                &mut name,
                &mut dtype,
                &mut shape,
                &mut dims,
                &mut byte_size,
                &mut buffers,
            );
            api.check(props, "input properties").map_err(internal)?;
        }
        let name = unsafe { text(name) }.into_owned();
        let shape =
            if dims == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(shape, dims as usize) }.to_vec() };
        let Some(datatype) = DataType::ALL.into_iter().find(|&d| triton_type(d) == dtype) else {
            let want = INPUTS.iter().find(|s| s.name == name).map_or("one of the model's inputs", |s| s.dtype.name());
            return Err(LcmError::invalid(format!("input '{name}'"), format!("Triton type {dtype}: expected {want}")));
        };
        let mut raw = Vec::with_capacity(byte_size as usize);
        for b in 0..buffers {
            let (mut ptr, mut len) = (std::ptr::null(), 0u64);
            let (mut memory, mut memory_id) = (api::MEMORY_CPU, 0i64);
            // SAFETY: buffer `b` of a live input; `len` bytes at `ptr`, copied at once.
            unsafe {
                let err = (api.input_buffer)(input, b, &mut ptr, &mut len, &mut memory, &mut memory_id);
                api.check(err, "input buffer").map_err(internal)?;
                if memory > 1 {
                    return Err(LcmError::invalid(
                        format!("input '{name}'"),
                        "in GPU memory: the backend reads CPU memory",
                    ));
                }
                if len > 0 {
                    raw.extend_from_slice(std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize));
                }
            }
        }
        inputs.push(Input { data: Data::from_raw(&name, datatype, &raw)?, name, shape });
    }
    Ok(inputs)
}

/// Sends `request`'s one response: the `image` output `[rows, H, W, 3]`, or the error (INVALID_ARG
/// for what the request got wrong, INTERNAL for a failed generation).
///
/// # Safety
/// `request` is live and not yet answered.
pub unsafe fn send_answer(api: &Api, request: Handle, answer: Answer) -> Result<(), String> {
    let mut response: Handle = null_mut();
    // SAFETY: a live request.
    api.check(unsafe { (api.response_new)(&mut response, request) }, "TRITONBACKEND_ResponseNew")?;
    let error = match answer.map_err(|e| e.to_string()).and_then(|images| unsafe { fill(api, response, &images) }) {
        Ok(()) => null_mut(),
        Err(msg) => {
            let code = if msg.starts_with("input '") { api::ERROR_INVALID_ARG } else { api::ERROR_INTERNAL };
            api.error(code, &msg)
        }
    };
    // SAFETY: the response passes to Triton; the error stays ours and is deleted after.
    let sent = unsafe { (api.response_send)(response, api::RESPONSE_COMPLETE_FINAL, error) };
    if !error.is_null() {
        unsafe { (api.error_delete)(error) };
    }
    api.check(sent, "TRITONBACKEND_ResponseSend")
}

/// The output tensor of `images` on `response`.
///
/// # Safety
/// `response` is live.
unsafe fn fill(api: &Api, response: Handle, images: &Images) -> Result<(), String> {
    let (rows, size) = (images.rgb.len(), images.width * images.height * 3);
    let shape = [rows as i64, images.height as i64, images.width as i64, 3];
    let name = cstring(infer::OUTPUT.name);
    let mut output: Handle = null_mut();
    let out_type = triton_type(infer::OUTPUT.dtype);
    // SAFETY: a live response; the name and shape are copied by Triton.
    let err = unsafe { (api.response_output)(response, &mut output, name.as_ptr(), out_type, shape.as_ptr(), 4) };
    api.check(err, "TRITONBACKEND_ResponseOutput")?;
    let total = rows * size;
    let (mut buffer, mut memory, mut memory_id) = (null_mut(), api::MEMORY_CPU, 0i64);
    let err = unsafe { (api.output_buffer)(output, &mut buffer, total as u64, &mut memory, &mut memory_id) };
    api.check(err, "TRITONBACKEND_OutputBuffer")?;
    if memory > 1 {
        return Err("Triton gave the output GPU memory; the backend writes CPU memory".into());
    }
    // SAFETY: Triton's buffer of `total` bytes in CPU memory.
    let out = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), total) };
    for (dst, img) in out.chunks_exact_mut(size.max(1)).zip(&images.rgb) {
        dst.copy_from_slice(img);
    }
    Ok(())
}
