//! Models the library's tests and test binaries share (not for production use).

use crate::model::Dit;

/// A 4-block tiny model whose output head is not zero (as `Dit::init` leaves it), so that
/// its outputs, and the gradients through them, are not all zero.
pub fn live_model() -> Dit {
    let mut dims = flg_core::config::preset("tiny").expect("the tiny preset");
    dims.num_blocks = 4;
    let m = Dit::init(&dims, 3);
    let _ = m
        .stem
        .p("head.head.weight")
        .shallow_clone()
        .normal_(0.0, 0.05);
    m
}
