//! A ControlNet in one `.safetensors` file with the original names (`control_model.*`, as the A1111
//! ControlNet extension's files ship).

use std::path::Path;

use lcm_core::{Backend, Error, Result};

use crate::arch::controlnet::ControlNet;

impl<B: Backend> ControlNet<B> {
    /// Loads a single-file ControlNet.
    pub fn load_single_file(_backend: &B, path: &Path) -> Result<Self> {
        Err(Error::file(path, "single-file ControlNets are not read yet"))
    }
}
