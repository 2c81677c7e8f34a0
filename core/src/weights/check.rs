//! A weight source's headers against the model it should hold: every key present, no
//! stranger, every shape right, every dtype readable. No tensor data is read.

use super::keys::{block_specs, stem_specs};
use super::source::{WeightSource, READABLE};
use crate::config::ModelDims;
use std::collections::HashMap;

/// Every problem, one line each ("missing: ...", "unexpected: ...", "mis-shaped: ...",
/// "dtype: ..."), in a stable order; empty when the files fit.
pub fn check(src: &WeightSource, dims: &ModelDims, block_ids: &[usize]) -> Vec<String> {
    let mut want: Vec<(String, Vec<usize>)> = stem_specs(dims)
        .into_iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.shape.iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    let bs = block_specs(dims);
    for id in block_ids {
        want.extend(bs.iter().map(|s| {
            (
                format!("blocks.{id}.{}", s.name),
                s.shape.iter().map(|&d| d as usize).collect(),
            )
        }));
    }
    let mut have: HashMap<&str, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (i, t) in src.tensors.iter().enumerate() {
        match &t.wan_name {
            Some(n) => {
                have.insert(n.as_str(), i);
            }
            None => problems.push(format!(
                "unexpected: {} (not a parameter of a Wan text-to-video model)",
                t.key
            )),
        }
        if !READABLE.contains(&t.dtype) {
            problems.push(format!(
                "dtype: {} is {:?}; fastlightgen reads F32, BF16 and F16",
                t.key, t.dtype
            ));
        }
    }
    let mut used = vec![false; src.tensors.len()];
    for (name, shape) in &want {
        match have.get(name.as_str()) {
            None => problems.push(format!("missing: {name} {shape:?}")),
            Some(&i) => {
                used[i] = true;
                let t = &src.tensors[i];
                if &t.shape != shape {
                    problems.push(format!(
                        "mis-shaped: {}: the file has {:?}, the model needs {shape:?}",
                        t.key, t.shape
                    ));
                }
            }
        }
    }
    for (i, t) in src.tensors.iter().enumerate() {
        if t.wan_name.is_some() && !used[i] {
            problems.push(format!("unexpected: {}", t.key));
        }
    }
    problems
}

/// The first `n` problems and a count of the rest, indented, for an error message.
pub fn summarise(problems: &[String], n: usize) -> String {
    let mut s: Vec<String> = problems.iter().take(n).map(|p| format!("  {p}")).collect();
    if problems.len() > n {
        s.push(format!("  ... and {} more", problems.len() - n));
    }
    s.join("\n")
}
