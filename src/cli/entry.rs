//! The command line's entry point, shared by the `maas` binary and programs built on the library.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use super::{Cli, StdoutClosed, run};
use crate::train::Interrupted;

/// Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on every adapter they open
/// when the variable is missing (headless servers, containers, CI); maas draws no windows, so any
/// private folder will do.
#[allow(unsafe_code)] // setting a variable is unsafe where other threads may read the environment
fn quiet_the_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

/// The whole `maas` command: parses the arguments, runs the command, and turns errors into one
/// line and an exit code. The `maas` binary is this; a program that registers architectures of
/// its own ([`crate::model::register`]) calls it after them and is a `maas` that knows them.
pub fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one line rather than a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        // The graphics stack failing mid-run (GL's context lock, a lost device) is the GPU's
        // failure, not a bug: one line naming the device, and exit 1.
        if let Some(line) = info
            .location()
            .and_then(|at| crate::device::gpu_failure(at.file(), &message))
        {
            eprintln!("maas: error: {}", crate::terminal::escape(&line));
            std::process::exit(1);
        }
        eprintln!("maas: internal error: {message} (please report this)");
    }));
    let cli = Cli::parse();
    if let Err(err) = crate::kernels::isa::check_env() {
        eprintln!(
            "maas: error: {}",
            crate::terminal::escape(&format!("{err:#}"))
        );
        return ExitCode::from(2);
    }
    quiet_the_vulkan_loader();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // The first Ctrl-C lets the step in flight finish so no file is left half-written; a
    // second one ends the process at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    match run(cli, &stop) {
        Ok(code) => ExitCode::from(code),
        // As ripgrep does: `maas predict ... | head -1` is a normal end.
        Err(err) if err.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("maas: {err}");
            ExitCode::from(130)
        }
        Err(err) => match err.downcast::<clap::Error>() {
            // A conflict clap could not see while parsing (`export --json -o -`): a usage error.
            Ok(usage) => {
                let _ = usage.print();
                ExitCode::from(2)
            }
            Err(err) => {
                // Errors quote file names, class names and servers' words: escaped, so that
                // none of them acts on the terminal or breaks the one line.
                let line = format!("{err:#}");
                eprintln!("maas: error: {}", crate::terminal::escape(&line));
                ExitCode::from(1)
            }
        },
    }
}
