//! Operator tools: `worker replay` and `worker dead-letters`.
//!
//! Both read the stream through an ephemeral ordered consumer, so the workers' durable
//! consumer is never touched, and stop once they have read what the stream held when they
//! started.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Stream,
};
use futures::StreamExt;
use serde_json::json;
use shared::event::ResetRequested;
use shared::logging::mask_id;

use crate::cli::{DeadLetterCommand, ReplayArgs};
use crate::config::Settings;
use crate::handle::{Deps, handle};
use crate::jetstream::{
    HEADER_DEAD_ATTEMPTS, HEADER_DEAD_ERROR, HEADER_DEAD_REASON, HEADER_DEAD_STREAM_SEQ,
    HEADER_DEAD_SUBJECT, HEADER_RETRY_OF,
};
use crate::status::Status;
use crate::store::{Limits, Lookup, Mode, Outcome, Store};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("NATS at {0} (NATS_URL) is not reachable")]
    NatsUnreachable(String),
    #[error("stream {0} (RESET_STREAM): {1}")]
    Stream(String, String),
    #[error("reading the stream: {0}")]
    Read(String),
    #[error("database (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Setup(#[from] crate::WorkerError),
    #[error("no dead letter at sequence {0}")]
    NoDeadLetter(u64),
    #[error("republishing: {0}")]
    Publish(String),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

async fn open_stream(settings: &Settings) -> Result<(jetstream::Context, Stream), OpsError> {
    let url = settings.nats.nats_url.clone();
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .name("password-reset-ops")
            .connect(url.as_str()),
    )
    .await
    .map_err(|_| OpsError::NatsUnreachable(url.clone()))?
    .map_err(|_| OpsError::NatsUnreachable(url.clone()))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&settings.stream.stream)
        .await
        .map_err(|e| OpsError::Stream(settings.stream.stream.clone(), e.to_string()))?;
    Ok((js, stream))
}

/// Reads the messages of one subject from a starting point, up to what the stream held when
/// reading began.
struct SubjectReader {
    messages: Option<jetstream::consumer::pull::Ordered>,
    pending: u64,
}

impl SubjectReader {
    async fn open(
        stream: &Stream,
        subject: String,
        deliver: DeliverPolicy,
    ) -> Result<Self, OpsError> {
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject,
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| OpsError::Read(e.to_string()))?;
        let pending = consumer
            .get_info()
            .await
            .map_err(|e| OpsError::Read(e.to_string()))?
            .num_pending;
        let messages = if pending == 0 {
            None
        } else {
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|e| OpsError::Read(e.to_string()))?,
            )
        };
        Ok(Self { messages, pending })
    }

    async fn next(&mut self) -> Result<Option<jetstream::Message>, OpsError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        if self.pending == 0 {
            return Ok(None);
        }
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(message))) => {
                self.pending -= 1;
                Ok(Some(message))
            }
            Ok(Some(Err(err))) => Err(OpsError::Read(err.to_string())),
            Ok(None) | Err(_) => Ok(None),
        }
    }
}

/// `worker replay`.
pub async fn replay(
    settings: &Settings,
    args: &ReplayArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), OpsError> {
    let (_, stream) = open_stream(settings).await?;
    let deps = deps_for(settings).await?;
    let deliver = match (args.from_seq, args.since) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
        (None, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: since.0,
        },
        (None, None) => DeliverPolicy::All,
    };
    let mut reader =
        SubjectReader::open(&stream, settings.stream.subjects().requested(), deliver).await?;
    let mut shown = 0usize;
    while let Some(message) = reader.next().await? {
        if args.limit.is_some_and(|limit| shown >= limit) {
            break;
        }
        let (seq, published) = message
            .info()
            .map(|i| (i.stream_sequence, i.published))
            .unwrap_or((0, time::OffsetDateTime::UNIX_EPOCH));
        if args.until.is_some_and(|until| published > until.0) {
            break;
        }
        let event = ResetRequested::decode(&message.payload);
        let selected = match (&event, &args.id) {
            (Ok(event), Some(id)) => event.id.eq_ignore_ascii_case(id.trim()),
            (Err(_), Some(_)) => false,
            (_, None) => true,
        };
        if !selected {
            continue;
        }
        shown += 1;
        let line = describe(&deps, args, seq, published, event).await?;
        writeln!(out, "{line}")?;
    }
    deps.mailer.close().await;
    Ok(())
}

/// One event's line (text or JSON): what happened then, what would happen now, and, with
/// --execute, what happened this time.
async fn describe(
    deps: &Deps,
    args: &ReplayArgs,
    seq: u64,
    published: time::OffsetDateTime,
    event: Result<ResetRequested, shared::event::DecodeError>,
) -> Result<String, OpsError> {
    let time = published
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let event = match event {
        Ok(event) => event,
        Err(err) => {
            return Ok(if args.json {
                json!({ "seq": seq, "time": time, "decision": { "action": "unreadable", "reason": err.to_string() } }).to_string()
            } else {
                format!("#{seq}  {time}  unreadable: {err}")
            });
        }
    };
    let record = deps.store.record(event.event_id).await?;
    let (action, reason, account) = match deps.store.find_account(&event.id).await? {
        Lookup::NotFound => (
            "no_account",
            Some("no account has this id or email".to_owned()),
            None,
        ),
        Lookup::Ambiguous(n) => (
            "no_account",
            Some(format!(
                "{n} accounts share this email and none has it as id"
            )),
            None,
        ),
        Lookup::Found(account) => {
            if record.as_ref().is_some_and(|r| r.outcome == Outcome::Sent) {
                (
                    "already_sent",
                    Some("sent before; it is never sent twice".to_owned()),
                    Some(account),
                )
            } else {
                match deps
                    .store
                    .throttle_reason(&account.id, event.event_id, deps.limits)
                    .await?
                {
                    Some(why) => ("throttled", Some(why.to_owned()), Some(account)),
                    None => ("would_send", None, Some(account)),
                }
            }
        }
    };
    let locale = account.as_ref().map(|a| {
        deps.templates
            .locale_for("reset_password", a.locale.as_deref())
    });
    let rendered = match (&account, args.render) {
        (Some(account), true) => Some(
            deps.composer
                .render_reset(&deps.templates, &event, account, "TOKEN-PLACEHOLDER")
                .map_err(|e| OpsError::Read(e.to_string()))?,
        ),
        _ => None,
    };
    let executed = if args.execute {
        let attempt = record
            .as_ref()
            .map_or(1, |r| u32::try_from(r.attempts).unwrap_or(0) + 1);
        Some(match handle(&event, attempt, Mode::Again, deps).await {
            Ok(handled) => handled.as_str().to_owned(),
            Err(err) => {
                let give_up = err.is_permanent();
                let _ = deps
                    .store
                    .record_failure(&(&event).into(), attempt, &err.to_string(), give_up)
                    .await;
                format!(
                    "error: {}",
                    shared::logging::mask_addresses(&err.to_string())
                )
            }
        })
    } else {
        None
    };

    let to = account.as_ref().map(|a| mask_id(&a.email));
    if args.json {
        let mut line = json!({
            "seq": seq,
            "time": time,
            "event_id": event.event_id,
            "request_id": event.request_id,
            "id": mask_id(&event.id),
            "record": record,
            "decision": { "action": action, "reason": reason, "to": to, "locale": locale, "template": "reset_password" },
        });
        if let Some((subject, text)) = &rendered {
            line["rendered"] = json!({ "subject": subject, "text": text });
        }
        if let Some(executed) = &executed {
            line["executed"] = json!(executed);
        }
        return Ok(line.to_string());
    }
    let mut text = format!(
        "#{seq}  {time}  {}  event {}  request {}\n",
        mask_id(&event.id),
        event.event_id,
        event.request_id
    );
    match &record {
        Some(r) => text.push_str(&format!(
            "    then: {} after {} attempt(s){}\n",
            r.outcome.as_str(),
            r.attempts,
            r.last_error
                .as_deref()
                .map(|e| format!(", last error: {}", shared::logging::mask_addresses(e)))
                .unwrap_or_default()
        )),
        None => text.push_str("    then: no processing record (not handled yet)\n"),
    }
    let now = match (action, &to, &locale) {
        ("would_send", Some(to), Some(locale)) => {
            format!("would send to {to}, locale {locale}, template reset_password")
        }
        _ => format!("{action}: {}", reason.unwrap_or_default()),
    };
    text.push_str(&format!("    now:  {now}"));
    if let Some((subject, body)) = &rendered {
        text.push_str(&format!("\n    subject: {subject}\n"));
        for line in body.lines() {
            text.push_str(&format!("    | {line}\n"));
        }
    }
    if let Some(executed) = &executed {
        text.push_str(&format!("\n    executed: {executed}"));
    }
    Ok(text)
}

/// What handling needs, for the operator tools (no listener, no consumer).
async fn deps_for(settings: &Settings) -> Result<Deps, OpsError> {
    let (templates, composer, mailer) = crate::mail_parts(settings)?;
    let store = Store::connect(&settings.database.url.database_url, 4).await?;
    Ok(Deps {
        store,
        templates,
        composer,
        mailer,
        limits: Limits::from(&settings.policy),
        status: Arc::new(Status::new(None)),
    })
}

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
        DeadLetterCommand::Retry { seq, all } => {
            let mut targets = Vec::new();
            if *all {
                let mut reader =
                    SubjectReader::open(&stream, subjects.dead(), DeliverPolicy::All).await?;
                while let Some(message) = reader.next().await? {
                    if let Ok(info) = message.info() {
                        targets.push(info.stream_sequence);
                    }
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
