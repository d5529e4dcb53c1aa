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

/// One bar per stage of a long job (the library's [`Progress`] callbacks), with an optional
/// prefix naming the job (`[3/8] q4_k_m `).
pub struct StageBars {
    enabled: bool,
    prefix: std::sync::Mutex<String>,
    bar: std::sync::Mutex<ProgressBar>,
}

impl quantkit_quant::quantize::Progress for StageBars {
    fn stage(&self, name: &str, total: u64) {
        let mut b = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        b.finish_and_clear();
        let p = self.prefix.lock().unwrap_or_else(|e| e.into_inner()).clone();
        *b = bar(self.enabled, total, &format!("{p}{name}"), false);
    }
    fn tick(&self, done: u64) {
        let b = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if b.length().unwrap_or(0) < done {
            b.set_length(done);
        }
        b.set_position(done);
    }
}

impl StageBars {
    pub fn new(enabled: bool) -> Self {
        StageBars { enabled, prefix: Default::default(), bar: std::sync::Mutex::new(ProgressBar::hidden()) }
    }
    pub fn prefix(&self, p: String) {
        *self.prefix.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
    /// Remove the bar (before printing a line).
    pub fn clear(&self) {
        self.bar.lock().unwrap_or_else(|e| e.into_inner()).finish_and_clear();
    }
}
