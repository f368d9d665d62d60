use crate::args::{at_least_one, choice, size};
use amg::engine::Precision;
use amg::model::quant::{ActivationScales, Quantization, WEIGHT_SCHEME};
use amg::model::{Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use amg::report::bench::{bench_gemm, bench_gemm_int8, bench_la_step, bench_model, bench_toy_step};
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory to measure (or give --arch for an unpruned architecture with random weights).
    #[arg(long, conflicts_with = "arch", required_unless_present_any = ["arch", "toy", "gemm"])]
    model: Option<PathBuf>,
    /// Or an unpruned architecture with random weights: tiny, small, base.
    #[arg(long)]
    arch: Option<String>,
    /// Input size HxW for --arch (default 224x224).
    #[arg(long, value_parser = size, requires = "arch")]
    img_size: Option<(usize, usize)>,
    /// Images per forward pass (or training step).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    batch_size: usize,
    /// Timed iterations (after 2 warm-up ones).
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Measure training steps instead of inference (LA head with --classes identities).
    #[arg(long)]
    train: bool,
    /// With --train: a 6-block stack (B=32, N=33, D=192) with a mean-square loss, the step
    /// tools/bench/peer_train_toy.py times in PyTorch.
    #[arg(long, requires = "train")]
    toy: bool,
    /// Measure the machine's ceiling instead: the best GFLOP/s of large float32 products
    /// (--gemm-size cubed, --iters of them) through the same kernels the models use.
    #[arg(long, conflicts_with_all = ["model", "arch", "train", "data"])]
    gemm: bool,
    /// Matrix size for --gemm.
    #[arg(long, default_value_t = 2048, value_parser = at_least_one, requires = "gemm")]
    gemm_size: usize,
    /// Identities of the LA head for --train.
    #[arg(long, default_value_t = 751, value_parser = at_least_one)]
    classes: usize,
    /// Also measure the image loader on this dataset's training split (with augmentation) and
    /// gallery (without), at the model's input size.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number format: f32; bf16 (bfloat16 weights and inputs of the blocks' products, float32
    /// sums); int8 (the blocks' products in INT8 with dynamic scales: a float32 model is quantized
    /// in memory for the measurement; with --gemm, the INT8 products' ceiling). An INT8 model
    /// directory runs in INT8 whatever this says.
    #[arg(long, value_parser = choice::<BenchPrecision>(), default_value = "f32")]
    precision: BenchPrecision,
}

amg::choice! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum BenchPrecision {
        F32 = "f32" => "float32",
        Bf16 = "bf16" => "bfloat16 products, float32 sums",
        Int8 = "int8" => "INT8 products (dynamic activation scales)",
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.precision != BenchPrecision::F32 && a.train {
        return Err(anyhow!("--precision {} measures inference: it does not go with --train", amg::choice::Choice::name(a.precision)));
    }
    if a.gemm {
        match a.precision {
            BenchPrecision::F32 => {
                let r = bench_gemm(a.gemm_size, a.iters, !a.json)?;
                println!("{}", if a.json { serde_json::to_string(&r)? } else { r.text() });
            }
            BenchPrecision::Int8 => {
                let r = bench_gemm_int8(a.gemm_size, a.iters, !a.json)?;
                println!("{}", if a.json { serde_json::to_string(&r)? } else { r.text() });
            }
            BenchPrecision::Bf16 => return Err(anyhow!("--gemm measures float32 or int8 products (--precision f32 or int8)")),
        }
        return Ok(());
    }
    if a.train {
        let r = if a.toy {
            bench_toy_step(a.iters, !a.json)?
        } else {
            let arch = Arch::preset(a.arch.as_deref().ok_or_else(|| anyhow!("--train needs --arch tiny|small|base"))?)?;
            bench_la_step(arch, a.img_size.unwrap_or((224, 224)), a.batch_size, a.classes, a.iters, !a.json)?
        };
        println!("{}", if a.json { serde_json::to_string(&r)? } else { r.text() });
        return Ok(());
    }
    let (files, label) = match (&a.model, &a.arch) {
        (Some(dir), _) => (ModelFiles::load(dir)?, dir.display().to_string()),
        (None, Some(arch)) => {
            let (h, w) = a.img_size.unwrap_or((224, 224));
            let config = ModelConfig::new(Arch::preset(arch)?, h, w, HeadConfig::none(), Source { format: "random".into(), ..Default::default() })?;
            let params = amg::model::weights::init_random(&config, 0);
            (ModelFiles::new(config, params)?, format!("ViT-{arch} (random weights)"))
        }
        (None, None) => return Err(anyhow!("give --model DIR or --arch tiny|small|base")),
    };
    let data = a.data.as_ref().map(|root| amg::data::Dataset::open(root, None)).transpose()?;
    let precision = match a.precision {
        BenchPrecision::Bf16 => Precision::Bf16,
        _ => Precision::F32,
    };
    crate::args::PrecisionArg { precision }.warn_if_emulated();
    // INT8 of a float32 model: its products quantized in memory, as `amg quantize` would with
    // dynamic scales (an INT8 directory already is).
    let files = if a.precision == BenchPrecision::Int8 && files.config().quantization.is_none() {
        let fingerprint = files.fingerprint();
        let (config, params) = files.into_parts();
        let q = Quantization {
            weights: WEIGHT_SCHEME.into(),
            activations: ActivationScales::Dynamic,
            calibration_images: None,
            float_model: label.clone(),
            float_fingerprint: fingerprint,
        };
        ModelFiles::int8(config, params, q, None)?
    } else {
        files
    };
    let label = if a.precision == BenchPrecision::Int8 { format!("{label} INT8") } else { label };
    let r = bench_model(files, &label, a.batch_size, a.iters, data.as_ref(), precision, !a.json)?;
    println!("{}", if a.json { serde_json::to_string(&r)? } else { r.text() });
    Ok(())
}
