//! Messages and progress bars for people, on stderr; stdout is kept for results.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// When to draw progress bars (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// A bar over `len` items only when they are at least `min`: below that the work is over
    /// before a bar would say anything.
    pub fn bar_from(&self, min: usize, len: usize, template: &str) -> ProgressBar {
        if len < min {
            return ProgressBar::hidden();
        }
        self.bar(len as u64, template)
    }

    /// A bar over `len` steps, hidden unless bars are on.
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), stderr_target());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// indicatif hides bars when stderr is not a terminal; the caller asked for one, so draw it there
/// anyway (e.g. `--progress always` in CI logs), at a calmer rate.
pub fn stderr_target() -> ProgressDrawTarget {
    if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::new(PlainStderr), 2)
    }
}

/// A terminal-like stderr that only assumes ANSI cursor codes.
#[derive(Debug)]
struct PlainStderr;

impl PlainStderr {
    fn write(&self, s: &str) -> io::Result<()> {
        io::stderr().write_all(s.as_bytes())
    }

    fn move_cursor(&self, n: usize, code: char) -> io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            self.write(&format!("\x1b[{n}{code}"))
        }
    }
}

impl TermLike for PlainStderr {
    fn width(&self) -> u16 {
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(80)
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.move_cursor(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.move_cursor(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.move_cursor(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.move_cursor(n, 'D')
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.write(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.write("\r\x1b[2K")
    }

    fn flush(&self) -> io::Result<()> {
        io::stderr().flush()
    }
}
