//! The log of each attempt: the tracing events at info and above inside a
//! worker's `attempt` span (its `job` and `token` fields name it), kept as
//! text per attempt so the worker can write them beside the attempt's files
//! (`attempt-N/worker.log`) for a user to read with `farmctl logs` or on
//! the job page. [`Layer`] is installed with the rest of the logging
//! ([`crate::telemetry::init_logging`]); [`text`] reads an attempt's lines
//! so far. Each attempt keeps at most [`MAX_BYTES`] (the newest lines win).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The most text one attempt keeps.
pub const MAX_BYTES: usize = 1 << 20;

/// Which attempt a span is (`job:token`), in the span's extensions.
struct AttemptKey(String);

fn logs() -> &'static Mutex<HashMap<String, String>> {
    static LOGS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn key(job: &str, token: u64) -> String {
    format!("{job}:{token}")
}

/// The lines logged so far in the attempt of `job` under `token` (empty
/// if none, or if logging was never set up).
pub fn text(job: &str, token: u64) -> String {
    logs().lock().map(|l| l.get(&key(job, token)).cloned().unwrap_or_default()).unwrap_or_default()
}

/// Keeps the lines of `attempt` spans.
pub struct Layer;

/// Collects an event's message and fields as `message k=v …`, or a span's
/// `job` and `token`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    job: Option<String>,
    token: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "job" => self.job = Some(format!("{value:?}").trim_matches('"').to_string()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "job" => self.job = Some(value.to_string()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "token" => self.token = Some(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "attempt" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(job), Some(token), Some(span)) = (fields.job, fields.token, ctx.span(id)) {
            span.extensions_mut().insert(AttemptKey(key(&job, token)));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::INFO {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else { return };
        let Some(attempt) = scope.into_iter().find_map(|span| span.extensions().get::<AttemptKey>().map(|k| k.0.clone())) else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = String::new();
        let mut time = tracing_subscriber::fmt::format::Writer::new(&mut line);
        let _ = tracing_subscriber::fmt::time::FormatTime::format_time(&tracing_subscriber::fmt::time::SystemTime, &mut time);
        let _ = writeln!(line, " {:>5} {}{}", event.metadata().level(), fields.message, fields.rest);
        if let Ok(mut logs) = logs().lock() {
            let text = logs.entry(attempt).or_default();
            text.push_str(&line);
            if text.len() > MAX_BYTES {
                let cut = text.len() - MAX_BYTES;
                let from = text[cut..].find('\n').map_or(cut, |n| cut + n + 1);
                text.drain(..from);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let key = span.extensions().get::<AttemptKey>().map(|k| k.0.clone());
        if let (Some(k), Ok(mut logs)) = (key, logs().lock()) {
            logs.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn an_attempt_keeps_its_own_lines_at_info_and_above() {
        let subscriber = tracing_subscriber::registry().with(super::Layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any attempt");
            let span = tracing::info_span!("attempt", job = "j1", token = 7u64, attempt = 1u32);
            let other = tracing::info_span!("attempt", job = "j2", token = 9u64, attempt = 1u32);
            span.in_scope(|| {
                tracing::info!(iteration = 40u64, "resuming from checkpoint");
                tracing::debug!("too fine to keep");
                tracing::warn!("checkpoint not written, rendering on");
            });
            other.in_scope(|| tracing::info!("the other attempt"));
            let text = super::text("j1", 7);
            assert!(text.contains(" INFO resuming from checkpoint iteration=40\n"), "{text}");
            assert!(text.contains(" WARN checkpoint not written, rendering on\n"), "{text}");
            assert!(!text.contains("outside") && !text.contains("too fine") && !text.contains("other attempt"), "{text}");
            assert!(text.starts_with("20"), "each line starts with its UTC time: {text}");
            assert_eq!(super::text("j2", 9).lines().count(), 1);
            drop(span);
            assert_eq!(super::text("j1", 7), "", "a closed attempt's lines are freed");
        });
    }
}
