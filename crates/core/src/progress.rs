//! Progress bars for long work: rate and ETA, on stderr, hidden when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar counting `len` items of `unit` (e.g. "img"), showing items/s and the time left; drawn
/// only when `visible` (and stderr is a terminal).
pub fn bar(len: u64, what: &str, unit: &str, visible: bool) -> ProgressBar {
    let pb = if visible { ProgressBar::new(len) } else { ProgressBar::hidden() };
    let template = format!("{{msg:>10}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} · {{rate}} {unit}/s · ETA {{eta}}");
    let style = ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> ").with_key(
        "rate",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let r = s.per_sec();
            let _ = if r >= 100.0 { write!(w, "{r:.0}") } else { write!(w, "{r:.1}") };
        },
    );
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}
