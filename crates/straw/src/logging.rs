//! Log output: one line per event on stderr, filtered by `STRAW_LOG`
//! (`tracing` `EnvFilter` syntax, default `info`).
//!
//! - `text` (default): human-readable, a newline inside a message written as
//!   `\n` so an event is always one line. Colours only when stderr is a
//!   terminal. Under systemd (`JOURNAL_STREAM` names stderr) the timestamp is
//!   left out: journald stamps every line itself.
//! - `json`: one JSON object per line (`timestamp`, `level`, `target`, the
//!   event's fields, `message`, and the span it happened in), for operators
//!   who feed logs to a collector.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the text lines go, which decides their decoration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sink {
    terminal: bool,
    journal: bool,
}

impl Sink {
    fn stderr() -> Sink {
        Sink {
            terminal: std::io::stderr().is_terminal(),
            journal: stderr_is_journal(),
        }
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for the stream it connects to the
/// journal; it only counts if that is still our stderr (not inherited by a
/// child whose stderr went elsewhere).
#[cfg(unix)]
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) =
        std::fs::metadata("/proc/self/fd/2").or_else(|_| std::fs::metadata("/dev/stderr"))
    else {
        return false;
    };
    want.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn stderr_is_journal() -> bool {
    false
}

/// Installs the global subscriber: call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let subscriber = build(format, filter(), Sink::stderr(), std::io::stderr);
    // Only fails if one is already set (a second call): keep the first.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn filter() -> EnvFilter {
    filter_or("info")
}

fn filter_or(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("STRAW_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// For tests: logs to the test's output at `STRAW_LOG` (default `warn`).
/// Only the first call in a process installs it; later ones do nothing.
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter_or("warn"))
        .with_test_writer()
        .try_init();
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    sink: Sink,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => Box::new(
            fmt.with_writer(writer)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => {
            let fmt = fmt.with_writer(OneLine(writer));
            if sink.journal {
                Box::new(fmt.with_ansi(false).without_time().finish())
            } else {
                Box::new(fmt.with_ansi(sink.terminal).finish())
            }
        }
    }
}

/// Escapes newlines inside an event. The fmt layer formats each event into
/// one buffer and hands it over in one `write_all`, so only the final `\n`
/// of a buffer ends a line.
struct OneLine<W>(W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for OneLine<W> {
    type Writer = OneLine<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if body.contains(&b'\n') {
            let mut escaped = Vec::with_capacity(buf.len() + 8);
            for &b in body {
                match b {
                    b'\n' => escaped.extend_from_slice(b"\\n"),
                    _ => escaped.push(b),
                }
            }
            escaped.extend_from_slice(end);
            self.0.write_all(&escaped)?;
        } else {
            self.0.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `format` writes for one event inside a span.
    fn lines(format: LogFormat, sink: Sink) -> Vec<String> {
        let out = Captured::default();
        let sub = build(format, EnvFilter::new("info"), sink, {
            let out = out.clone();
            move || out.clone()
        });
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("tunnel", peer = "boat-1");
            let _g = span.enter();
            tracing::info!(bytes = 42, "link up\nsecond line of the message");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    const PIPE: Sink = Sink {
        terminal: false,
        journal: false,
    };

    #[test]
    fn text_is_one_line_without_colours_when_not_a_terminal() {
        let lines = lines(LogFormat::Text, PIPE);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("link up\\nsecond line"), "{line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(line.contains("INFO"), "{line:?}");
        assert!(line.contains("tunnel{peer=\"boat-1\"}"), "{line:?}");
        assert!(line.contains("bytes=42"), "{line:?}");
        assert!(!lines.iter().any(|l| l.contains("filtered out")));
    }

    #[test]
    fn text_has_colours_on_a_terminal_and_no_time_for_journald() {
        let coloured = lines(
            LogFormat::Text,
            Sink {
                terminal: true,
                journal: false,
            },
        );
        assert!(coloured[0].contains('\x1b'), "{coloured:?}");
        let journal = lines(
            LogFormat::Text,
            Sink {
                terminal: false,
                journal: true,
            },
        );
        // No timestamp: the line starts with the level.
        assert!(journal[0].trim_start().starts_with("INFO"), "{journal:?}");
        assert!(!journal[0].contains('\x1b'), "{journal:?}");
    }

    #[test]
    fn json_is_one_object_per_line_with_fields_and_span() {
        let lines = lines(LogFormat::Json, PIPE);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "link up\nsecond line of the message");
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["span"]["name"], "tunnel");
        assert_eq!(v["span"]["peer"], "boat-1");
        assert!(v["timestamp"].is_string());
    }
}
