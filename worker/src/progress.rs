//! Progress bars with one look across the project.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `total` items of work, drawn on stderr (hidden when stderr is not a terminal).
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:40.cyan/blue}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
