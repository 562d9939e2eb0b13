//! Spinners for steps that may take a while (starting the agent, preparing a sandbox): on a
//! terminal only, and only once the step has taken a moment, so quick steps print nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a step runs before its spinner shows.
const REVEAL_AFTER: Duration = Duration::from_millis(300);

pub struct Spinner {
    bar: ProgressBar,
    reveal: tokio::task::JoinHandle<()>,
}

impl Spinner {
    /// A spinner with `message` on stderr, or nothing when stderr is not a terminal. It is plain
    /// text (no colour), so `NO_COLOR` needs nothing more. It goes away when dropped.
    pub fn start(message: &str) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_owned());
        let shown = bar.clone();
        let reveal = tokio::spawn(async move {
            tokio::time::sleep(REVEAL_AFTER).await;
            shown.set_draw_target(ProgressDrawTarget::stderr());
            shown.enable_steady_tick(Duration::from_millis(100));
        });
        Some(Self { bar, reveal })
    }
}

impl Spinner {
    /// Shows `message` instead of the spinner's first.
    pub fn say(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.reveal.abort();
        self.bar.finish_and_clear();
    }
}
