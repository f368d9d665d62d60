//! `--precision bf16` on models of every shape the engine meets: random architectures (head sizes
//! that are not multiples of the bfloat16 tiles' 32), pruned heads (the qkv weight's q | k | v parts
//! at odd boundaries) and pruned key tokens (queries and keys/values from different rows). The
//! bfloat16 features must stay close to float32's — only the operands' rounding differs — and
//! must differ from them (the bfloat16 products ran).

use crate::common;

use amg::engine::{Engine, Input, Precision, Want, Workspace};
use amg::rng::Rng;
use common::*;

#[test]
fn bfloat16_features_stay_near_float32_on_random_pruned_models() {
    let mut rng = Rng::new(11);
    for case in 0..6 {
        let files = random_pruned_model(&mut rng);
        let f32_engine = Engine::new(files.clone()).unwrap();
        let bf16_engine = Engine::with_precision(files, Precision::Bf16).unwrap();
        let batch = 3;
        let images: Vec<f32> = (0..batch * f32_engine.image_len()).map(|_| rng.normal() as f32).collect();
        let cameras = f32_engine.config().arch.sie.as_ref().map(|_| vec![0; batch]);
        let input = Input { images: &images, cameras: cameras.as_deref(), batch };
        let a = f32_engine.run(input, &mut Workspace::default(), Want::default(), None).unwrap().features;
        let b = bf16_engine.run(input, &mut Workspace::default(), Want::default(), None).unwrap().features;
        let d = max_abs_diff(&a, &b);
        eprintln!("case {case}: bf16 features differ from float32's by {d:e}");
        // Features have norm 1 (per part group); each bfloat16 operand carries 2^-9 relative error.
        assert!(d > 0.0 && d <= 1e-2, "case {case}: bf16 features differ from float32's by {d:e}");
    }
}
