//! The honest report: cost (params, MSA params, honest MACs beside the paper's FLOP convention),
//! speed measured on this machine, and accuracy on the dataset's query/gallery — for the original
//! and the pruned model.

use super::bench::bench_inference;
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::{eval_model, EvalOptions};
use crate::model::cost::model_cost;
use crate::model::ModelFiles;
use crate::prune::{write_json, PruneOptions, PruneRequest, PruneSummary};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub heads: usize,
    pub key_tokens: usize,
    pub params: u64,
    pub msa_params: u64,
    pub macs: u64,
    pub paper_flops: u64,
    pub img_per_s_b1: Option<f64>,
    pub img_per_s_b16: Option<f64>,
    pub rank1: Option<f64>,
    #[serde(rename = "mAP")]
    pub map: Option<f64>,
    #[serde(rename = "mINP")]
    pub minp: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub original: ModelReport,
    pub pruned: ModelReport,
    /// 1 − pruned/original.
    pub mac_saving: f64,
    pub paper_flop_saving: f64,
    pub param_saving: f64,
    /// original MACs / pruned MACs.
    pub mac_ratio: f64,
    pub speedup_b1: Option<f64>,
    pub speedup_b16: Option<f64>,
    pub threads: usize,
    pub dataset: String,
}

/// Cost, and accuracy on `data`'s query/gallery when given, of one model (speed is measured for
/// several models together: `reports`).
pub fn model_report(files: &ModelFiles, data: Option<&Dataset>, log: &mut dyn FnMut(&str)) -> Result<ModelReport> {
    let c = model_cost(files.config());
    let mut r = ModelReport {
        heads: files.config().attention_heads().iter().map(|h| h.len()).sum(),
        key_tokens: files.config().layers.iter().map(|l| l.tokens.len()).sum(),
        params: c.params,
        msa_params: c.msa_params,
        macs: c.macs,
        paper_flops: c.paper_flops,
        img_per_s_b1: None,
        img_per_s_b16: None,
        rank1: None,
        map: None,
        minp: None,
    };
    if let Some(d) = data {
        let m = eval_model(&Engine::new(files.clone())?, d, &EvalOptions { batch_size: 64, flip: false, progress: true })?;
        (r.rank1, r.map, r.minp) = (Some(m.rank(1)), Some(m.map), Some(m.minp));
        log(&format!("measured: Rank-1 {:.2} %, mAP {:.2} %, mINP {:.2} %", 100.0 * m.rank(1), 100.0 * m.map, 100.0 * m.minp));
    }
    Ok(r)
}

/// Reports of several models. With `measure`: accuracy on `data`, and speed at batch 1 and 16,
/// the models measured in turn for `SPEED_ROUNDS` rounds, each keeping its best — on a shared
/// machine one pass per model is at the mercy of its neighbours, and measuring the models
/// alternately puts them on equal terms.
pub fn reports(models: &[&ModelFiles], data: Option<&Dataset>, measure: bool, log: &mut dyn FnMut(&str)) -> Result<Vec<ModelReport>> {
    let mut out = models.iter().map(|m| model_report(m, data.filter(|_| measure), log)).collect::<Result<Vec<_>>>()?;
    if measure {
        let engines = models.iter().map(|m| Engine::new((*m).clone())).collect::<Result<Vec<_>>>()?;
        for _ in 0..SPEED_ROUNDS {
            for (r, e) in out.iter_mut().zip(&engines) {
                let b1 = bench_inference(e, 1, 30, false)?.img_per_s;
                let b16 = bench_inference(e, 16, 10, false)?.img_per_s;
                r.img_per_s_b1 = Some(r.img_per_s_b1.unwrap_or(0.0).max(b1));
                r.img_per_s_b16 = Some(r.img_per_s_b16.unwrap_or(0.0).max(b16));
            }
        }
        for r in &out {
            log(&format!(
                "measured: {:.1} img/s at batch 1, {:.1} at batch 16 (best of {SPEED_ROUNDS} rounds)",
                r.img_per_s_b1.unwrap_or(0.0),
                r.img_per_s_b16.unwrap_or(0.0)
            ));
        }
    }
    Ok(out)
}

/// Rounds of alternating speed measurements in `reports`.
pub const SPEED_ROUNDS: usize = 3;

pub fn build(original: &ModelFiles, pruned: &ModelFiles, data: &Dataset, quick: bool, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let [o, p]: [ModelReport; 2] =
        reports(&[original, pruned], Some(data), !quick, log)?.try_into().map_err(|_| Error::invalid("expected two model reports"))?;
    Ok(compare(o, p, data))
}

/// The report comparing two measured models.
pub fn compare(o: ModelReport, p: ModelReport, data: &Dataset) -> Report {
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b / a);
    Report {
        mac_saving: 1.0 - p.macs as f64 / o.macs as f64,
        paper_flop_saving: 1.0 - p.paper_flops as f64 / o.paper_flops as f64,
        param_saving: 1.0 - p.params as f64 / o.params as f64,
        mac_ratio: o.macs as f64 / p.macs as f64,
        speedup_b1: ratio(o.img_per_s_b1, p.img_per_s_b1),
        speedup_b16: ratio(o.img_per_s_b16, p.img_per_s_b16),
        threads: rayon::current_num_threads(),
        dataset: data.root.display().to_string(),
        original: o,
        pruned: p,
    }
}

fn g(v: u64) -> String {
    super::human(v)
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "not measured".into())
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "not measured".into())
}

/// What the report shows, in words: the cost saved, the speed gained, and the accuracy change.
pub fn verdict(r: &Report) -> String {
    let (a, b) = (&r.original, &r.pruned);
    let mut s = format!(
        "Pruning removed {:.1} % of the honest MACs ({:.2}× fewer) and {:.1} % of the parameters",
        100.0 * r.mac_saving,
        r.mac_ratio,
        100.0 * r.param_saving
    );
    match (r.speedup_b1, r.speedup_b16) {
        (Some(s1), Some(s16)) => {
            s += &format!("; on this machine the pruned model runs {s1:.2}× as fast at batch 1 and {s16:.2}× at batch 16");
        }
        _ => s += "; speed was not measured",
    }
    match (a.map, b.map, a.rank1, b.rank1) {
        (Some(m0), Some(m1), Some(r0), Some(r1)) => {
            s += &format!(
                ". Its mAP is {:.2} % against {:.2} % before ({}), Rank-1 {:.2} % against {:.2} % ({}).",
                100.0 * m1,
                100.0 * m0,
                crate::text::signed(100.0 * (m1 - m0), 2, "pt"),
                100.0 * r1,
                100.0 * r0,
                crate::text::signed(100.0 * (r1 - r0), 2, "pt")
            );
        }
        _ => s += "; accuracy was not measured.",
    }
    s
}

pub fn markdown(r: &Report, o: &PruneOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} pruning report\n", o.criterion.title());
    let _ = writeln!(s, "{}\n", verdict(r));
    let _ = writeln!(
        s,
        "Criterion: **{}** · heads removed: {:.0} % · key tokens removed: {:.0} % · {}, {} of fine-tuning after each, {} at the end · distillation: {} · data: `{}`\n",
        o.criterion.title(),
        100.0 * o.heads,
        100.0 * o.tokens,
        crate::text::count(o.iters, "iteration"),
        crate::text::count(o.finetune_epochs, "epoch"),
        crate::text::count(o.final_epochs, "epoch"),
        o.distill.describe(),
        r.dataset
    );
    let _ = writeln!(s, "| | original | pruned | change |");
    let _ = writeln!(s, "|---|---|---|---|");
    let (a, b) = (&r.original, &r.pruned);
    let rel = |x: u64, y: u64| crate::text::signed(100.0 * (y as f64 / x as f64 - 1.0), 1, "%");
    let _ = writeln!(s, "| heads kept | {} | {} | {} |", a.heads, b.heads, rel(a.heads as u64, b.heads as u64));
    let _ = writeln!(s, "| key tokens kept | {} | {} | {} |", a.key_tokens, b.key_tokens, rel(a.key_tokens as u64, b.key_tokens as u64));
    let _ = writeln!(s, "| params (backbone) | {} | {} | {} |", g(a.params), g(b.params), rel(a.params, b.params));
    let _ = writeln!(s, "| MSA params | {} | {} | {} |", g(a.msa_params), g(b.msa_params), rel(a.msa_params, b.msa_params));
    let _ = writeln!(s, "| MACs, honest (what amg computes) | {} | {} | {} |", g(a.macs), g(b.macs), rel(a.macs, b.macs));
    let _ = writeln!(s, "| FLOPs, paper convention | {} | {} | {} |", g(a.paper_flops), g(b.paper_flops), rel(a.paper_flops, b.paper_flops));
    let sp = |x: Option<f64>| x.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "not measured".into());
    let _ = writeln!(s, "| img/s, batch 1 ({} threads) | {} | {} | {} |", r.threads, num(a.img_per_s_b1), num(b.img_per_s_b1), sp(r.speedup_b1));
    let _ = writeln!(s, "| img/s, batch 16 | {} | {} | {} |", num(a.img_per_s_b16), num(b.img_per_s_b16), sp(r.speedup_b16));
    let d = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| crate::text::signed(100.0 * (y - x), 2, "pt")).unwrap_or_else(|| "–".into());
    let _ = writeln!(s, "| Rank-1 % | {} | {} | {} |", pct(a.rank1), pct(b.rank1), d(a.rank1, b.rank1));
    let _ = writeln!(s, "| mAP % | {} | {} | {} |", pct(a.map), pct(b.map), d(a.map, b.map));
    let _ = writeln!(s, "| mINP % | {} | {} | {} |", pct(a.minp), pct(b.minp), d(a.minp, b.minp));
    let _ = writeln!(
        s,
        "\nHonest MACs count what this implementation computes (queries and the residual stream keep all N tokens; K and V only the kept ones; patch embedding included). The paper's convention charges projections and attention at the kept-token count and leaves out the patch embedding; it is shown for comparison with the paper's table, never mixed with the honest figure. Accuracy uses the standard protocol (same identity and camera removed, Rank-k CMC, mAP, mINP), not LA-Transformer's top-10 evaluation. Speed is measured on this machine with amg's inference engine, the two models alternately, best of {SPEED_ROUNDS} rounds; MAC ratio {:.2}.",
        r.mac_ratio
    );
    s
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write_report(dir: &std::path::Path, r: &Report, o: &PruneOptions) -> Result<()> {
    write_json(&dir.join("report.json"), r)?;
    crate::fsutil::write_bytes_atomic(&dir.join("report.md"), markdown(r, o).as_bytes())
}

/// Prunes (see `prune::prune`) and writes `report.json` and `report.md` beside the pruned model:
/// cost, speed and accuracy of the original and the pruned model.
pub fn prune_and_report(req: PruneRequest, log: &mut dyn FnMut(&str)) -> Result<(PruneSummary, Report)> {
    let (data, o) = (req.data, req.options);
    let mut report = None;
    let summary = crate::prune::prune(req, log, &mut |tmp, original, pruned, log| {
        let rep = build(original, pruned, data, o.quick_report, log)?;
        write_report(tmp, &rep, o)?;
        report = Some(rep);
        Ok(())
    })?;
    Ok((summary, report.expect("written on success")))
}

/// One line for a plan applied without fine-tuning: the cost before and after.
pub fn plan_summary(before: &ModelFiles, after: &ModelFiles, out: &std::path::Path) -> String {
    let (b, p) = (model_cost(before.config()), model_cost(after.config()));
    format!(
        "applied the plan → {}: MACs {} → {} ({:+.1} %), params {} → {}",
        out.display(),
        g(b.macs),
        g(p.macs),
        100.0 * (p.macs as f64 / b.macs as f64 - 1.0),
        g(b.params),
        g(p.params)
    )
}
