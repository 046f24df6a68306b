//! `worker dead-letters`: list, show and retry the events the worker gave up on.

use std::io::Write;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use serde_json::json;
use shared::event::ResetRequested;
use shared::logging::mask_id;

use crate::cli::DeadLetterCommand;
use crate::config::Settings;
use crate::jetstream::{
    HEADER_DEAD_ATTEMPTS, HEADER_DEAD_ERROR, HEADER_DEAD_REASON, HEADER_DEAD_STREAM_SEQ,
    HEADER_DEAD_SUBJECT, HEADER_RETRY_OF,
};

use super::{OpsError, SubjectReader, open_stream};

/// `worker dead-letters …`.
pub async fn dead_letters(
    settings: &Settings,
    command: &DeadLetterCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), OpsError> {
    let (js, stream) = open_stream(settings).await?;
    let subjects = settings.stream.subjects();
    match command {
        DeadLetterCommand::List { json } => {
            let mut reader =
                SubjectReader::open(&stream, subjects.dead(), DeliverPolicy::All).await?;
            let mut any = false;
            while let Some(message) = reader.next().await? {
                writeln!(out, "{}", summarize(&message, *json))?;
                any = true;
            }
            if !any && !json {
                writeln!(out, "no dead letters")?;
            }
        }
        DeadLetterCommand::Show { seq } => {
            let message = stream
                .get_raw_message(*seq)
                .await
                .map_err(|_| OpsError::NoDeadLetter(*seq))?;
            if message.subject.as_str() != subjects.dead() {
                return Err(OpsError::NoDeadLetter(*seq));
            }
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
        }
        DeadLetterCommand::Retry { seq, all, force } => {
            let mut targets = Vec::new();
            if *all {
                let mut reader =
                    SubjectReader::open(&stream, subjects.dead(), DeliverPolicy::All).await?;
                while let Some(message) = reader.next().await? {
                    let Ok(info) = message.info() else { continue };
                    let reason = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_DEAD_REASON));
                    // A retried letter is mailed with a fresh TOKEN_TTL: for a request that was
                    // already too old to mail, that takes an operator naming it, or --force.
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
            } else if let Some(seq) = seq {
                targets.push(*seq);
            }
            let mut retried = 0;
            for seq in targets {
                let message = stream
                    .get_raw_message(seq)
                    .await
                    .map_err(|_| OpsError::NoDeadLetter(seq))?;
                if message.subject.as_str() != subjects.dead() {
                    return Err(OpsError::NoDeadLetter(seq));
                }
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
                // Back where it came from: reset requests and notifications alike.
                let subject = message
                    .headers
                    .get(HEADER_DEAD_SUBJECT)
                    .map(|v| v.as_str().to_owned())
                    .filter(|s| *s == subjects.changed())
                    .unwrap_or_else(|| subjects.requested());
                js.publish_with_headers(subject, headers, message.payload.clone())
                    .await
                    .map_err(|e| OpsError::Publish(e.to_string()))?
                    .await
                    .map_err(|e| OpsError::Publish(e.to_string()))?;
                // Retried, so no longer dead: the event itself stays in the stream.
                stream
                    .delete_message(seq)
                    .await
                    .map_err(|e| OpsError::Publish(e.to_string()))?;
                writeln!(out, "retried dead letter #{seq}")?;
                retried += 1;
            }
            writeln!(out, "{retried} dead letter(s) republished for processing")?;
        }
    }
    Ok(())
}

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
    let id = event
        .as_ref()
        .map(|e| mask_id(&e.id))
        .unwrap_or_else(|| "(unreadable)".into());
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
