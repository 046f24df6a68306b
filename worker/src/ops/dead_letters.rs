//! `worker dead-letters`: list, show and retry the events the worker gave up on.

use std::io::Write;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::Stream};
use serde_json::json;
use shared::event::ResetRequested;
use shared::logging::mask_id;
use shared::stream::Subjects;

use crate::cli::DeadLetterCommand;
use crate::config::Settings;
use crate::jetstream::{
    HEADER_DEAD_ATTEMPTS, HEADER_DEAD_ERROR, HEADER_DEAD_REASON, HEADER_DEAD_STREAM_SEQ,
    HEADER_DEAD_SUBJECT, HEADER_RETRY_OF,
};

use super::replay::CONFIRM_ABOVE;
use super::{OpsError, SubjectReader, open_stream};

/// `worker dead-letters …`.
pub async fn dead_letters(
    settings: &Settings,
    command: &DeadLetterCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), OpsError> {
    let (js, stream) = open_stream(settings).await?;
    let letters = Letters {
        js,
        stream,
        subjects: settings.stream.subjects(),
    };
    match command {
        DeadLetterCommand::List { json } => letters.list(*json, out).await,
        DeadLetterCommand::Show { seq } => letters.show(*seq, out).await,
        DeadLetterCommand::Retry {
            seq,
            all,
            force,
            yes,
        } => {
            let targets = match seq {
                Some(seq) if !*all => vec![*seq],
                _ => letters.retriable(*force, out).await?,
            };
            // Each retried letter is a mail to someone: many at once take a yes.
            if targets.len() > CONFIRM_ABOVE && !*yes {
                return Err(OpsError::UnconfirmedRetry(targets.len()));
            }
            let mut retried = 0;
            for seq in targets {
                letters.retry(seq).await?;
                writeln!(out, "retried dead letter #{seq}")?;
                retried += 1;
            }
            writeln!(out, "{retried} dead letter(s) republished for processing")?;
            Ok(())
        }
    }
}

/// The dead letters of one stream.
struct Letters {
    js: jetstream::Context,
    stream: Stream,
    subjects: Subjects,
}

impl Letters {
    async fn list(&self, json: bool, out: &mut (dyn Write + Send)) -> Result<(), OpsError> {
        let mut reader =
            SubjectReader::open(&self.stream, self.subjects.dead(), DeliverPolicy::All).await?;
        let mut any = false;
        while let Some(message) = reader.next().await? {
            writeln!(out, "{}", summarize(&message, json))?;
            any = true;
        }
        if !any && !json {
            writeln!(out, "no dead letters")?;
        }
        Ok(())
    }

    async fn show(&self, seq: u64, out: &mut (dyn Write + Send)) -> Result<(), OpsError> {
        let message = self.get(seq).await?;
        writeln!(out, "dead letter #{seq} ({})", message.subject)?;
        for (name, values) in message.headers.iter() {
            for value in values {
                writeln!(out, "{name}: {}", value.as_str())?;
            }
        }
        let event: serde_json::Value = serde_json::from_slice(&message.payload)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&message.payload)));
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&event).unwrap_or_default()
        )?;
        Ok(())
    }

    /// Every dead letter for `--all`. A retried letter is mailed with a fresh TOKEN_TTL: for
    /// a request that was already too old to mail, that takes an operator naming it, or
    /// `--force`.
    async fn retriable(
        &self,
        force: bool,
        out: &mut (dyn Write + Send),
    ) -> Result<Vec<u64>, OpsError> {
        let mut reader =
            SubjectReader::open(&self.stream, self.subjects.dead(), DeliverPolicy::All).await?;
        let mut targets = Vec::new();
        while let Some(message) = reader.next().await? {
            let Ok(info) = message.info() else { continue };
            let reason = message
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_DEAD_REASON));
            if !force && reason.is_some_and(|r| r.as_str() == "expired") {
                writeln!(
                    out,
                    "skipped dead letter #{} (expired: the request is older than TOKEN_TTL; retry it by its number, or --all --force)",
                    info.stream_sequence
                )?;
                continue;
            }
            targets.push(info.stream_sequence);
        }
        Ok(targets)
    }

    /// Republishes dead letter `seq` where it came from, marked as an operator's retry, and
    /// removes the letter (the event itself stays in the stream).
    async fn retry(&self, seq: u64) -> Result<(), OpsError> {
        let message = self.get(seq).await?;
        let mut headers = HeaderMap::new();
        for name in [
            "Event-Type",
            "Event-Version",
            shared::event::HEADER_REQUEST_ID,
        ] {
            if let Some(value) = message.headers.get(name) {
                headers.insert(name, value.as_str());
            }
        }
        headers.insert(HEADER_RETRY_OF, seq.to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("retry-{seq}").as_str());
        // Webhooks to the webhook consumers alone (a retried webhook mails nobody);
        // notifications back where they came from; reset requests to the retried subject,
        // which only the worker's user may publish to.
        let webhook = message
            .headers
            .get(crate::webhooks::HEADER_DEAD_KIND)
            .is_some_and(|v| v.as_str() == "webhook");
        let subject = if webhook {
            self.subjects.webhooks_retried()
        } else {
            message
                .headers
                .get(HEADER_DEAD_SUBJECT)
                .map(|v| v.as_str().to_owned())
                .filter(|s| *s == self.subjects.changed())
                .unwrap_or_else(|| self.subjects.retried())
        };
        self.js
            .publish_with_headers(subject, headers, message.payload.clone())
            .await?
            .await?;
        self.stream.delete_message(seq).await?;
        Ok(())
    }

    async fn get(&self, seq: u64) -> Result<jetstream::message::StreamMessage, OpsError> {
        let message = self
            .stream
            .get_raw_message(seq)
            .await
            .map_err(|_| OpsError::NoDeadLetter(seq))?;
        if message.subject.as_str() != self.subjects.dead() {
            return Err(OpsError::NoDeadLetter(seq));
        }
        Ok(message)
    }
}

/// One dead letter's line for `list`: its number, reason, attempts and event.
fn summarize(message: &jetstream::Message, as_json: bool) -> String {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let (seq, published) = message
        .info()
        .map(|i| (i.stream_sequence, i.published))
        .unwrap_or((0, time::OffsetDateTime::UNIX_EPOCH));
    let age = time::OffsetDateTime::now_utc() - published;
    let age = humantime::format_duration(Duration::from_secs(age.whole_seconds().max(0) as u64));
    let event = ResetRequested::decode(&message.payload).ok();
    let id = match (&event, header(crate::webhooks::HEADER_DEAD_KIND).as_str()) {
        (_, "webhook") => format!("webhook of {}", header("Event-Type")),
        (Some(e), _) => mask_id(&e.id),
        (None, _) => "(unreadable)".into(),
    };
    let error = shared::logging::mask_addresses(&header(HEADER_DEAD_ERROR));
    if as_json {
        json!({
            "seq": seq,
            "reason": header(HEADER_DEAD_REASON),
            "attempts": header(HEADER_DEAD_ATTEMPTS).parse::<u32>().ok(),
            "last_error": error,
            "age": age.to_string(),
            "event_seq": header(HEADER_DEAD_STREAM_SEQ).parse::<u64>().ok(),
            "event_id": event.as_ref().map(|e| e.event_id),
            "id": id,
        })
        .to_string()
    } else {
        format!(
            "#{seq}  {}  attempts {}  age {age}  {id}  {error}",
            header(HEADER_DEAD_REASON),
            header(HEADER_DEAD_ATTEMPTS),
        )
    }
}
