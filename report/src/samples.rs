//! The samples picture: the eval rows' videos side by side, as an animated GIF and a still.

use anyhow::{anyhow, Result};
use flg_core::run_dir::sample_files;
use flg_core::RunDir;
use flg_media::npy;
use std::path::Path;

/// One animated GIF: a row per model (`rows`), a column per video, the same videos (prompt and
/// noise) in every row. Returns the number of columns.
pub fn side_by_side_gif(
    run_dir: &RunDir,
    rows: &[&str],
    out: &Path,
    columns: usize,
) -> Result<usize> {
    let mut videos = Vec::new();
    let mut shape = Vec::new();
    for r in rows {
        let p = run_dir.samples(r).join(sample_files::VIDEOS);
        let (s, v) = npy::read_u8(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if !shape.is_empty() && s != shape {
            anyhow::bail!(
                "{}: videos of shape {s:?}, the others {shape:?}",
                p.display()
            );
        }
        shape = s;
        videos.push(v);
    }
    let [n, t, h, w, _] = shape[..] else {
        anyhow::bail!("samples of shape {shape:?}, expected [N, T, H, W, 3]");
    };
    let cols = columns.min(n);
    let (gap, scale) = (2usize, 4usize);
    let (th, tw) = (h * scale, w * scale);
    let (height, width) = (rows.len() * (th + gap) + gap, cols * (tw + gap) + gap);
    let mut frames = Vec::with_capacity(t);
    for f in 0..t {
        let mut img = vec![96u8; height * width * 3];
        for (ri, v) in videos.iter().enumerate() {
            for c in 0..cols {
                let frame = &v[((c * t + f) * h * w * 3)..((c * t + f + 1) * h * w * 3)];
                for y in 0..th {
                    for x in 0..tw {
                        let src = ((y / scale) * w + x / scale) * 3;
                        let dy = gap + ri * (th + gap) + y;
                        let dx = gap + c * (tw + gap) + x;
                        let dst = (dy * width + dx) * 3;
                        img[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
                    }
                }
            }
        }
        frames.push(img);
    }
    flg_media::write_frames_gif(out, &frames, height, width)?;
    // A still for readers whose viewer does not animate: first, middle and last frame.
    let picks = [0, t / 2, t - 1];
    let sep = 12;
    let still_w = picks.len() * width + (picks.len() - 1) * sep;
    let mut still = vec![255u8; height * still_w * 3];
    for (k, &f) in picks.iter().enumerate() {
        for y in 0..height {
            let dst = (y * still_w + k * (width + sep)) * 3;
            still[dst..dst + width * 3]
                .copy_from_slice(&frames[f][y * width * 3..(y + 1) * width * 3]);
        }
    }
    flg_media::write_png(&out.with_extension("png"), &still, height, still_w)?;
    Ok(cols)
}
