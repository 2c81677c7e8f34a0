//! Model weight files without tensors: the DiT's parameter names and shapes ([`keys`]), the
//! three on-disk forms a model comes in ([`source`]: fastlightgen files, original Wan
//! checkpoints, diffusers transformer folders), the name mapping between Wan's and diffusers'
//! keys and their `config.json` files ([`naming`]), fastlightgen's own metadata ([`meta`]),
//! and a check of a file's headers against a configured model ([`check`]). Everything here
//! reads headers only, so `fastlightgen validate` can check a 5 GB checkpoint in milliseconds
//! without libtorch; the worker reads the tensors.

pub mod check;
pub mod keys;
pub mod meta;
pub mod naming;
pub mod source;

#[cfg(test)]
pub(crate) mod tests;
