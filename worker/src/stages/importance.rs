//! Stage I: how much each block matters, and which blocks to remove.
//!
//! On a fixed, seeded calibration set (training videos, each at several shifted timesteps with
//! seeded noise), the x0 (Tweedie) estimate `x_t - t v` is computed with every block and with
//! each block skipped alone. A block's importance is the increase of the mean squared x0 error
//! when it is skipped: `I_l = E|x0^(-l) - x0|^2 - E|x0 - x0|^2` (docs/method.md). The calibration set
//! is split across ranks and the error sums are all-reduced, so W ranks give the one-rank table.
//! The candidates are taken until their parameters reach the target share of all block
//! parameters: the least important first (`importance.selection = "single"`), or greedily, each
//! round re-measuring the remaining blocks with the chosen ones already removed (`"greedy"`).
//! Either way the table records the x0 error of the chosen set as it grows (`set_errors`).

use crate::collective::Collective;
use crate::data::{Batch, DataSet};
use crate::flow;
use crate::rng::Rng;
use crate::shard::ShardedDit;
use crate::train::batch_tensors;
use crate::train::{draws, stage_id};
use flg_core::config::CandidateSelection;
pub use flg_core::formats::importance::{BlockScore, ImportanceReport};
use flg_core::RunDir;
use tch::{Kind, Tensor};

/// Stream tag of the calibration-set choice.
const CALIB_STREAM: u64 = 0x4341_4c49_42; // "CALIB"

/// Whether `removed` parameters of `total` reach the share `ratio`, with a small tolerance so
/// that e.g. 3 of 10 equal blocks count as exactly 30%.
fn share_reached(removed: i64, total: i64, ratio: f64) -> bool {
    removed as f64 >= ratio * total as f64 * (1.0 - 1e-9)
}

/// Lower single-block score first; the lower block id on a tie.
fn least_important_first(a: &BlockScore, b: &BlockScore) -> std::cmp::Ordering {
    a.score.total_cmp(&b.score).then(a.block.cmp(&b.block))
}

/// Least important blocks first until their parameters reach `ratio` of all block parameters.
pub fn choose_candidates(blocks: &[BlockScore], ratio: f64) -> (Vec<usize>, f64) {
    let total: i64 = blocks.iter().map(|b| b.params).sum();
    let mut order: Vec<&BlockScore> = blocks.iter().collect();
    order.sort_by(|a, b| least_important_first(a, b));
    let (mut chosen, mut removed) = (Vec::new(), 0i64);
    for b in order {
        if share_reached(removed, total, ratio) {
            break;
        }
        chosen.push(b.block);
        removed += b.params;
    }
    (chosen, removed as f64 / total as f64)
}

/// The blocks of `all` that are not in `removed`, in order.
fn without(all: &[usize], removed: &[usize]) -> Vec<usize> {
    all.iter()
        .copied()
        .filter(|b| !removed.contains(b))
        .collect()
}

/// Greedy set choice: starting from the least important block alone (its `error` is the first
/// set error), each round asks `set_errors` for the x0 error of the chosen set plus each
/// remaining block and takes the smallest (the lower block id on a tie), until the chosen
/// blocks reach `ratio` of the block parameters. Returns the candidates in the order taken and
/// the error after each.
pub fn choose_greedy(
    blocks: &[BlockScore],
    ratio: f64,
    mut set_errors: impl FnMut(&[Vec<usize>]) -> Vec<f64>,
) -> (Vec<usize>, Vec<f64>) {
    let total: i64 = blocks.iter().map(|b| b.params).sum();
    let params = |id: usize| {
        blocks
            .iter()
            .find(|b| b.block == id)
            .map_or(0, |b| b.params)
    };
    let first = blocks
        .iter()
        .min_by(|a, b| least_important_first(a, b))
        .expect("a model has blocks");
    let (mut chosen, mut errors) = (vec![first.block], vec![first.error]);
    let mut removed = first.params;
    while !share_reached(removed, total, ratio) {
        let remaining: Vec<usize> = blocks
            .iter()
            .map(|b| b.block)
            .filter(|b| !chosen.contains(b))
            .collect();
        if remaining.is_empty() {
            break;
        }
        let sets: Vec<Vec<usize>> = remaining
            .iter()
            .map(|&b| chosen.iter().copied().chain([b]).collect())
            .collect();
        let errs = set_errors(&sets);
        let (k, err) = errs
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1).then(remaining[a.0].cmp(&remaining[b.0])))
            .map(|(k, &e)| (k, e))
            .expect("one error per remaining block");
        chosen.push(remaining[k]);
        errors.push(err);
        removed += params(remaining[k]);
    }
    (chosen, errors)
}

/// One rank's part of the seeded calibration set, measured batch by batch.
struct Calibration<'a> {
    model: &'a ShardedDit,
    comm: &'a dyn Collective,
    data: &'a DataSet,
    /// Every calibration video, once per timestep draw.
    items: Vec<u64>,
    global: usize,
    shift: f64,
    seed: u64,
}

impl Calibration<'_> {
    /// Mean squared x0 error over the whole calibration set with each set of blocks removed
    /// (all-reduced, then rank 0's sums broadcast, so that every rank takes the same decisions
    /// on them), and the number of items measured.
    fn errors(&self, removed_sets: &[Vec<usize>], what: &str) -> (Vec<f64>, f64) {
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let local = self.global / world;
        let batches = self.items.len().div_ceil(self.global);
        let [c, t, h, w] = self.data.latent_shape();
        let all = &self.model.block_ids;
        let actives: Vec<Vec<usize>> = removed_sets.iter().map(|r| without(all, r)).collect();
        // Sums over this rank's items: the error per set, then the item count.
        let mut sums = vec![0f64; actives.len() + 1];
        let mut bar = crate::progress::Progress::on_lead(rank == 0, batches as u64, what);
        for bi in 0..batches {
            // This rank's slice of the global batch; past the end, items repeat with weight 0
            // so that every rank runs the same number of forwards.
            let slots: Vec<(u64, f64)> = (0..local)
                .map(|k| {
                    let pos = bi * self.global + rank * local + k;
                    if pos < self.items.len() {
                        (self.items[pos], 1.0)
                    } else {
                        (self.items[pos % self.items.len()], 0.0)
                    }
                })
                .collect();
            let indices: Vec<u64> = slots.iter().map(|&(i, _)| i).collect();
            let (x0, text) = batch_tensors(
                &Batch::gather(self.data, &indices),
                self.data,
                self.model.device,
            );
            let weights =
                Tensor::from_slice(&slots.iter().map(|s| s.1 as f32).collect::<Vec<f32>>())
                    .to_device(self.model.device);
            let dr = draws(
                self.seed,
                stage_id::IMPORTANCE,
                bi as u64,
                rank * local,
                local,
                &[c, t, h, w],
                self.model.device,
            );
            let tt = flow::shift_t(&dr.u, self.shift);
            let xt = flow::noisy(&x0, &dr.eps, &tt);
            for (k, active) in actives.iter().enumerate() {
                let v = self.model.output(self.comm, &xt, &tt, &text, active);
                let x0_hat = flow::x0_from_v(&xt, &v, &tt);
                // Weighted sum over this batch of the per-item mean squared x0 error.
                let per_item =
                    (x0_hat - &x0)
                        .square()
                        .mean_dim(&[1i64, 2, 3, 4][..], false, Kind::Float);
                sums[k] += (per_item * &weights).sum(Kind::Float).double_value(&[]);
            }
            sums[actives.len()] += weights.sum(Kind::Float).double_value(&[]);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let total = self
            .comm
            .broadcast(&self.comm.all_reduce_sum(&Tensor::from_slice(&sums)), 0);
        let total: Vec<f64> = Vec::<f64>::try_from(total).expect("f64 sums");
        let count = total[actives.len()];
        (
            total[..actives.len()].iter().map(|e| e / count).collect(),
            count,
        )
    }
}

/// Measures every block's importance with the calibration settings of `cfg` and chooses the
/// blocks to remove.
pub fn measure(
    model: &ShardedDit,
    comm: &dyn Collective,
    data: &DataSet,
    cfg: &flg_core::config::Importance,
    seed: u64,
) -> ImportanceReport {
    let _guard = tch::no_grad_guard();
    let n = (cfg.calibration_samples.min(data.len())) as usize;
    let mut videos: Vec<u64> = (0..data.len()).collect();
    Rng::derive(seed, &[CALIB_STREAM]).shuffle(&mut videos);
    videos.truncate(n);
    let calib = Calibration {
        model,
        comm,
        data,
        items: videos
            .iter()
            .flat_map(|&v| std::iter::repeat(v).take(cfg.timesteps_per_sample as usize))
            .collect(),
        global: cfg.batch_size as usize,
        shift: cfg.shift,
        seed,
    };
    let blocks: Vec<usize> = model.block_ids.clone();
    let stage = flg_core::Stage::Importance.name();
    // Nothing removed, then each block alone.
    let mut sets: Vec<Vec<usize>> = vec![vec![]];
    sets.extend(blocks.iter().map(|&b| vec![b]));
    let (errors, count) = calib.errors(&sets, stage);
    let baseline = errors[0];
    let per_block = crate::model::params::block_param_count(&model.dims);
    let scores: Vec<BlockScore> = blocks
        .iter()
        .enumerate()
        .map(|(k, &b)| BlockScore {
            block: b,
            error: errors[k + 1],
            score: errors[k + 1] - baseline,
            params: per_block,
        })
        .collect();
    let (candidates, set_errors) = match cfg.selection {
        CandidateSelection::Single => {
            let (candidates, _) = choose_candidates(&scores, cfg.prune_ratio);
            let prefixes: Vec<Vec<usize>> = (1..=candidates.len())
                .map(|k| candidates[..k].to_vec())
                .collect();
            let (set_errors, _) = calib.errors(&prefixes, &format!("{stage}: chosen set"));
            (candidates, set_errors)
        }
        CandidateSelection::Greedy => {
            let mut round = 1;
            choose_greedy(&scores, cfg.prune_ratio, |sets| {
                round += 1;
                calib.errors(sets, &format!("{stage}: set of {round}")).0
            })
        }
    };
    let total: i64 = scores.iter().map(|b| b.params).sum();
    let removed: i64 = scores
        .iter()
        .filter(|b| candidates.contains(&b.block))
        .map(|b| b.params)
        .sum();
    ImportanceReport {
        blocks: scores,
        baseline_error: baseline,
        items: count as u64,
        prune_ratio: cfg.prune_ratio,
        candidates,
        removed_share: removed as f64 / total as f64,
        selection: cfg.selection,
        set_errors,
    }
}

/// Writes `importance.json` and the bar chart `importance.png` into the run directory.
pub fn write(report: &ImportanceReport, run_dir: &RunDir) -> anyhow::Result<()> {
    flg_core::durable::write_file(
        &run_dir.importance(),
        (serde_json::to_string_pretty(report)? + "\n").as_bytes(),
    )?;
    let bars: Vec<flg_media::plot::Bar> = report
        .blocks
        .iter()
        .map(|b| flg_media::plot::Bar {
            label: b.block.to_string(),
            value: b.score,
            highlight: report.candidates.contains(&b.block),
        })
        .collect();
    flg_media::plot::bar_chart(
        &run_dir.importance_chart(),
        &format!(
            "Block importance: x0 error increase when skipped ({:.0}% of block parameters chosen)",
            report.removed_share * 100.0
        ),
        "block",
        "importance (MSE increase)",
        &bars,
        ("kept", "candidate for removal"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(scores: &[f64]) -> Vec<BlockScore> {
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| BlockScore {
                block: i,
                score: s,
                error: s,
                params: 100,
            })
            .collect()
    }

    #[test]
    fn least_important_blocks_until_the_share_is_reached() {
        let b = blocks(&[9.0, 5.0, 0.1, 0.3, 0.2, 0.4, 0.05, 2.0, 4.0, 8.0]);
        let (chosen, share) = choose_candidates(&b, 0.3);
        assert_eq!(chosen, vec![6, 2, 4]);
        assert!((share - 0.3).abs() < 1e-12);
        // A share that falls between blocks takes one more block.
        let (chosen, share) = choose_candidates(&b, 0.25);
        assert_eq!(chosen.len(), 3);
        assert!(share >= 0.25);
        let (chosen, _) = choose_candidates(&b, 0.5);
        assert_eq!(chosen, vec![6, 2, 4, 3, 5]);
    }

    /// Blocks 1 and 2 each cost little alone but do the same work, so removing both costs a
    /// lot: the single-block ranking takes both, the greedy choice takes 1 and then 3.
    #[test]
    fn greedy_choice_avoids_blocks_that_are_idle_only_one_at_a_time() {
        let single = [5.0, 0.1, 0.2, 0.3, 4.0, 6.0];
        let base = 1.0;
        let mut b = blocks(&single);
        for x in &mut b {
            x.error = base + x.score;
        }
        let set_error = |set: &[usize]| -> f64 {
            let sum: f64 = set.iter().map(|&k| single[k]).sum();
            let both = set.contains(&1) && set.contains(&2);
            base + sum + if both { 10.0 } else { 0.0 }
        };
        let (ranked, _) = choose_candidates(&b, 0.3);
        assert_eq!(ranked, vec![1, 2]);
        let mut asked = Vec::new();
        let (chosen, errors) = choose_greedy(&b, 0.3, |sets| {
            asked.push(sets.to_vec());
            sets.iter().map(|s| set_error(s)).collect()
        });
        assert_eq!(chosen, vec![1, 3]);
        assert_eq!(errors.len(), 2);
        assert!((errors[0] - 1.1).abs() < 1e-12 && (errors[1] - 1.4).abs() < 1e-12);
        // One round after the first block: the chosen block plus each of the other five.
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0],
            vec![vec![1, 0], vec![1, 2], vec![1, 3], vec![1, 4], vec![1, 5]]
        );
        // The share rule is the single ranking's: 50% of six equal blocks is three.
        let (chosen, errors) =
            choose_greedy(&b, 0.5, |sets| sets.iter().map(|s| set_error(s)).collect());
        assert_eq!(chosen, vec![1, 3, 4]);
        assert!((errors[2] - 5.4).abs() < 1e-12, "{errors:?}");
    }

    #[test]
    fn report_round_trips_and_draws_its_chart() {
        let b = blocks(&[9.0, 5.0, 0.1, 0.3, 0.2, 0.4, 0.05, 2.0, 4.0, 8.0]);
        let (candidates, removed_share) = choose_candidates(&b, 0.3);
        let r = ImportanceReport {
            blocks: b,
            baseline_error: 0.5,
            items: 10,
            prune_ratio: 0.3,
            candidates,
            removed_share,
            selection: CandidateSelection::Greedy,
            set_errors: vec![0.6, 0.7, 0.9],
        };
        let dir = tempfile::tempdir().unwrap();
        write(&r, &RunDir::new(dir.path())).unwrap();
        assert_eq!(
            ImportanceReport::read(&dir.path().join("importance.json")).unwrap(),
            r
        );
        let png = std::fs::read(dir.path().join("importance.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000);
        if let Ok(keep) = std::env::var("FLG_KEEP_CHART") {
            std::fs::write(keep, png).unwrap();
        }
    }
}
