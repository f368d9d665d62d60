//! Training and fine-tuning (with distillation).

pub mod loss;
pub mod optim;
pub mod run;
