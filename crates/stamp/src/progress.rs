//! Progress bars (indicatif, only on a terminal and only when asked) and Ctrl-C handling.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use stamp_disk::Progress;

/// Set when the user presses Ctrl-C; long operations see it and stop cleanly.
pub type CancelFlag = Arc<AtomicBool>;

/// Installs a Ctrl-C (and SIGTERM, SIGHUP) handler that sets the returned flag. A second
/// signal exits at once with 130, unless `patient`: a machine's monitor finishes its graceful
/// stop whatever else arrives (systemd signals it again after the unit's ExecStop).
pub fn install_ctrlc(patient: bool) -> CancelFlag {
    let flag: CancelFlag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // If a handler cannot be installed, Ctrl-C keeps its default (immediate exit); not fatal.
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) && !patient {
            std::process::exit(130);
        }
    });
    flag
}

/// A [`Progress`] that draws a bar on stderr when enabled and stderr is a terminal.
pub struct Bar {
    bar: Option<ProgressBar>,
    cancel: CancelFlag,
}

impl Bar {
    /// A bar with `message`, shown only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool, message: &str, cancel: &CancelFlag) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(message.to_string());
            b
        });
        Bar {
            bar,
            cancel: cancel.clone(),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}
