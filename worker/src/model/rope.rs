//! 3-D rotary position embedding over (frame, height, width), as in Wan 2.1.
//!
//! A head of width d is seen as c = d/2 pairs; the first c - 2(c/3) pairs rotate with the
//! frame index, the next c/3 with the row, the last c/3 with the column. Each part uses the
//! usual frequencies `10000^(-2i/n)` of its own width n. Applied to q and k of self-attention.

use flg_core::config::ModelDims;
use tch::{Device, Kind, Tensor};

pub struct Rope {
    /// [N, 1, c] cosines and sines, N = tokens in (frame, row, column) order.
    cos: Tensor,
    sin: Tensor,
}

/// Angles [len, n/2] for positions 0..len of a part of width n (real dims).
fn angles(len: i64, n: i64, device: Device) -> Tensor {
    let inv = (Tensor::arange_start_step(0, n, 2, (Kind::Double, device)) / n as f64
        * -(10000f64.ln()))
    .exp();
    Tensor::arange(len, (Kind::Double, device)).unsqueeze(1) * inv.unsqueeze(0)
}

impl Rope {
    pub fn new(dims: &ModelDims, grid: [i64; 3], device: Device) -> Rope {
        let c = dims.dim / dims.num_heads / 2;
        let parts = [c - 2 * (c / 3), c / 3, c / 3];
        let [f, h, w] = grid;
        let af = angles(f, 2 * parts[0], device)
            .view([f, 1, 1, parts[0]])
            .expand([f, h, w, parts[0]], false);
        let ah = angles(h, 2 * parts[1], device)
            .view([1, h, 1, parts[1]])
            .expand([f, h, w, parts[1]], false);
        let aw = angles(w, 2 * parts[2], device)
            .view([1, 1, w, parts[2]])
            .expand([f, h, w, parts[2]], false);
        let a = Tensor::cat(&[af, ah, aw], 3).reshape([f * h * w, 1, c]);
        Rope {
            cos: a.cos().to_kind(Kind::Float),
            sin: a.sin().to_kind(Kind::Float),
        }
    }

    /// Rotates x [B, N, heads, d] pairwise: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let pairs = x.view([s[0], s[1], s[2], s[3] / 2, 2]);
        let x0 = pairs.select(4, 0);
        let x1 = pairs.select(4, 1);
        let cos = self.cos.to_kind(x.kind());
        let sin = self.sin.to_kind(x.kind());
        let r0 = &x0 * &cos - &x1 * &sin;
        let r1 = &x0 * &sin + &x1 * &cos;
        Tensor::stack(&[r0, r1], 4).view([s[0], s[1], s[2], s[3]])
    }
}
