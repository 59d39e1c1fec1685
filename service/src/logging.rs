//! Log output of every `standin` command, on stderr: the `STANDIN_LOG` filter
//! (tracing-subscriber's `EnvFilter` syntax, e.g. `debug` or `info,standin=debug`;
//! default `info` with sled, h2, hyper and tower at `warn`) and the format,
//! `--log-format text|json` or `STANDIN_LOG_FORMAT` (text by default; json is one
//! object per line with `timestamp`, `level`, `target`, `message` and the event's
//! fields at the top level, for a log shipper). The filter can be replaced while the
//! process runs (`set_filter`: a node's config key `log_filter`, reloaded on SIGHUP).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The filter used when `STANDIN_LOG` is unset (or invalid).
pub const DEFAULT_FILTER: &str = "info,sled=warn,h2=warn,hyper=warn,tower=warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Replaces the installed subscriber's filter (set once by `init`).
type FilterSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: OnceLock<FilterSetter> = OnceLock::new();

/// Check a filter's syntax (the config's `log_filter`).
pub fn check_filter(text: &str) -> Result<(), String> {
    EnvFilter::try_new(text)
        .map(|_| ())
        .map_err(|error| format!("{text:?} is not a valid log filter ({error})"))
}

/// Use `text` as the filter from now on, or, with `None`, `STANDIN_LOG`'s (or the
/// default). Fails when the text does not parse or no subscriber of `init` is
/// installed.
pub fn set_filter(text: Option<&str>) -> Result<(), String> {
    let filter = match text {
        Some(text) => EnvFilter::try_new(text)
            .map_err(|error| format!("{text:?} is not a valid log filter ({error})"))?,
        None => filter(),
    };
    let set = SET_FILTER
        .get()
        .ok_or_else(|| "no reloadable log subscriber is installed".to_string())?;
    set(filter)
}

/// The filter from `STANDIN_LOG`, or the default; a value that does not parse is
/// named on stderr and the default used (logging never stops a node from starting).
fn filter() -> EnvFilter {
    match std::env::var("STANDIN_LOG") {
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|error| {
            eprintln!("warning: STANDIN_LOG={text:?} is not a valid filter ({error}); using {DEFAULT_FILTER:?}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
    }
}

/// The subscriber for `format`, writing to `writer`, and what replaces its filter.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> (Box<dyn tracing::Subscriber + Send + Sync>, FilterSetter)
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => {
            let builder = builder.with_ansi(ansi).with_filter_reloading();
            let handle = builder.reload_handle();
            (
                Box::new(builder.finish()),
                Box::new(move |filter| handle.reload(filter).map_err(|error| error.to_string())),
            )
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            (
                Box::new(builder.finish()),
                Box::new(move |filter| handle.reload(filter).map_err(|error| error.to_string())),
            )
        }
    }
}

/// Install the process's subscriber (once; a second call changes nothing).
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let (subscriber, set_filter) = subscriber(format, filter(), std::io::stderr, ansi);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = SET_FILTER.set(set_filter);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let (subscriber, set_filter) = subscriber(
            format,
            EnvFilter::new(DEFAULT_FILTER),
            move || writer.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(file = "/etc/standin/pair.secret", "secret file is readable");
            tracing::debug!("filtered out");
            set_filter(EnvFilter::new("debug")).unwrap();
            tracing::debug!("let through once the filter is debug");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_is_one_flat_object_per_line() {
        let output = logged(LogFormat::Json);
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 2, "{output}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "secret file is readable");
        assert_eq!(line["file"], "/etc/standin/pair.secret");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["target"].is_string(), "{line}");
    }

    #[test]
    fn text_is_plain() {
        let output = logged(LogFormat::Text);
        assert!(output.contains("WARN"), "{output}");
        assert!(output.contains("secret file is readable"), "{output}");
        assert!(!output.contains('{'), "{output}");
        assert!(!output.contains("filtered out"), "{output}");
        assert!(
            output.contains("let through once the filter is debug"),
            "{output}"
        );
    }
}
