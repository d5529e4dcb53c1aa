//! Progress bars on stderr, only when it is a terminal and the user did not ask for quiet/JSON.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(enabled: bool, total: u64, what: &str, bytes: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg:>10} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg:>10} [{bar:40.cyan/blue}] {percent:>3}% {per_sec} eta {eta}"
    };
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
