//! Training data: the moving-shapes generator, the shard format and the per-rank loader.

pub mod loader;
pub mod shapes;
pub mod shards;

pub use loader::{Batch, DataPosition, Loader, LoaderError};
pub use shards::{DataError, DataSet, Sample, ShardWriter};

use flg_core::config::{Config, DataKind};
use flg_core::dataset::{DatasetManifest, MovingShapesParams};
use shapes::{ShapesSpec, NUM_CLASSES};
use std::path::Path;

/// The generation parameters recorded in `dataset.json` for a spec.
pub fn shapes_params(spec: &ShapesSpec) -> MovingShapesParams {
    MovingShapesParams {
        frames: spec.frames as i64,
        size: spec.size as i64,
        seed: spec.seed,
        text_seed: spec.text_seed,
        num_classes: NUM_CLASSES,
    }
}

/// Writes `num` moving-shapes videos to `dir` in the shard format, with a progress bar when
/// `progress` is set.
pub fn write_moving_shapes(
    dir: &Path,
    spec: &ShapesSpec,
    num: u64,
    shard_size: u64,
    progress: bool,
) -> std::io::Result<DatasetManifest> {
    let (t, s) = (spec.frames as i64, spec.size as i64);
    let table = shapes::text_table(spec);
    let per_class = spec.text_len * spec.text_dim;
    let mut writer = ShardWriter::create(
        dir,
        "moving-shapes",
        [3, t, s, s],
        [spec.text_len as i64, spec.text_dim as i64],
        true,
        shard_size as usize,
    )?;
    let mut bar = crate::progress::Progress::on_lead(progress, num, "moving-shapes");
    for i in 0..num {
        let video = shapes::generate(spec, i);
        let latents = shapes::pixels_to_latents(&video.pixels, spec.frames, spec.size);
        let c = video.class as usize;
        writer.push(
            &latents,
            &table[c * per_class..(c + 1) * per_class],
            Some(i64::from(video.class)),
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.finish(Some(shapes_params(spec)))
}

/// Uses the moving-shapes data in `dir` if it was made from the same spec and count,
/// otherwise (re)generates it. Returns whether it generated.
pub fn ensure_moving_shapes(
    dir: &Path,
    spec: &ShapesSpec,
    num: u64,
    shard_size: u64,
    progress: bool,
) -> std::io::Result<bool> {
    if let Ok(m) = DatasetManifest::read(dir) {
        let same = m.kind == "moving-shapes"
            && m.num_samples == num
            && m.moving_shapes == Some(shapes_params(spec))
            && m.text_shape == [spec.text_len as i64, spec.text_dim as i64];
        if same && DataSet::open(dir).is_ok() {
            return Ok(false);
        }
    }
    write_moving_shapes(dir, spec, num, shard_size, progress)?;
    Ok(true)
}

/// The data set a config trains on: the `latents` directory, or the moving-shapes set in
/// `data.path` (default `<run dir>/data`), generated there first if missing or different.
pub fn open_or_generate(cfg: &Config, run_dir: &flg_core::RunDir) -> anyhow::Result<DataSet> {
    let d = &cfg.data;
    let dir = d.path.clone().unwrap_or_else(|| run_dir.data());
    if d.kind == DataKind::MovingShapes {
        let spec = ShapesSpec {
            frames: d.frames as usize,
            size: d.size as usize,
            text_len: d.text_len as usize,
            text_dim: d.text_dim as usize,
            seed: d.seed,
            text_seed: d.text_seed,
        };
        if ensure_moving_shapes(&dir, &spec, d.num_samples, d.shard_size, true)? {
            tracing::info!(dir = %dir.display(), videos = d.num_samples, "generated moving-shapes");
        }
    }
    Ok(DataSet::open(&dir)?)
}

#[cfg(test)]
mod tests;
