//! The P×K identity sampler the triplet loss needs (TransReID's `RandomIdentitySampler`,
//! `DATALOADER.NUM_INSTANCE`): every batch holds P identities with K images each, so that each
//! anchor has positives and negatives in its batch.

use crate::error::{Error, Result};
use crate::rng::Rng;
use std::collections::BTreeMap;

/// An epoch's order of training images (indices into `labels`) in batches of `batch_size` =
/// P·K. Per identity its images are shuffled (drawn with replacement up to K when it has fewer)
/// and cut into runs of K, a shorter last run dropped; then, while at least P identities have runs
/// left, P of them are drawn at random and each gives its next run. Deterministic in (seed, epoch).
pub fn identity_order(labels: &[usize], instances: usize, batch_size: usize, seed: u64, epoch: usize) -> Result<Vec<usize>> {
    if instances == 0 || !batch_size.is_multiple_of(instances) || batch_size < 2 * instances {
        return Err(Error::invalid(format!(
            "`instances` {instances} with `batch_size` {batch_size}: the batch must be a multiple of the images per identity, with at least 2 identities"
        )));
    }
    let per_batch = batch_size / instances;
    let mut by_id: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_id.entry(l).or_default().push(i);
    }
    if by_id.len() < per_batch {
        return Err(Error::invalid(format!(
            "`batch_size` {batch_size} with `instances` {instances} needs {per_batch} identities per batch, but the training split has {}",
            by_id.len()
        )));
    }
    let mut rng = Rng::new(seed ^ 0x9_1D5).fork(epoch as u64);
    let mut runs: BTreeMap<usize, std::collections::VecDeque<Vec<usize>>> = BTreeMap::new();
    for (id, mut idx) in by_id {
        if idx.len() < instances {
            idx = (0..instances).map(|_| idx[rng.below(idx.len())]).collect();
        }
        rng.shuffle(&mut idx);
        runs.insert(id, idx.chunks_exact(instances).map(|c| c.to_vec()).collect());
    }
    let mut order = Vec::with_capacity(labels.len());
    let mut available: Vec<usize> = runs.keys().copied().collect();
    while available.len() >= per_batch {
        rng.shuffle(&mut available);
        let chosen: Vec<usize> = available[..per_batch].to_vec();
        for id in chosen {
            if let Some(q) = runs.get_mut(&id) {
                if let Some(run) = q.pop_front() {
                    order.extend(run);
                }
                if q.is_empty() {
                    available.retain(|&a| a != id);
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_p_identities_of_k_images() {
        // 7 identities with 1..=9 images each.
        let labels: Vec<usize> = (0..7).flat_map(|id| std::iter::repeat_n(id, 1 + id + id % 3)).collect();
        let order = identity_order(&labels, 2, 6, 1, 0).unwrap();
        assert!(!order.is_empty() && order.len().is_multiple_of(6));
        for batch in order.chunks(6) {
            let mut ids: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            for pair in ids.chunks(2) {
                assert_eq!(pair[0], pair[1], "a run of K holds one identity");
            }
            ids.dedup();
            assert_eq!(ids.len(), 3, "P = 3 distinct identities per batch: {batch:?}");
        }
        assert_eq!(order, identity_order(&labels, 2, 6, 1, 0).unwrap(), "deterministic");
        assert_ne!(order, identity_order(&labels, 2, 6, 1, 1).unwrap(), "a new order each epoch");
        assert!(identity_order(&labels, 4, 6, 1, 0).is_err(), "6 is not a multiple of 4");
        assert!(identity_order(&labels, 1, 16, 1, 0).is_err(), "16 identities per batch, 7 exist");
    }
}
