//! The `[data]` section's checks: the moving-shapes geometry, and a latents directory against
//! the model it trains.

use super::*;
use crate::dataset::DatasetManifest;

pub(super) fn check_data(c: &Config, dims: Option<&ModelDims>, files: bool, issues: &mut Issues) {
    check_data_kind(c, dims, files, issues);
    if let Some(p) = c.data.null_text.as_ref().filter(|_| files) {
        let text_shape = match c.data.kind {
            DataKind::MovingShapes => Some([c.data.text_len, c.data.text_dim]),
            DataKind::Latents => c
                .data
                .path
                .as_ref()
                .and_then(|d| DatasetManifest::read(d).ok())
                .map(|m| m.text_shape),
        };
        check_null_text(p, text_shape, issues);
    }
}

/// `data.null_text` holds a `text` tensor shaped like one of the data's prompts.
fn check_null_text(p: &std::path::Path, text_shape: Option<[i64; 2]>, issues: &mut Issues) {
    if !p.is_file() {
        return issues.push("data.null_text", format!("no such file: {}", p.display()));
    }
    let (tensors, _) = match crate::weights::source::read_header(p) {
        Ok(h) => h,
        Err(e) => return issues.push("data.null_text", e.to_string()),
    };
    match tensors.iter().find(|(k, _, _)| k == "text") {
        None => issues.push(
            "data.null_text",
            format!(
                "{}: has no `text` tensor (the null prompt's embedding [L, D])",
                p.display()
            ),
        ),
        Some((_, _, shape)) => {
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            if let Some(want) = text_shape.filter(|w| shape != w.to_vec()) {
                issues.push(
                    "data.null_text",
                    format!(
                        "{}: `text` is {shape:?}, the data's prompts are {want:?}",
                        p.display()
                    ),
                );
            }
        }
    }
}

fn check_data_kind(c: &Config, dims: Option<&ModelDims>, files: bool, issues: &mut Issues) {
    let d = &c.data;
    match d.kind {
        DataKind::MovingShapes => {
            for (key, message) in moving_shapes_geometry(d.frames, d.size) {
                issues.push(format!("data.{key}"), message);
            }
            for (key, v) in [("data.text_len", d.text_len), ("data.text_dim", d.text_dim)] {
                if !(1..=65536).contains(&v) {
                    issues.push(key, format!("must be in 1..=65536, got {v}"));
                }
            }
            for (key, v) in [
                ("data.num_samples", d.num_samples),
                ("data.shard_size", d.shard_size),
            ] {
                if !(1..=MAX_SAMPLES).contains(&v) {
                    issues.push(key, format!("must be in 1..={MAX_SAMPLES}, got {v}"));
                }
            }
            let bytes = 4.0 * 3.0 * d.frames as f64 * (d.size as f64).powi(2);
            let data_bytes = bytes * d.num_samples as f64;
            if data_bytes > MAX_DATA_BYTES {
                issues.push(
                    "data.num_samples",
                    format!(
                        "{} videos of {:.1} MiB make a {:.0} GiB data set, more than the {:.0} GiB \
                         moving-shapes generates; use fewer or smaller videos",
                        d.num_samples,
                        bytes / (1u64 << 20) as f64,
                        data_bytes / (1u64 << 30) as f64,
                        MAX_DATA_BYTES / (1u64 << 30) as f64
                    ),
                );
            }
            if let Some(dims) = dims {
                check_data_fits_model(
                    dims,
                    [3, d.frames, d.size, d.size],
                    [d.text_len, d.text_dim],
                    "data",
                    issues,
                );
            }
            // A directory generated earlier with other settings would silently be reused.
            if let Some(path) = d.path.as_ref().filter(|_| files) {
                if path.join("dataset.json").is_file() {
                    match DatasetManifest::read(path) {
                        Ok(m) => {
                            let want = [3, d.frames, d.size, d.size];
                            if m.latent_shape != want || m.text_shape != [d.text_len, d.text_dim] {
                                issues.push(
                                    "data.path",
                                    format!(
                                        "{} holds videos of shape {:?} / text {:?}, but this config asks for \
                                         {want:?} / {:?}; delete it or point data.path elsewhere",
                                        path.display(),
                                        m.latent_shape,
                                        m.text_shape,
                                        [d.text_len, d.text_dim]
                                    ),
                                );
                            }
                        }
                        Err(e) => issues.push("data.path", e.to_string()),
                    }
                }
            }
        }
        DataKind::Latents => match &d.path {
            None => issues.push(
                "data.path",
                "missing: kind = \"latents\" reads a prepared data directory",
            ),
            Some(_) if !files => {}
            Some(path) => match DatasetManifest::read(path) {
                Ok(m) => {
                    if let Some(dims) = dims {
                        check_data_fits_model(
                            dims,
                            m.latent_shape,
                            m.text_shape,
                            "data.path",
                            issues,
                        );
                    }
                }
                Err(e) => issues.push("data.path", e.to_string()),
            },
        },
    }
}

/// Most videos a moving-shapes data set has.
const MAX_SAMPLES: u64 = 10_000_000;

/// Largest moving-shapes data set (it is generated on every run's first start).
const MAX_DATA_BYTES: f64 = 256.0 * (1u64 << 30) as f64;

/// Largest moving-shapes frame side and frame count.
const MAX_SIZE: i64 = 4096;
const MAX_FRAMES: i64 = 1024;

/// Problems with a moving-shapes geometry, as (`frames` | `size`, message): the object is
/// `size/4` wide and moves `max(1, size/16)` px per frame, and must stay inside the frame.
pub fn moving_shapes_geometry(frames: i64, size: i64) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if frames < 2 {
        problems.push((
            "frames",
            format!("must be at least 2 (the shapes move), got {frames}"),
        ));
    }
    if frames > MAX_FRAMES {
        problems.push((
            "frames",
            format!("must be at most {MAX_FRAMES}, got {frames}"),
        ));
        return problems;
    }
    if size > MAX_SIZE {
        problems.push(("size", format!("must be at most {MAX_SIZE}, got {size}")));
        return problems;
    }
    if size < 8 || size % 4 != 0 {
        problems.push((
            "size",
            format!("must be a multiple of 4 and at least 8 (objects are size/4 wide), got {size}"),
        ));
    } else if frames >= 2 {
        let step = (size / 16).max(1);
        if size - size / 4 - step * (frames - 1) < 0 {
            problems.push((
                "frames",
                format!(
                    "{frames} frames at {step} px/frame carry a {}px object out of a {size}px frame; \
                     use at most {} frames or a larger size",
                    size / 4,
                    (size - size / 4) / step + 1
                ),
            ));
        }
    }
    problems
}

/// The data's latent and text shapes must fit the model's channels, patch and text width.
fn check_data_fits_model(
    dims: &ModelDims,
    latent: [i64; 4],
    text: [i64; 2],
    key: &str,
    issues: &mut Issues,
) {
    let [ch, t, h, w] = latent;
    if ch != dims.in_channels || ch != dims.out_channels {
        issues.push(
            "model.in_channels",
            format!(
                "the data has {ch} channels but the model takes {} and predicts {}",
                dims.in_channels, dims.out_channels
            ),
        );
    }
    for (name, n, p) in [
        ("frames", t, dims.patch[0]),
        ("height", h, dims.patch[1]),
        ("width", w, dims.patch[2]),
    ] {
        if n % p != 0 {
            issues.push(
                "model.patch",
                format!(
                    "{patch:?} must divide the data's {name} ({n}, from {key})",
                    patch = dims.patch
                ),
            );
        }
    }
    if text[1] != dims.text_dim {
        issues.push(
            "model.text_dim",
            format!(
                "the data's text embeddings are {} wide but the model takes {}",
                text[1], dims.text_dim
            ),
        );
    }
    if text[0] > dims.text_len {
        issues.push(
            "model.text_len",
            format!(
                "the data has {} text tokens, more than the model's {}",
                text[0], dims.text_len
            ),
        );
    }
}
