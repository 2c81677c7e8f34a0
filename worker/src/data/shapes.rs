//! The synthetic `moving-shapes` data set, exactly as docs/architecture.md defines it.
//!
//! A video is T frames of S x S RGB pixels on black: one object of side `o = S/4`, a filled
//! square (shape 0) or a filled disk (shape 1), in one of four colours, moving at a constant
//! velocity `step * (a, b)` with `(a, b)` one of the 8 directions and `step = max(1, S/16)`,
//! never leaving the frame. `class = shape * 4 + colour`. Each class's "prompt" is a fixed
//! normal table [8, L, D]; the null prompt is zeros.
//!
//! Video `i` of a data set depends only on `(seed, i)`, so any subset can be regenerated and
//! the evaluator can rebuild the exact definition from a class, an origin and a velocity.

use crate::rng::Rng;

pub const NUM_CLASSES: u32 = 8;
pub const NUM_SHAPES: u32 = 2;
pub const COLOURS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
/// The 8 unit directions (a, b) in {-1, 0, 1}^2 without (0, 0); a is horizontal (x), b vertical (y).
pub const DIRECTIONS: [(i64, i64); 8] = [
    (-1, -1),
    (0, -1),
    (1, -1),
    (-1, 0),
    (1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

/// Stream tag for the per-video generator, so video streams never meet other streams.
const VIDEO_STREAM: u64 = 0x5649_4445_4f00_0000; // "VIDEO"

/// What a moving-shapes data set is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapesSpec {
    pub frames: usize,
    pub size: usize,
    pub text_len: usize,
    pub text_dim: usize,
    pub seed: u64,
    pub text_seed: u64,
}

impl ShapesSpec {
    /// The small set unit tests write: 8 frames of 16 x 16, prompts of 4 x 32.
    #[cfg(test)]
    pub fn for_tests() -> ShapesSpec {
        ShapesSpec {
            frames: 8,
            size: 16,
            text_len: 4,
            text_dim: 32,
            seed: 3,
            text_seed: 5,
        }
    }

    /// Side of the object's box in pixels.
    pub fn object_side(&self) -> usize {
        self.size / 4
    }

    /// Pixels moved per frame along each moving axis.
    pub fn step(&self) -> i64 {
        (self.size as i64 / 16).max(1)
    }
}

/// Class id -> (shape, colour).
pub fn class_parts(class: u32) -> (u32, u32) {
    (class / 4, class % 4)
}

/// One generated video and the parameters that define it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeVideo {
    pub class: u32,
    /// Velocity (vx, vy) in pixels per frame.
    pub velocity: (i64, i64),
    /// Top-left corner (x0, y0) of the object's box in frame 0.
    pub origin: (i64, i64),
    /// Pixels, uint8, [T, S, S, 3] (frame, row, column, RGB).
    pub pixels: Vec<u8>,
}

/// Whether pixel (i, j) (row, column) of the object's o x o box is on, for a shape.
pub fn object_mask(shape: u32, o: usize) -> Vec<bool> {
    let c = (o as f64 - 1.0) / 2.0;
    let r2 = (o as f64 / 2.0).powi(2);
    (0..o * o)
        .map(|k| {
            let (i, j) = ((k / o) as f64, (k % o) as f64);
            shape == 0 || (i - c).powi(2) + (j - c).powi(2) <= r2
        })
        .collect()
}

/// The range of integer start positions on one axis that keeps the box inside for all frames.
fn start_range(size: usize, o: usize, v: i64, frames: usize) -> (i64, i64) {
    let travel = v * (frames as i64 - 1);
    let lo = (-travel).max(0);
    let hi = size as i64 - o as i64 - travel.max(0);
    (lo, hi)
}

/// Draws the parameters of video `index` and renders it.
pub fn generate(spec: &ShapesSpec, index: u64) -> ShapeVideo {
    let class = (index % u64::from(NUM_CLASSES)) as u32; // balanced classes; order is shuffled later
    let mut rng = Rng::derive(spec.seed, &[VIDEO_STREAM, index]);
    let (a, b) = DIRECTIONS[rng.below(8) as usize];
    let velocity = (a * spec.step(), b * spec.step());
    let o = spec.object_side();
    let (xlo, xhi) = start_range(spec.size, o, velocity.0, spec.frames);
    let (ylo, yhi) = start_range(spec.size, o, velocity.1, spec.frames);
    assert!(
        xlo <= xhi && ylo <= yhi,
        "the config check keeps objects inside the frame"
    );
    let x0 = xlo + rng.below((xhi - xlo + 1) as u64) as i64;
    let y0 = ylo + rng.below((yhi - ylo + 1) as u64) as i64;
    let pixels = render(spec, class, (x0, y0), velocity);
    ShapeVideo {
        class,
        velocity,
        origin: (x0, y0),
        pixels,
    }
}

/// Renders the video of a class starting at `origin` with `velocity`: [T, S, S, 3] uint8.
/// Parts of the box outside the frame are clipped (generated videos never have any).
pub fn render(spec: &ShapesSpec, class: u32, origin: (i64, i64), velocity: (i64, i64)) -> Vec<u8> {
    let (s, o) = (spec.size, spec.object_side());
    let (shape, colour) = class_parts(class);
    let mask = object_mask(shape, o);
    let rgb = COLOURS[colour as usize];
    let mut px = vec![0u8; spec.frames * s * s * 3];
    for t in 0..spec.frames {
        let x = origin.0 + velocity.0 * t as i64;
        let y = origin.1 + velocity.1 * t as i64;
        for (k, &on) in mask.iter().enumerate() {
            let (row, col) = (y + (k / o) as i64, x + (k % o) as i64);
            if on && (0..s as i64).contains(&row) && (0..s as i64).contains(&col) {
                let at = ((t * s + row as usize) * s + col as usize) * 3;
                px[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }
    px
}

/// Pixels [T, S, S, 3] uint8 -> model input [3, T, S, S] in [-1, 1] (`x / 127.5 - 1`).
pub fn pixels_to_latents(pixels: &[u8], frames: usize, size: usize) -> Vec<f32> {
    let plane = frames * size * size;
    let mut out = vec![0f32; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            out[c * plane + p] = pixels[p * 3 + c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

/// Model output [3, T, S, S] (any real values) -> pixels [T, S, S, 3] uint8, clamped.
pub fn latents_to_pixels(latents: &[f32], frames: usize, size: usize) -> Vec<u8> {
    let plane = frames * size * size;
    let mut out = vec![0u8; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            let v = (latents[c * plane + p] + 1.0) * 127.5;
            out[p * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// The fixed class-embedding table, [8, L, D] row-major, drawn from `text_seed`.
pub fn text_table(spec: &ShapesSpec) -> Vec<f32> {
    let mut rng = Rng::derive(spec.text_seed, &[0x5445_5854]); // "TEXT"
    (0..NUM_CLASSES as usize * spec.text_len * spec.text_dim)
        .map(|_| rng.normal() as f32)
        .collect()
}

#[cfg(test)]
mod tests;
