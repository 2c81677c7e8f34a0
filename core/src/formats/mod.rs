//! The JSON files a run writes for people and scripts, and reads back (the report, `sample`,
//! the bench scripts through `fastlightgen report --json`).

pub mod eval;
pub mod importance;
pub mod student;
