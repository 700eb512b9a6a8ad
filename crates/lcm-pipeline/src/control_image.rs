//! Placeholder until the control-preprocess branch merges.
use lcm_core::{Error, Result};

pub fn resize_lanczos_rgb8(_rgb: &[u8], _w: usize, _h: usize, _nw: usize, _nh: usize) -> Result<Vec<u8>> {
    Err(Error::invalid("control_image", "resizing is not built yet"))
}
