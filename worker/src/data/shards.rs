//! The on-disk data format: a directory of safetensors shards plus `dataset.json`.
//!
//! Each shard holds `latents` [n, C, T, H, W], `text` [n, L, D] and, for moving-shapes,
//! `labels` [n] (int64). Shards are memory-mapped; a sample is read by offset, so random access
//! across shards costs no more than sequential reading. Every shard is checked against the
//! index when the data set is opened, so a truncated, missing or mismatched file is reported by
//! name before training starts, not in the middle of an epoch.

use flg_core::dataset::{DatasetManifest, MovingShapesParams, ShardEntry, DATASET_FORMAT};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A data file that cannot be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct DataError {
    pub file: PathBuf,
    pub message: String,
}

fn data_err(file: &Path, message: impl Into<String>) -> DataError {
    DataError {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

// ------------------------------------------------------------------------------------ writer

/// Accumulates samples and writes them as shards of `shard_size` samples, then the index.
pub struct ShardWriter {
    dir: PathBuf,
    kind: String,
    latent_shape: [i64; 4],
    text_shape: [i64; 2],
    has_labels: bool,
    shard_size: usize,
    latents: Vec<f32>,
    text: Vec<f32>,
    labels: Vec<i64>,
    shards: Vec<ShardEntry>,
}

impl ShardWriter {
    /// Starts a data set in `dir` (created if needed). Existing shards of an older data set
    /// there are replaced as the new ones are written; the index is written last.
    pub fn create(
        dir: &Path,
        kind: &str,
        latent_shape: [i64; 4],
        text_shape: [i64; 2],
        has_labels: bool,
        shard_size: usize,
    ) -> std::io::Result<ShardWriter> {
        std::fs::create_dir_all(dir)?;
        // An index left from an earlier data set must not describe the new, partial shards.
        let _ = std::fs::remove_file(DatasetManifest::path_in(dir));
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            kind: kind.into(),
            latent_shape,
            text_shape,
            has_labels,
            shard_size: shard_size.max(1),
            latents: Vec::new(),
            text: Vec::new(),
            labels: Vec::new(),
            shards: Vec::new(),
        })
    }

    fn pending(&self) -> usize {
        self.latents.len() / numel(&self.latent_shape)
    }

    /// Adds one sample: latents [C, T, H, W] and text [L, D], flattened.
    pub fn push(
        &mut self,
        latents: &[f32],
        text: &[f32],
        label: Option<i64>,
    ) -> std::io::Result<()> {
        assert_eq!(
            latents.len(),
            numel(&self.latent_shape),
            "latents of the declared shape"
        );
        assert_eq!(
            text.len(),
            numel(&self.text_shape),
            "text of the declared shape"
        );
        assert_eq!(
            label.is_some(),
            self.has_labels,
            "labels on every sample or none"
        );
        self.latents.extend_from_slice(latents);
        self.text.extend_from_slice(text);
        self.labels.extend(label);
        if self.pending() == self.shard_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let n = self.pending();
        if n == 0 {
            return Ok(());
        }
        let file = format!("shard-{:05}.safetensors", self.shards.len());
        let shape = |inner: &[i64]| -> Vec<usize> {
            std::iter::once(n)
                .chain(inner.iter().map(|&d| d as usize))
                .collect()
        };
        let latent_bytes = f32_bytes(&self.latents);
        let text_bytes = f32_bytes(&self.text);
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let mut views = vec![
            (
                "latents",
                TensorView::new(Dtype::F32, shape(&self.latent_shape), &latent_bytes),
            ),
            (
                "text",
                TensorView::new(Dtype::F32, shape(&self.text_shape), &text_bytes),
            ),
        ];
        if self.has_labels {
            views.push(("labels", TensorView::new(Dtype::I64, vec![n], &label_bytes)));
        }
        let views: Vec<(&str, TensorView)> = views
            .into_iter()
            .map(|(k, v)| (k, v.expect("buffers match their shapes")))
            .collect();
        let tmp = self.dir.join(format!(".{file}.tmp"));
        safetensors::serialize_to_file(views, None, &tmp).map_err(std::io::Error::other)?;
        std::fs::rename(&tmp, self.dir.join(&file))?;
        self.shards.push(ShardEntry {
            file,
            num_samples: n as u64,
        });
        self.latents.clear();
        self.text.clear();
        self.labels.clear();
        Ok(())
    }

    /// Writes the last partial shard and the index; returns the index.
    pub fn finish(
        mut self,
        moving_shapes: Option<MovingShapesParams>,
    ) -> std::io::Result<DatasetManifest> {
        self.flush()?;
        let manifest = DatasetManifest {
            format: DATASET_FORMAT.into(),
            kind: self.kind.clone(),
            num_samples: self.shards.iter().map(|s| s.num_samples).sum(),
            latent_shape: self.latent_shape,
            text_shape: self.text_shape,
            has_labels: self.has_labels,
            shards: self.shards.clone(),
            moving_shapes,
            source: None,
        };
        manifest.write(&self.dir)?;
        Ok(manifest)
    }
}

fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>() as usize
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ------------------------------------------------------------------------------------ reader

/// Where one tensor's samples sit in a mapped shard.
#[derive(Clone, Copy, Debug)]
struct Slot {
    dtype: Dtype,
    /// Absolute byte offset of sample 0 in the mapped file.
    start: usize,
    /// Elements per sample.
    per_sample: usize,
}

struct MappedShard {
    map: Mmap,
    /// Global index of this shard's first sample.
    first: u64,
    len: u64,
    latents: Slot,
    text: Slot,
    labels: Option<Slot>,
}

/// One sample, decoded to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// [C, T, H, W]
    pub latents: Vec<f32>,
    /// [L, D]
    pub text: Vec<f32>,
    pub label: Option<i64>,
}

/// An opened, checked data directory.
pub struct DataSet {
    pub dir: PathBuf,
    pub manifest: DatasetManifest,
    shards: Vec<MappedShard>,
}

impl DataSet {
    /// Opens `dir`, checking the index and every shard it lists (present, readable,
    /// a valid safetensors file, the declared tensors with the declared shapes and counts).
    pub fn open(dir: &Path) -> Result<DataSet, DataError> {
        let manifest = DatasetManifest::read(dir).map_err(|e| DataError {
            file: e.file,
            message: e.message,
        })?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut first = 0u64;
        for entry in &manifest.shards {
            let path = dir.join(&entry.file);
            let shard = map_shard(&path, entry, &manifest, first)?;
            first += shard.len;
            shards.push(shard);
        }
        Ok(DataSet {
            dir: dir.to_path_buf(),
            manifest,
            shards,
        })
    }

    pub fn len(&self) -> u64 {
        self.manifest.num_samples
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn latent_shape(&self) -> [i64; 4] {
        self.manifest.latent_shape
    }

    pub fn text_shape(&self) -> [i64; 2] {
        self.manifest.text_shape
    }

    /// Reads sample `index` (0-based over all shards).
    pub fn sample(&self, index: u64) -> Sample {
        assert!(
            index < self.len(),
            "sample {index} of a data set of {}",
            self.len()
        );
        let s = self
            .shards
            .iter()
            .find(|s| index < s.first + s.len)
            .expect("shards cover 0..len");
        let k = (index - s.first) as usize;
        Sample {
            latents: read_floats(&s.map, s.latents, k),
            text: read_floats(&s.map, s.text, k),
            label: s.labels.map(|slot| {
                let at = slot.start + k * 8;
                i64::from_le_bytes(s.map[at..at + 8].try_into().unwrap())
            }),
        }
    }

    /// Full integrity check: the sha256 of every shard (slow on large data; `data verify`).
    pub fn sha256_of_shards(&self) -> Vec<(String, String)> {
        self.manifest
            .shards
            .iter()
            .zip(&self.shards)
            .map(|(e, s)| (e.file.clone(), format!("{:x}", Sha256::digest(&s.map[..]))))
            .collect()
    }
}

fn map_shard(
    path: &Path,
    entry: &ShardEntry,
    manifest: &DatasetManifest,
    first: u64,
) -> Result<MappedShard, DataError> {
    let file = File::open(path).map_err(|e| data_err(path, format!("cannot open shard: {e}")))?;
    // SAFETY: shards are written once (temporary file + rename) and never modified in place.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| data_err(path, format!("cannot map shard: {e}")))?;
    let (header_len, meta) = SafeTensors::read_metadata(&map[..]).map_err(|e| {
        data_err(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let data_start = 8 + header_len;
    let infos: HashMap<String, _> = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let n = entry.num_samples as usize;
    let slot = |name: &str, inner: &[i64], float: bool| -> Result<Slot, DataError> {
        let info = infos
            .get(name)
            .ok_or_else(|| data_err(path, format!("has no `{name}` tensor")))?;
        let want: Vec<usize> = std::iter::once(n)
            .chain(inner.iter().map(|&d| d as usize))
            .collect();
        if info.shape != want {
            return Err(data_err(
                path,
                format!(
                    "`{name}` has shape {:?} but dataset.json says {want:?}",
                    info.shape
                ),
            ));
        }
        let ok = if float {
            matches!(info.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16)
        } else {
            info.dtype == Dtype::I64
        };
        if !ok {
            return Err(data_err(
                path,
                format!("`{name}` has unsupported dtype {:?}", info.dtype),
            ));
        }
        Ok(Slot {
            dtype: info.dtype,
            start: data_start + info.data_offsets.0,
            per_sample: numel(inner),
        })
    };
    let latents = slot("latents", &manifest.latent_shape, true)?;
    let text = slot("text", &manifest.text_shape, true)?;
    let labels = if manifest.has_labels {
        Some(slot("labels", &[], false)?)
    } else {
        None
    };
    Ok(MappedShard {
        map,
        first,
        len: entry.num_samples,
        latents,
        text,
        labels,
    })
}

fn read_floats(map: &[u8], slot: Slot, k: usize) -> Vec<f32> {
    let width = if slot.dtype == Dtype::F32 { 4 } else { 2 };
    let at = slot.start + k * slot.per_sample * width;
    let bytes = &map[at..at + slot.per_sample * width];
    match slot.dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => unreachable!("dtype {other:?} rejected when the shard was opened"),
    }
}
