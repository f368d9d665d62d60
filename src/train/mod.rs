//! Training and fine-tuning (with distillation).

pub mod bench;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod run;
