//! Scores generated moving-shapes videos against the data set's definition, VBench-style.
//!
//! Each frame is read the way the definition draws it: pixels with a channel >= 128 are "lit";
//! the best placement of a square or disk template of side `S/4` is the detected object
//! (largest IoU with the lit pixels); its colour is the nearest of the four colours to the lit
//! pixels' mean. A frame counts as *detected* when that IoU is at least 0.5. Scores, each in
//! [0, 1] and averaged over videos:
//! - `prompt_following`: share of frames whose detected shape and colour are the label's;
//! - `frame_quality`: mean best IoU (one clean object of the right size and shape scores 1);
//! - `background`: share of pixels outside the object that are dark (every channel < 48);
//! - `motion_smoothness`: over frame triples all detected, `exp(-|p[t+1] - 2p[t] + p[t-1]|/step)`
//!   (constant velocity scores 1), undetected triples score 0;
//! - `subject_consistency`: share of frames after the first that are detected with the video's
//!   majority shape and colour;
//! - `dynamic_degree`: share of videos detected in every frame whose object travels at least
//!   half of `step * (T - 1)`.
//!
//! Plus the Fréchet distance between Gaussian fits of per-video features (colour, shape, area,
//! velocity, position, quality, smoothness) of the generated videos and of real videos drawn
//! from the definition.

use crate::data::shapes::{self, ShapesSpec, COLOURS};
pub use flg_core::formats::eval::{EvalReport, Scores, SCORES};
use tch::{Kind, Tensor};

/// Lit threshold and dark threshold on the brightest channel.
const LIT: u8 = 128;
const DARK: u8 = 48;
const DETECTED_IOU: f64 = 0.5;

/// What one frame shows.
#[derive(Clone, Copy, Debug)]
struct FrameRead {
    shape: u32,
    colour: Option<u32>,
    /// Top-left corner (x, y) of the best placement.
    pos: (i64, i64),
    iou: f64,
    /// Share of non-object pixels that are dark.
    background: f64,
    /// Lit pixels inside the placement.
    area: usize,
    mean_rgb: [f64; 3],
}

impl FrameRead {
    fn detected(&self) -> bool {
        self.iou >= DETECTED_IOU
    }
}

fn read_frame(px: &[u8], s: usize, masks: &[Vec<bool>; 2]) -> FrameRead {
    let o = s / 4;
    let lit: Vec<bool> = px
        .chunks_exact(3)
        .map(|c| c.iter().copied().max().unwrap() >= LIT)
        .collect();
    let n_lit = lit.iter().filter(|&&l| l).count();
    let mut best = (0u32, (0i64, 0i64), -1.0f64);
    for (shape, mask) in masks.iter().enumerate() {
        let n_mask = mask.iter().filter(|&&m| m).count();
        for y in 0..=s - o {
            for x in 0..=s - o {
                let mut inter = 0;
                for (k, &m) in mask.iter().enumerate() {
                    if m && lit[(y + k / o) * s + x + k % o] {
                        inter += 1;
                    }
                }
                let iou = inter as f64 / (n_lit + n_mask - inter) as f64;
                if iou > best.2 {
                    best = (shape as u32, (x as i64, y as i64), iou);
                }
            }
        }
    }
    let (shape, pos, iou) = best;
    let (x, y) = (pos.0 as usize, pos.1 as usize);
    let inside = |r: usize, c: usize| {
        r >= y && r < y + o && c >= x && c < x + o && masks[shape as usize][(r - y) * o + c - x]
    };
    let (mut sum, mut area, mut dark, mut outside) = ([0f64; 3], 0usize, 0usize, 0usize);
    for r in 0..s {
        for c in 0..s {
            let p = &px[(r * s + c) * 3..(r * s + c) * 3 + 3];
            if inside(r, c) {
                if lit[r * s + c] {
                    area += 1;
                    for k in 0..3 {
                        sum[k] += p[k] as f64;
                    }
                }
            } else {
                outside += 1;
                if p.iter().all(|&v| v < DARK) {
                    dark += 1;
                }
            }
        }
    }
    let mean_rgb = if area > 0 {
        sum.map(|v| v / area as f64)
    } else {
        [0.0; 3]
    };
    let colour = (area > 0).then(|| {
        (0..4u32)
            .min_by(|&a, &b| {
                let d = |k: u32| {
                    (0..3)
                        .map(|i| (mean_rgb[i] - COLOURS[k as usize][i] as f64).powi(2))
                        .sum::<f64>()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap()
    });
    FrameRead {
        shape,
        colour,
        pos,
        iou: iou.max(0.0),
        background: dark as f64 / outside.max(1) as f64,
        area,
        mean_rgb,
    }
}

/// Per-video scores and features.
struct VideoRead {
    scores: [f64; 6],
    features: Vec<f64>,
    /// Signs of the displacement from the first to the last frame, when both are detected
    /// and the object moved.
    direction: Option<(i64, i64)>,
}

fn read_video(video: &[u8], label: i64, t: usize, s: usize, masks: &[Vec<bool>; 2]) -> VideoRead {
    let per = s * s * 3;
    let frames: Vec<FrameRead> = (0..t)
        .map(|i| read_frame(&video[i * per..(i + 1) * per], s, masks))
        .collect();
    let (want_shape, want_colour) = shapes::class_parts(label as u32);
    let step = (s as i64 / 16).max(1) as f64;
    let mean = |f: &dyn Fn(&FrameRead) -> f64| frames.iter().map(f).sum::<f64>() / t as f64;

    let prompt = mean(&|f| (f.shape == want_shape && f.colour == Some(want_colour)) as u8 as f64);
    let quality = mean(&|f| f.iou);
    let background = mean(&|f| f.background);
    let smooth = if t >= 3 {
        frames
            .windows(3)
            .map(|w| {
                if w.iter().all(FrameRead::detected) {
                    let ax = w[2].pos.0 - 2 * w[1].pos.0 + w[0].pos.0;
                    let ay = w[2].pos.1 - 2 * w[1].pos.1 + w[0].pos.1;
                    (-((ax.abs() + ay.abs()) as f64) / step).exp()
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / (t - 2) as f64
    } else {
        0.0
    };
    // The video's majority (shape, colour) among detected frames.
    let mut counts = std::collections::HashMap::new();
    for f in frames.iter().filter(|f| f.detected()) {
        *counts.entry((f.shape, f.colour)).or_insert(0) += 1;
    }
    let majority = counts
        .into_iter()
        .max_by_key(|&(k, c)| (c, k))
        .map(|(k, _)| k);
    let consistency = frames[1..]
        .iter()
        .filter(|f| f.detected() && Some((f.shape, f.colour)) == majority)
        .count() as f64
        / (t - 1).max(1) as f64;
    let travel = {
        let (a, b) = (frames[0].pos, frames[t - 1].pos);
        (b.0 - a.0).abs().max((b.1 - a.1).abs()) as f64
    };
    let dynamic = (frames.iter().all(FrameRead::detected) && travel >= step * (t - 1) as f64 / 2.0)
        as u8 as f64;

    let o2 = ((s / 4) * (s / 4)) as f64;
    let (first, last) = (frames[0].pos, frames[t - 1].pos);
    let features = vec![
        mean(&|f| f.mean_rgb[0] / 255.0),
        mean(&|f| f.mean_rgb[1] / 255.0),
        mean(&|f| f.mean_rgb[2] / 255.0),
        mean(&|f| f.shape as f64),
        mean(&|f| f.area as f64 / o2),
        (last.0 - first.0) as f64 / ((t - 1) as f64 * step),
        (last.1 - first.1) as f64 / ((t - 1) as f64 * step),
        mean(&|f| f.pos.0 as f64 / s as f64),
        mean(&|f| f.pos.1 as f64 / s as f64),
        quality,
        smooth,
    ];
    let direction = (frames[0].detected() && frames[t - 1].detected() && travel > 0.0)
        .then(|| ((last.0 - first.0).signum(), (last.1 - first.1).signum()));
    VideoRead {
        direction,
        scores: [prompt, quality, background, smooth, consistency, dynamic],
        features,
    }
}

/// Fréchet distance between Gaussian fits of two feature sets (rows are samples).
pub fn frechet_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let fit = |x: &[Vec<f64>]| {
        let rows: Vec<f64> = x.iter().flatten().copied().collect();
        let m = Tensor::from_slice(&rows).view([x.len() as i64, x[0].len() as i64]);
        let mu = m.mean_dim(0, false, Kind::Double);
        let c = &m - &mu;
        let cov = c.transpose(0, 1).matmul(&c) / (x.len().max(2) - 1) as f64;
        (
            mu,
            cov + Tensor::eye(x[0].len() as i64, (Kind::Double, tch::Device::Cpu)) * 1e-9,
        )
    };
    let (mu1, s1) = fit(a);
    let (mu2, s2) = fit(b);
    // Tr sqrt(S1 S2) = Tr sqrt(R S2 R) with R = sqrt(S1), symmetric PSD so eigh applies.
    let psd_sqrt = |m: &Tensor| {
        let (w, v) = m.linalg_eigh("L");
        v.matmul(&w.clamp_min(0.0).sqrt().diag_embed(0, -2, -1))
            .matmul(&v.transpose(0, 1))
    };
    let r = psd_sqrt(&s1);
    let cross = psd_sqrt(&r.matmul(&s2).matmul(&r));
    let diff = (&mu1 - &mu2).square().sum(Kind::Double).double_value(&[]);
    let tr = (&s1 + &s2 - cross * 2.0).trace().double_value(&[]);
    (diff + tr).max(0.0)
}

/// Real videos from the definition, for the Fréchet reference (fixed seed).
fn reference_features(t: usize, s: usize, n: usize, masks: &[Vec<bool>; 2]) -> Vec<Vec<f64>> {
    let spec = ShapesSpec {
        frames: t,
        size: s,
        text_len: 1,
        text_dim: 1,
        seed: 0xE7A1,
        text_seed: 0,
    };
    (0..n as u64)
        .map(|i| {
            let v = shapes::generate(&spec, i);
            read_video(&v.pixels, i64::from(v.class), t, s, masks).features
        })
        .collect()
}

/// Distinct motion directions per class, mean over the classes present.
fn directions_per_class(reads: &[VideoRead], labels: &[i64]) -> f64 {
    let mut by_class: std::collections::BTreeMap<i64, std::collections::BTreeSet<(i64, i64)>> =
        Default::default();
    for (r, &l) in reads.iter().zip(labels) {
        let set = by_class.entry(l).or_default();
        if let Some(d) = r.direction {
            set.insert(d);
        }
    }
    let classes = by_class.len().max(1) as f64;
    by_class.values().map(|s| s.len() as f64).sum::<f64>() / classes
}

/// Scores videos [N, T, S, S, 3] with their labels.
pub fn evaluate(videos: &[u8], labels: &[i64], t: usize, s: usize) -> EvalReport {
    let n = labels.len();
    let masks = [shapes::object_mask(0, s / 4), shapes::object_mask(1, s / 4)];
    let per = t * s * s * 3;
    let reads: Vec<VideoRead> = (0..n)
        .map(|i| read_video(&videos[i * per..(i + 1) * per], labels[i], t, s, &masks))
        .collect();
    let mut sums = [0f64; 6];
    for r in &reads {
        for (k, v) in r.scores.iter().enumerate() {
            sums[k] += v;
        }
    }
    let m = sums.map(|v| v / n.max(1) as f64);
    let scores = Scores {
        prompt_following: m[0],
        frame_quality: m[1],
        background: m[2],
        motion_smoothness: m[3],
        subject_consistency: m[4],
        dynamic_degree: m[5],
    };
    let reference = reference_features(t, s, n.max(256), &masks);
    let directions_per_class = Some(directions_per_class(&reads, labels));
    let generated: Vec<Vec<f64>> = reads.into_iter().map(|r| r.features).collect();
    EvalReport {
        directions_per_class,
        num_videos: n,
        frames: t,
        size: s,
        average: scores.average(),
        scores,
        frechet_distance: frechet_distance(&generated, &reference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(n: u64, t: usize, s: usize, seed: u64) -> (Vec<u8>, Vec<i64>) {
        let spec = ShapesSpec {
            frames: t,
            size: s,
            text_len: 1,
            text_dim: 1,
            seed,
            text_seed: 0,
        };
        let vids: Vec<_> = (0..n).map(|i| shapes::generate(&spec, i)).collect();
        (
            vids.iter().flat_map(|v| v.pixels.clone()).collect(),
            vids.iter().map(|v| i64::from(v.class)).collect(),
        )
    }

    #[test]
    fn real_videos_score_near_one() {
        for (t, s) in [(8, 16), (6, 32)] {
            let (px, labels) = real(64, t, s, 77);
            let r = evaluate(&px, &labels, t, s);
            for (name, v) in r.scores.named() {
                assert!(v > 0.99, "{name} = {v} on real {t}x{s} data");
            }
            assert!(
                r.frechet_distance < 0.2,
                "FD {} on real data",
                r.frechet_distance
            );
        }
    }

    #[test]
    fn noise_and_blank_videos_score_near_zero() {
        let (t, s, n) = (8usize, 16usize, 64usize);
        tch::manual_seed(0);
        let noise = ((Tensor::randn(
            [(n * t * s * s * 3) as i64],
            (Kind::Float, tch::Device::Cpu),
        )
        .clamp(-1.0, 1.0)
            + 1.0)
            * 127.5)
            .to_kind(Kind::Uint8);
        let noise = Vec::<u8>::try_from(noise).unwrap();
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 8).collect();
        let r = evaluate(&noise, &labels, t, s);
        assert!(
            r.average < 0.1,
            "noise average {} {:?}",
            r.average,
            r.scores
        );
        let blank = vec![0u8; n * t * s * s * 3];
        let r_blank = evaluate(&blank, &labels, t, s);
        // A black video has a clean background and nothing else.
        assert!(r_blank.scores.prompt_following == 0.0 && r_blank.scores.dynamic_degree == 0.0);
        assert!(r_blank.average < 0.2, "{:?}", r_blank.scores);
        let (px, labels) = real(64, t, s, 3);
        let good = evaluate(&px, &labels, t, s);
        assert!(r.frechet_distance > 10.0 * good.frechet_distance.max(0.01));
    }

    #[test]
    fn directions_per_class_count_the_variety_of_motion() {
        let (t, s) = (8usize, 16usize);
        let (px, labels) = real(256, t, s, 9);
        let r = evaluate(&px, &labels, t, s);
        // 32 videos per class, 8 directions each drawn uniformly: almost all seen.
        let dirs = r.directions_per_class.unwrap();
        assert!(dirs > 7.0, "{dirs}");
        // Every video of a class replaced by that class's first video: one direction each.
        let per = t * s * s * 3;
        let mut first = std::collections::HashMap::new();
        let mut same = Vec::with_capacity(px.len());
        for (i, &l) in labels.iter().enumerate() {
            let j = *first.entry(l).or_insert(i);
            same.extend_from_slice(&px[j * per..(j + 1) * per]);
        }
        let one = evaluate(&same, &labels, t, s);
        assert_eq!(one.directions_per_class, Some(1.0));
        // Still videos (every frame the first one): none.
        let mut still = Vec::with_capacity(px.len());
        for i in 0..labels.len() {
            for _ in 0..t {
                still.extend_from_slice(&px[i * per..i * per + s * s * 3]);
            }
        }
        assert_eq!(
            evaluate(&still, &labels, t, s).directions_per_class,
            Some(0.0)
        );
    }

    #[test]
    fn wrong_labels_lower_only_prompt_following() {
        let (px, labels) = real(64, 8, 16, 5);
        let shifted: Vec<i64> = labels.iter().map(|l| (l + 1) % 8).collect();
        let r = evaluate(&px, &shifted, 8, 16);
        assert!(r.scores.prompt_following < 0.01);
        assert!(r.scores.frame_quality > 0.99 && r.scores.motion_smoothness > 0.99);
    }

    #[test]
    fn frechet_distance_of_shifted_gaussians_is_the_squared_shift() {
        tch::manual_seed(4);
        let a: Vec<Vec<f64>> = (0..4000)
            .map(|_| vec![0.0, 0.0])
            .map(|_| {
                let t = Tensor::randn([2], (Kind::Double, tch::Device::Cpu));
                vec![t.double_value(&[0]), t.double_value(&[1])]
            })
            .collect();
        let b: Vec<Vec<f64>> = a.iter().map(|v| vec![v[0] + 3.0, v[1]]).collect();
        let fd = frechet_distance(&a, &b);
        assert!((fd - 9.0).abs() < 0.05, "{fd}");
    }
}
