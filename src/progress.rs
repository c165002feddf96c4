//! Messages and progress bars for people, on stderr; stdout is kept for results.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// When to draw progress bars (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// When stderr is a terminal.
    Auto,
    /// Always, even into a pipe or file.
    Always,
    /// Never: one plain line per epoch instead.
    Never,
}

/// Says things to people on stderr, as `--quiet` and `--progress` allow.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    /// Only results and errors.
    pub quiet: bool,
    /// Draw progress bars.
    pub bars: bool,
}

impl Reporter {
    /// A reporter for the given flags.
    pub fn new(quiet: bool, mode: ProgressMode) -> Self {
        let bars = !quiet
            && match mode {
                ProgressMode::Always => true,
                ProgressMode::Never => false,
                ProgressMode::Auto => std::io::stderr().is_terminal(),
            };
        Self { quiet, bars }
    }

    /// A reporter that says nothing (for the library's own callers and tests).
    pub fn silent() -> Self {
        Self {
            quiet: true,
            bars: false,
        }
    }

    /// Prints a line on stderr unless quiet.
    pub fn info(&self, message: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", message.as_ref());
        }
    }

    /// A bar over `len` steps, hidden unless bars are on.
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}
