//! The standard Re-ID ranking metrics (docs/method.md §7; torchreid's `eval_market1501`, mINP as in
//! Ye et al.'s AGW code): CMC rank-k, mAP and mINP.
//!
//! Per query, gallery entries with the query's identity *and* camera are removed; a query with no
//! remaining true match is skipped. Ranking is by score, higher first; equal scores keep gallery
//! order (a stable sort of the distance, which torchreid leaves to numpy's unstable argsort).
//!
//! Nothing here materialises a query×gallery matrix: each query needs only its score row, and
//! instead of sorting the gallery, the rank of every true match is counted in one pass.

use rayon::prelude::*;
use serde::Serialize;

/// One query's contribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryResult {
    /// 0-based rank of the first true match.
    pub first: usize,
    pub ap: f64,
    pub inp: f64,
}

/// Ranks one query's gallery scores. `None` when no true match remains after removing the
/// same-identity same-camera entries.
pub fn rank_query(scores: &[f32], q_pid: i64, q_cam: i64, g_pids: &[i64], g_cams: &[i64]) -> Option<QueryResult> {
    // Positives, ordered as the ranking would order them: score descending, then gallery index.
    let mut pos: Vec<(f32, usize)> = (0..scores.len()).filter(|&g| g_pids[g] == q_pid && g_cams[g] != q_cam).map(|g| (scores[g], g)).collect();
    if pos.is_empty() {
        return None;
    }
    // A total order (NaN sorts above every number, as `f32::total_cmp` puts it; −0 equals +0), so
    // the ranking is well defined whatever the scores; callers refuse non-finite features first.
    let before = |a: (f32, usize), b: (f32, usize)| (a.0 + 0.0).total_cmp(&(b.0 + 0.0)).then(b.1.cmp(&a.1)).is_gt();
    pos.sort_by(|&a, &b| if before(a, b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
    // ahead[k]: kept non-matches ranked before positive k but after positive k-1.
    let mut ahead = vec![0usize; pos.len() + 1];
    for g in 0..scores.len() {
        if g_pids[g] == q_pid {
            continue; // a positive, or removed (same identity, same camera)
        }
        let key = (scores[g], g);
        // Number of positives ranked before this gallery entry.
        let k = pos.partition_point(|&p| before(p, key));
        ahead[k] += 1;
    }
    let n = pos.len() as f64;
    let (mut negatives, mut ap, mut last) = (0usize, 0.0, 0usize);
    let mut first = 0;
    for (k, &before_k) in ahead.iter().enumerate().take(pos.len()) {
        negatives += before_k;
        let rank = k + negatives; // 0-based position of positive k
        if k == 0 {
            first = rank;
        }
        ap += (k + 1) as f64 / (rank + 1) as f64;
        last = rank;
    }
    Some(QueryResult { first, ap: ap / n, inp: n / (last + 1) as f64 })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// CMC: fraction of valid queries whose first true match is within the top k, k = 1..=len.
    pub cmc: Vec<f64>,
    #[serde(rename = "mAP")]
    pub map: f64,
    #[serde(rename = "mINP")]
    pub minp: f64,
    /// Queries with at least one true match (the ones averaged over).
    pub queries: usize,
    /// All queries given.
    pub total_queries: usize,
    pub gallery: usize,
}

impl Metrics {
    pub fn rank(&self, k: usize) -> f64 {
        self.cmc.get(k - 1).copied().unwrap_or_else(|| self.cmc.last().copied().unwrap_or(0.0))
    }

    /// The one JSON object `amg eval --json` prints.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rank1": self.rank(1), "rank5": self.rank(5), "rank10": self.rank(10),
            "mAP": self.map, "mINP": self.minp, "queries": self.queries, "gallery": self.gallery,
        })
    }

    pub fn table(&self) -> String {
        format!(
            "queries {} ({} with a match) · gallery {}\n  Rank-1   {:6.2} %\n  Rank-5   {:6.2} %\n  Rank-10  {:6.2} %\n  mAP      {:6.2} %\n  mINP     {:6.2} %\n",
            self.total_queries,
            self.queries,
            self.gallery,
            100.0 * self.rank(1),
            100.0 * self.rank(5),
            100.0 * self.rank(10),
            100.0 * self.map,
            100.0 * self.minp
        )
    }
}

/// Aggregates per-query results as torchreid does (CMC truncated at `max_rank`, or the gallery size
/// if smaller). Errors when no query has a true match.
pub fn aggregate(results: &[Option<QueryResult>], gallery: usize, max_rank: usize) -> Result<Metrics, String> {
    let valid: Vec<&QueryResult> = results.iter().flatten().collect();
    if valid.is_empty() {
        return Err("no query has a true match in the gallery (under another camera): nothing to evaluate".into());
    }
    let max_rank = max_rank.min(gallery).max(1);
    let nv = valid.len() as f64;
    let mut cmc = vec![0.0; max_rank];
    for r in &valid {
        for c in cmc.iter_mut().skip(r.first) {
            *c += 1.0;
        }
    }
    for c in &mut cmc {
        *c /= nv;
    }
    Ok(Metrics {
        cmc,
        map: valid.iter().map(|r| r.ap).sum::<f64>() / nv,
        minp: valid.iter().map(|r| r.inp).sum::<f64>() / nv,
        queries: valid.len(),
        total_queries: results.len(),
        gallery,
    })
}

/// Query and gallery identities and cameras.
pub struct Labels<'a> {
    pub q_pids: &'a [i64],
    pub q_cams: &'a [i64],
    pub g_pids: &'a [i64],
    pub g_cams: &'a [i64],
}

/// Evaluates a distance matrix `[Q, G]` (lower = closer), e.g. torchreid's fixtures.
pub fn evaluate_distances(dist: &[f32], l: &Labels, max_rank: usize) -> Result<Metrics, String> {
    let g = l.g_pids.len();
    assert_eq!(dist.len(), l.q_pids.len() * g);
    let results: Vec<Option<QueryResult>> = dist
        .par_chunks(g.max(1))
        .enumerate()
        .map(|(q, row)| {
            let scores: Vec<f32> = row.iter().map(|d| -d).collect();
            rank_query(&scores, l.q_pids[q], l.q_cams[q], l.g_pids, l.g_cams)
        })
        .collect();
    aggregate(&results, g, max_rank)
}

/// Evaluates features by inner product (cosine for unit features): `q` is `[Q, dim]`, `g` is
/// `[G, dim]`. Scores are computed a block of queries at a time, so memory stays at
/// `block × G` floats however large the gallery.
pub fn evaluate_features(q: &[f32], g: &[f32], dim: usize, l: &Labels, max_rank: usize) -> Result<Metrics, String> {
    use crate::kernels::gemm::{matmul_bt, Acc, Mat};
    let (nq, ng) = (q.len() / dim, g.len() / dim);
    assert_eq!(nq, l.q_pids.len());
    assert_eq!(ng, l.g_pids.len());
    // ~64 MB of scores at most.
    let block = (16_000_000 / ng.max(1)).clamp(1, 256);
    let mut scores = vec![0f32; block.min(nq.max(1)) * ng];
    let mut results = Vec::with_capacity(nq);
    for start in (0..nq).step_by(block) {
        let rows = block.min(nq - start);
        let s = &mut scores[..rows * ng];
        matmul_bt(
            Mat::dense(&q[start * dim..(start + rows) * dim], rows, dim),
            Mat::dense(g, ng, dim),
            s,
            ng,
            Acc::Overwrite,
            1.0,
            rayon::current_num_threads(),
        );
        let part: Vec<Option<QueryResult>> =
            s.par_chunks(ng.max(1)).enumerate().map(|(i, row)| rank_query(row, l.q_pids[start + i], l.q_cams[start + i], l.g_pids, l.g_cams)).collect();
        results.extend(part);
    }
    aggregate(&results, ng, max_rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same query ranked by a full sort, as the protocol states it.
    fn by_sorting(scores: &[f32], q_pid: i64, q_cam: i64, g_pids: &[i64], g_cams: &[i64]) -> Option<QueryResult> {
        let mut order: Vec<usize> = (0..scores.len()).filter(|&g| !(g_pids[g] == q_pid && g_cams[g] == q_cam)).collect();
        order.sort_by(|&a, &b| (scores[b] + 0.0).total_cmp(&(scores[a] + 0.0)).then(a.cmp(&b)));
        let hits: Vec<usize> = order.iter().enumerate().filter(|(_, &g)| g_pids[g] == q_pid).map(|(r, _)| r).collect();
        if hits.is_empty() {
            return None;
        }
        let ap = hits.iter().enumerate().map(|(k, &r)| (k + 1) as f64 / (r + 1) as f64).sum::<f64>() / hits.len() as f64;
        Some(QueryResult { first: hits[0], ap, inp: hits.len() as f64 / (*hits.last().unwrap() + 1) as f64 })
    }

    #[test]
    fn counting_equals_sorting_with_ties() {
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..300 {
            let g = 1 + rng.below(40);
            // Few distinct values, so ties are everywhere.
            let scores: Vec<f32> = (0..g).map(|_| rng.below(5) as f32 * 0.25).collect();
            let g_pids: Vec<i64> = (0..g).map(|_| rng.below(4) as i64 - 1).collect();
            let g_cams: Vec<i64> = (0..g).map(|_| rng.below(3) as i64).collect();
            let (qp, qc) = (rng.below(3) as i64, rng.below(3) as i64);
            let a = rank_query(&scores, qp, qc, &g_pids, &g_cams);
            let b = by_sorting(&scores, qp, qc, &g_pids, &g_cams);
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert_eq!(a.first, b.first);
                    assert!((a.ap - b.ap).abs() < 1e-12 && (a.inp - b.inp).abs() < 1e-12);
                }
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn a_worked_example() {
        // Gallery order by score: g2 (match), g0 (other), g3 (match, same camera: removed), g1 (match).
        let scores = [0.8, 0.1, 0.9, 0.5];
        let r = rank_query(&scores, 7, 1, &[3, 7, 7, 7], &[2, 2, 2, 1]).unwrap();
        // Kept ranking: g2 (hit), g0, g1 (hit) → hits at 0 and 2.
        assert_eq!(r.first, 0);
        assert!((r.ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((r.inp - 2.0 / 3.0).abs() < 1e-12);
        assert!(rank_query(&scores, 9, 1, &[3, 7, 7, 7], &[2, 2, 2, 1]).is_none());
    }
}
