//! Generating videos from a model and writing them for people and for `eval`.

use crate::data::shapes::{self, ShapesSpec};
use crate::flow;
use crate::model::file::Prompts;
use crate::model::Dit;
use crate::rng::Rng;
use anyhow::Result;
use flg_core::run_dir::sample_files;
use flg_media::npy;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Stream tags of the per-video initial noise and of the re-noising sampler's fresh noise.
const NOISE_STREAM: u64 = 0x4e4f_4953_45; // "NOISE"
const RENOISE_STREAM: u64 = 0x5245_4e4f; // "RENO"

/// The prompt embeddings [N, L, D] of class labels, from the model's moving-shapes table.
pub fn class_text(prompts: &Prompts, labels: &[i64]) -> Tensor {
    let spec = ShapesSpec {
        frames: prompts.shapes.frames as usize,
        size: prompts.shapes.size as usize,
        text_len: prompts.text_len as usize,
        text_dim: prompts.text_dim as usize,
        seed: prompts.shapes.seed,
        text_seed: prompts.shapes.text_seed,
    };
    let table = Tensor::from_slice(&shapes::text_table(&spec)).view([
        8,
        prompts.text_len,
        prompts.text_dim,
    ]);
    table.index_select(0, &Tensor::from_slice(labels))
}

/// Initial noise for videos `0..n` of shape `shape` [C, T, H, W]: video i's noise depends only
/// on `(seed, i)`, so two models sampled with the same seed start from the same noise.
pub fn initial_noise(n: usize, shape: [i64; 4], seed: u64) -> Tensor {
    let videos: Vec<Tensor> = (0..n as u64)
        .map(|i| {
            tch::manual_seed((Rng::derive(seed, &[NOISE_STREAM, i]).next_u64() >> 1) as i64);
            Tensor::randn(shape, (Kind::Float, Device::Cpu))
        })
        .collect();
    Tensor::stack(&videos, 0)
}

/// The fresh noise the re-noising sampler puts on the prediction of step `j` for videos
/// `first..first + n`: video i's depends only on `(seed, i, j)`, like its initial noise.
pub fn renoise_noise(first: usize, n: usize, shape: [i64; 4], seed: u64, j: usize) -> Tensor {
    let videos: Vec<Tensor> = (first as u64..(first + n) as u64)
        .map(|i| {
            tch::manual_seed(
                (Rng::derive(seed, &[RENOISE_STREAM, i, j as u64]).next_u64() >> 1) as i64,
            );
            Tensor::randn(shape, (Kind::Float, Device::Cpu))
        })
        .collect();
    Tensor::stack(&videos, 0)
}

/// How videos are sampled: the time grid (from 1 to 0), the CFG scale and the prompt it
/// contrasts with, the step rule, and the seed of the re-noising sampler's fresh noise.
#[derive(Clone, Debug)]
pub struct Sampling {
    pub times: Vec<f64>,
    pub cfg: f64,
    pub null: flow::NullPrompt,
    pub kind: flow::SamplerKind,
    pub seed: u64,
}

/// Samples the videos for `text` from `noise` with `how`, `batch` videos at a time; `first` is
/// the global index of the first video (it keys the fresh noise of re-noising steps). Returns
/// the latents [N, C, T, H, W] and the seconds spent sampling.
pub fn generate(
    model: &Dit,
    noise: &Tensor,
    text: &Tensor,
    how: &Sampling,
    first: usize,
    batch: usize,
) -> (Tensor, f64) {
    let n = noise.size()[0];
    let s = noise.size();
    let shape = [s[1], s[2], s[3], s[4]];
    let device = noise.device();
    // The fresh noise is drawn before the clock starts: it is the same work for every model.
    let fresh: Vec<Vec<Tensor>> = if how.kind == flow::SamplerKind::Renoise {
        (0..how.times.len().saturating_sub(2))
            .map(|j| {
                let all = renoise_noise(first, n as usize, shape, how.seed, j).to_device(device);
                (0..n)
                    .step_by(batch)
                    .map(|i| all.narrow(0, i, (batch as i64).min(n - i)))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let v = |x: &Tensor, t: &Tensor, c: &Tensor| model.forward(x, t, c, None);
    let outs: Vec<Tensor> = (0..n)
        .step_by(batch)
        .enumerate()
        .map(|(chunk, i)| {
            let len = (batch as i64).min(n - i);
            flow::sample(
                &v,
                &noise.narrow(0, i, len),
                &text.narrow(0, i, len),
                &how.null,
                &how.times,
                how.cfg,
                how.kind,
                &|j| fresh[j][chunk].shallow_clone(),
            )
        })
        .collect();
    (Tensor::cat(&outs, 0), start.elapsed().as_secs_f64())
}

/// Latents [N, 3, T, S, S] in [-1, 1] -> uint8 videos [N, T, S, S, 3].
pub fn to_pixels(latents: &Tensor) -> (Vec<u8>, [usize; 4]) {
    let s = latents.size();
    let (n, t, h, w) = (s[0] as usize, s[2] as usize, s[3] as usize, s[4] as usize);
    let px = ((latents.clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 4, 1])
        .contiguous();
    (
        Vec::<u8>::try_from(px.view(-1)).expect("uint8"),
        [n, t, h, w],
    )
}

/// Writes `videos.npy`, `labels.npy`, a GIF per video and `grid.png` (up to 16 videos) to `dir`.
pub fn write_samples(dir: &Path, pixels: &[u8], shape: [usize; 4], labels: &[i64]) -> Result<()> {
    let [n, t, h, w] = shape;
    std::fs::create_dir_all(dir)?;
    npy::write_u8(&dir.join(sample_files::VIDEOS), &[n, t, h, w, 3], pixels)?;
    npy::write_i64(&dir.join(sample_files::LABELS), labels)?;
    let per = t * h * w * 3;
    let scale = (128 / h.max(w)).max(1);
    for i in 0..n {
        flg_media::write_gif(
            &dir.join(format!("video-{i:04}-class{}.gif", labels[i])),
            &pixels[i * per..(i + 1) * per],
            t,
            h,
            w,
            scale,
        )?;
    }
    flg_media::write_grid_png(
        &dir.join(sample_files::GRID),
        pixels,
        n.min(16),
        t,
        h,
        w,
        (scale / 2).max(1),
    )?;
    Ok(())
}

/// Labels for `n` videos: the given list repeated, or the 8 classes cycled.
pub fn labels_for(n: usize, given: &[i64]) -> Vec<i64> {
    let src: Vec<i64> = if given.is_empty() {
        (0..8).collect()
    } else {
        given.to_vec()
    };
    (0..n).map(|i| src[i % src.len()]).collect()
}
