//! `worker replay`: what happened to past events, what the worker would do now, and with
//! `--execute`, doing it.

use std::io::Write;

use async_nats::jetstream::consumer::DeliverPolicy;
use serde_json::json;
use shared::event::ResetRequested;
use shared::logging::mask_id;

use crate::cli::ReplayArgs;
use crate::config::Settings;
use crate::handle::{Deps, handle};
use crate::store::{Delivery, Lookup, Mode, Outcome};

use super::{OpsError, SubjectReader, deps_for, open_stream};

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
        let delivery = Delivery::new(attempt);
        Some(match handle(&event, delivery, Mode::Again, deps).await {
            Ok(handled) => handled.as_str().to_owned(),
            Err(err) => {
                let give_up = err.is_permanent();
                let _ = deps
                    .store
                    .record_failure(&(&event).into(), delivery, &err.to_string(), give_up)
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
