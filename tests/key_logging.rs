//! `EngineConfig::log_key`: with `KeyLogging::Hashed`, no log line or span field shows the
//! idempotency key itself (keys may hold personal data), only its hash; with `Plain` (default) the
//! key appears as it is.

use idemq::key::KeyLogging;
use idemq::store::MemoryStore;
use idemq::{
    CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message,
    Source,
};
use std::io;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

const KEY: &str = "jane.doe@example.com";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs a processed message, a conflicting copy (dead-lettered, its error naming the key) and a
/// failing handler (retry) under `how`, with every span and event written out; returns the output
/// and the conflict's dead-letter error text.
async fn run(how: KeyLogging) -> (String, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = EngineConfig::new("people");
    config.log_key = how;
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        config,
        |ctx: HandlerContext| async move {
            if ctx.message.payload.as_ref() == b"fail" {
                return Err(HandlerError::retriable("downstream unavailable"));
            }
            Ok::<_, HandlerError>("ok")
        },
    )
    .unwrap();
    let stop = CancellationToken::new();
    let msg = |key: &'static str, payload: &'static str| {
        Arc::new(
            Message::new(payload, Source::Other("test".into())).with_header("Idempotency-Key", key),
        )
    };
    let first = engine.process(msg(KEY, "{\"a\":1}"), &stop).await;
    assert!(matches!(first, Disposition::Processed { .. }), "{first:?}");
    let conflict = engine.process(msg(KEY, "{\"a\":2}"), &stop).await;
    let Disposition::DeadLetter(dl) = conflict else {
        panic!("expected a conflict, got {conflict:?}");
    };
    let retry = engine
        .process(msg("x-jane.doe@example.com", "fail"), &stop)
        .await;
    assert!(matches!(retry, Disposition::Retry { .. }), "{retry:?}");

    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (out, dl.error)
}

#[tokio::test]
async fn hashed_keys_never_appear_in_logs_or_spans() {
    let (out, error) = run(KeyLogging::Hashed).await;
    assert!(!out.contains("jane.doe"), "the key leaked:\n{out}");
    assert!(
        !error.contains("jane.doe"),
        "the key leaked into the dead letter: {error}"
    );
    let hashed = KeyLogging::Hashed.show(KEY).to_string();
    // The span field on the process span, and the conflict text, show the hash.
    assert!(out.contains(&format!("key=\"{hashed}\"")), "{out}");
    assert!(
        out.contains("dead-lettering") && error.contains(&hashed),
        "{out}"
    );
    assert!(out.contains("retry later"), "{out}");
}

#[tokio::test]
async fn plain_keys_appear_as_they_are() {
    let (out, error) = run(KeyLogging::Plain).await;
    assert!(out.contains(&format!("key=\"{KEY}\"")), "{out}");
    assert!(error.contains(KEY), "{error}");
}
