//! Training and fine-tuning (with distillation).

pub mod loss;
