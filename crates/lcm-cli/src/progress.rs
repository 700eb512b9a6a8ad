//! A one-line progress bar on stderr, redrawn in place when stderr is a terminal and printed once per
//! step otherwise (logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::Duration;

pub struct Progress {
    tty: bool,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Progress { tty: std::io::stderr().is_terminal(), label: label.to_string() }
    }

    pub fn update(&mut self, done: usize, total: usize, detail: &str, elapsed: Duration) {
        const WIDTH: usize = 24;
        let filled = WIDTH * done / total.max(1);
        let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
        let line = format!("{} [{bar}] {done}/{total} {detail} {:.2}s", self.label, elapsed.as_secs_f64());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if done == total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
