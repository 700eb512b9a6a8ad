pub mod rng;
pub mod scheduler;
pub mod tokenizer;
