//! `dataset.json`: the index of a data directory of safetensors shards.
//!
//! The schema lives here (not in the worker) so that `fastlightgen validate` can check a data
//! directory against the model without linking libtorch; the worker's reader checks the shards
//! themselves against this index.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Written in every `dataset.json`; a reader refuses any other value.
pub const DATASET_FORMAT: &str = "fastlightgen-latents/1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetManifest {
    pub format: String,
    /// `moving-shapes` or `latents`.
    pub kind: String,
    pub num_samples: u64,
    /// Shape of one sample's latents: [C, T, H, W].
    pub latent_shape: [i64; 4],
    /// Shape of one sample's text embedding: [L, D].
    pub text_shape: [i64; 2],
    /// Whether shards carry `labels` [N] (int64 class ids).
    pub has_labels: bool,
    pub shards: Vec<ShardEntry>,
    /// How a moving-shapes data set was generated (absent for encoded latents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_shapes: Option<MovingShapesParams>,
    /// How encoded latents were made (tools/wan_encode.py: the clips, the VAE and text
    /// encoder, the normalisation, the null prompt file, the clips it skipped), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name relative to the data directory.
    pub file: String,
    pub num_samples: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MovingShapesParams {
    pub frames: i64,
    pub size: i64,
    pub seed: u64,
    pub text_seed: u64,
    pub num_classes: u32,
}

/// A `dataset.json` that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct DatasetError {
    pub file: PathBuf,
    pub message: String,
}

/// Largest side of a sample's latent or text shape.
const MAX_SIDE: i64 = 1 << 20;
/// Most values in one sample's latents or text (4 GiB of f32).
const MAX_SAMPLE_ELEMENTS: f64 = (1u64 << 30) as f64;
/// Most samples a data set lists.
const MAX_SAMPLES: u64 = 1 << 40;

impl DatasetManifest {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("dataset.json")
    }

    /// Reads `DIR/dataset.json` and checks that it is self-consistent.
    pub fn read(dir: &Path) -> Result<DatasetManifest, DatasetError> {
        let file = Self::path_in(dir);
        let err = |message: String| DatasetError {
            file: file.clone(),
            message,
        };
        if !dir.is_dir() {
            return Err(DatasetError {
                file: dir.to_path_buf(),
                message: "no such data directory".into(),
            });
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| err(format!("cannot read the data set index: {e}")))?;
        let m: DatasetManifest = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a valid data set index: {e}")))?;
        if m.format != DATASET_FORMAT {
            return Err(err(format!(
                "format is {:?}, expected {DATASET_FORMAT:?}",
                m.format
            )));
        }
        let listed: u64 = m.shards.iter().map(|s| s.num_samples).sum();
        if listed != m.num_samples {
            return Err(err(format!(
                "num_samples is {} but the shards list {listed} samples",
                m.num_samples
            )));
        }
        if m.shards.is_empty() {
            return Err(err("lists no shards".into()));
        }
        if m.latent_shape
            .iter()
            .chain(m.text_shape.iter())
            .any(|&d| d < 1)
        {
            return Err(err(format!(
                "shapes must be positive: latent_shape {:?}, text_shape {:?}",
                m.latent_shape, m.text_shape
            )));
        }
        let numel = |d: &[i64]| d.iter().map(|&x| x as f64).product::<f64>();
        if m.latent_shape
            .iter()
            .chain(m.text_shape.iter())
            .any(|&d| d > MAX_SIDE)
            || numel(&m.latent_shape) > MAX_SAMPLE_ELEMENTS
            || numel(&m.text_shape) > MAX_SAMPLE_ELEMENTS
        {
            return Err(err(format!(
                "latent_shape {:?} / text_shape {:?}: larger than any video model takes (each side at most {MAX_SIDE}, at most {MAX_SAMPLE_ELEMENTS:e} values per sample)",
                m.latent_shape, m.text_shape
            )));
        }
        if m.num_samples > MAX_SAMPLES {
            return Err(err(format!(
                "num_samples {} is more than {MAX_SAMPLES}",
                m.num_samples
            )));
        }
        for s in &m.shards {
            if s.file.contains('/') || s.file.contains("..") {
                return Err(err(format!(
                    "shard file {:?} must be a plain file name",
                    s.file
                )));
            }
        }
        Ok(m)
    }

    /// Writes `DIR/dataset.json` atomically (temporary file, then rename).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let file = Self::path_in(dir);
        let tmp = dir.join(".dataset.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(self).expect("serialisable") + "\n",
        )?;
        std::fs::rename(tmp, file)
    }
}
