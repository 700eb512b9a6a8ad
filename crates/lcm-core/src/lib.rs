//! lcm-core: what every backend and model shares — element types, errors, weight files, the op graph,
//! its fusion pass, the arena planner, the executor and the [`Backend`] trait.

#![warn(missing_docs)]

pub mod backend;
pub mod builder;
pub mod dtype;
pub mod error;
pub mod executor;
pub mod fuse;
pub mod graph;
pub mod lcm;
pub mod lower;
pub mod planner;
pub mod program;
pub mod tensor;
pub mod weights;

pub use backend::{Backend, HostData, LoraDelta, ModelWeights, WeightSource};
pub use builder::GraphBuilder;
pub use dtype::DType;
pub use error::{Error, Result};
pub use executor::Executor;
pub use graph::{Activation, Elem, Graph, KeyLimit, MapKind, Op, Storage, TensorId, WeightKind, WeightSpec};
pub use lower::{Attention, Gemm, Problem};
pub use program::Program;
pub use tensor::{rel_l2, Tensor};
pub use weights::{SafeTensorsFile, TensorView, WeightFiles};
