//! Stage I: how much each block matters, and which blocks to remove.
//!
//! On a fixed, seeded calibration set (training videos, each at several shifted timesteps with
//! seeded noise), the x0 (Tweedie) estimate `x_t - t v` is computed with every block and with
//! each block skipped alone. A block's importance is the increase of the mean squared x0 error
//! when it is skipped: `I_l = E|x0^(-l) - x0|^2 - E|x0 - x0|^2` (docs/method.md). The calibration set
//! is split across ranks and the error sums are all-reduced, so W ranks give the one-rank table.
//! The candidates are the least important blocks, taken in order until their parameters reach
//! the target share of all block parameters.

use crate::collective::Collective;
use crate::data::{Batch, DataSet};
use crate::flow;
use crate::rng::Rng;
use crate::shard::ShardedDit;
use crate::train::batch_tensors;
use crate::train::{draws, stage_id};
pub use flg_core::formats::importance::{BlockScore, ImportanceReport};
use flg_core::RunDir;
use tch::{Kind, Tensor};

/// Stream tag of the calibration-set choice.
const CALIB_STREAM: u64 = 0x4341_4c49_42; // "CALIB"

/// Least important blocks first until their parameters reach `ratio` of all block parameters.
pub fn choose_candidates(blocks: &[BlockScore], ratio: f64) -> (Vec<usize>, f64) {
    let total: i64 = blocks.iter().map(|b| b.params).sum();
    let mut order: Vec<&BlockScore> = blocks.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.block.cmp(&b.block)));
    let (mut chosen, mut removed) = (Vec::new(), 0i64);
    for b in order {
        // A small tolerance so that e.g. 3 of 10 equal blocks count as exactly 30%.
        if removed as f64 >= ratio * total as f64 * (1.0 - 1e-9) {
            break;
        }
        chosen.push(b.block);
        removed += b.params;
    }
    (chosen, removed as f64 / total as f64)
}

/// Measures every block's importance with the calibration settings of `cfg`.
pub fn measure(
    model: &ShardedDit,
    comm: &dyn Collective,
    data: &DataSet,
    cfg: &flg_core::config::Importance,
    seed: u64,
) -> ImportanceReport {
    let _guard = tch::no_grad_guard();
    let (rank, world) = (comm.rank(), comm.world());
    let n = (cfg.calibration_samples.min(data.len())) as usize;
    let mut videos: Vec<u64> = (0..data.len()).collect();
    Rng::derive(seed, &[CALIB_STREAM]).shuffle(&mut videos);
    videos.truncate(n);
    // Items: every calibration video at every timestep draw.
    let items: Vec<u64> = videos
        .iter()
        .flat_map(|&v| std::iter::repeat(v).take(cfg.timesteps_per_sample as usize))
        .collect();
    let global = cfg.batch_size as usize;
    let local = global / world;
    let batches = items.len().div_ceil(global);
    let blocks: Vec<usize> = model.block_ids.clone();
    let [c, t, h, w] = data.latent_shape();
    // Sums over this rank's items: baseline error, error per skipped block, item count.
    let mut sums = vec![0f64; blocks.len() + 2];
    let mut bar = crate::progress::Progress::on_lead(
        rank == 0,
        batches as u64,
        flg_core::Stage::Importance.name(),
    );
    for bi in 0..batches {
        // This rank's slice of the global batch; past the end, items repeat with weight 0 so
        // that every rank runs the same number of forwards.
        let slots: Vec<(u64, f64)> = (0..local)
            .map(|k| {
                let pos = bi * global + rank * local + k;
                if pos < items.len() {
                    (items[pos], 1.0)
                } else {
                    (items[pos % items.len()], 0.0)
                }
            })
            .collect();
        let indices: Vec<u64> = slots.iter().map(|&(i, _)| i).collect();
        let (x0, text) = batch_tensors(&Batch::gather(data, &indices), data, model.device);
        let weights = Tensor::from_slice(&slots.iter().map(|s| s.1 as f32).collect::<Vec<f32>>())
            .to_device(model.device);
        let dr = draws(
            seed,
            stage_id::IMPORTANCE,
            bi as u64,
            rank * local,
            local,
            &[c, t, h, w],
            model.device,
        );
        let tt = flow::shift_t(&dr.u, cfg.shift);
        let xt = flow::noisy(&x0, &dr.eps, &tt);
        // Weighted sum over this batch of the per-item mean squared x0 error.
        let err = |active: &[usize]| -> f64 {
            let v = model.output(comm, &xt, &tt, &text, active);
            let x0_hat = flow::x0_from_v(&xt, &v, &tt);
            let per_item =
                (x0_hat - &x0)
                    .square()
                    .mean_dim(&[1i64, 2, 3, 4][..], false, Kind::Float);
            (per_item * &weights).sum(Kind::Float).double_value(&[])
        };
        sums[0] += err(&blocks);
        for (k, &b) in blocks.iter().enumerate() {
            let active: Vec<usize> = blocks.iter().copied().filter(|&x| x != b).collect();
            sums[k + 1] += err(&active);
        }
        sums[blocks.len() + 1] += weights.sum(Kind::Float).double_value(&[]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let total = comm.all_reduce_sum(&Tensor::from_slice(&sums));
    let total: Vec<f64> = Vec::<f64>::try_from(total).expect("f64 sums");
    let count = total[blocks.len() + 1];
    let baseline = total[0] / count;
    let per_block = crate::model::params::block_param_count(&model.dims);
    let scores: Vec<BlockScore> = blocks
        .iter()
        .enumerate()
        .map(|(k, &b)| BlockScore {
            block: b,
            error: total[k + 1] / count,
            score: total[k + 1] / count - baseline,
            params: per_block,
        })
        .collect();
    let (candidates, removed_share) = choose_candidates(&scores, cfg.prune_ratio);
    ImportanceReport {
        blocks: scores,
        baseline_error: baseline,
        items: count as u64,
        prune_ratio: cfg.prune_ratio,
        candidates,
        removed_share,
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
