//! The FastLightGen stages (METHOD.md). Each reads the previous stage's output from the run
//! directory and writes its own there, so any stage can be rerun alone.

pub mod importance;
