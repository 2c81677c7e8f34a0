//! Files people look at: `.npy` arrays, animated GIFs and PNG grids of videos, and charts
//! (`plot`). Shared by the worker (samples, the importance chart) and the report.

pub mod npy;
pub mod plot;

use std::path::Path;

/// Nearest-neighbour upscaling of one RGB frame [H, W, 3] by `k`.
fn upscale(frame: &[u8], h: usize, w: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; h * k * w * k * 3];
    for r in 0..h * k {
        for c in 0..w * k {
            let src = ((r / k) * w + c / k) * 3;
            let dst = (r * w * k + c) * 3;
            out[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
        }
    }
    out
}

/// Writes a looping GIF of one video [T, H, W, 3], each pixel drawn `scale` x `scale`.
pub fn write_gif(
    path: &Path,
    video: &[u8],
    frames: usize,
    h: usize,
    w: usize,
    scale: usize,
) -> std::io::Result<()> {
    let per = h * w * 3;
    let big: Vec<Vec<u8>> = (0..frames)
        .map(|t| upscale(&video[t * per..(t + 1) * per], h, w, scale))
        .collect();
    write_frames_gif(path, &big, h * scale, w * scale)
}

/// Writes a looping GIF of RGB frames of `h` x `w` pixels.
pub fn write_frames_gif(
    path: &Path,
    frames: &[Vec<u8>],
    h: usize,
    w: usize,
) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let (hh, ww) = (h as u16, w as u16);
    let mut enc = gif::Encoder::new(file, ww, hh, &[]).map_err(std::io::Error::other)?;
    enc.set_repeat(gif::Repeat::Infinite)
        .map_err(std::io::Error::other)?;
    for f in frames {
        let mut frame = gif::Frame::from_rgb_speed(ww, hh, f, 10);
        frame.delay = 15; // 150 ms: an 8-frame clip loops in about a second
        enc.write_frame(&frame).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Writes a PNG grid: one row per video, one column per frame, 1-pixel grey gutters.
/// `videos` is [N, T, H, W, 3].
pub fn write_grid_png(
    path: &Path,
    videos: &[u8],
    n: usize,
    frames: usize,
    h: usize,
    w: usize,
    scale: usize,
) -> std::io::Result<()> {
    let (ch, cw) = (h * scale + 1, w * scale + 1);
    let (height, width) = (n * ch + 1, frames * cw + 1);
    let mut img = vec![64u8; height * width * 3];
    let per = h * w * 3;
    for i in 0..n {
        for t in 0..frames {
            let at = (i * frames + t) * per;
            let big = upscale(&videos[at..at + per], h, w, scale);
            for r in 0..h * scale {
                let dst = ((i * ch + 1 + r) * width + t * cw + 1) * 3;
                img[dst..dst + w * scale * 3]
                    .copy_from_slice(&big[r * w * scale * 3..(r + 1) * w * scale * 3]);
            }
        }
    }
    write_png(path, &img, height, width)
}

/// Writes an RGB image of `h` x `w` pixels as PNG.
pub fn write_png(path: &Path, img: &[u8], height: usize, width: usize) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .map_err(std::io::Error::other)?
        .write_image_data(img)
        .map_err(std::io::Error::other)
}
