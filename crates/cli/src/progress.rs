//! Progress reporting for `convert`: an indicatif bar on a terminal, throttled JSON lines on
//! stderr, or nothing. Always on stderr, because stdout may carry the disk.

use std::{
    io::{IsTerminal, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diskconv::{Progress, ProgressFn};

use crate::cli::ProgressMode;

/// Minimum interval between two JSON progress lines.
const JSON_INTERVAL: Duration = Duration::from_millis(500);

/// Builds the callback for disk number `disk`; `None` when nothing is shown.
pub(crate) fn reporter(mode: ProgressMode, disk: usize, label: &str) -> Option<ProgressFn> {
    match mode {
        ProgressMode::None => None,
        ProgressMode::Auto if !std::io::stderr().is_terminal() => None,
        ProgressMode::Auto => {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.to_owned());
            Some(Arc::new(move |p: &Progress| {
                if let Some(total) = p.virtual_size {
                    bar.set_length(total);
                }
                bar.set_position(p.position);
                if p.virtual_size == Some(p.position) {
                    bar.finish();
                }
            }))
        }
        ProgressMode::Json => {
            let last = Mutex::new(None::<Instant>);
            Some(Arc::new(move |p: &Progress| {
                let done = p.virtual_size == Some(p.position);
                let Ok(mut last) = last.lock() else { return };
                if !done && last.is_some_and(|t| t.elapsed() < JSON_INTERVAL) {
                    return;
                }
                *last = Some(Instant::now());
                let line = serde_json::json!({
                    "event": "progress",
                    "disk": disk,
                    "position": p.position,
                    "virtual_size": p.virtual_size,
                    "bytes_read": p.bytes_read,
                });
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }))
        }
    }
}
