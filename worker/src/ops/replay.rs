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
use crate::store::{Delivery, Lookup, Mode, Outcome, Record};

use super::{OpsError, SubjectReader, deps_for, open_stream};

/// Above this many matching events, `--execute` asks for `--yes`.
pub const CONFIRM_ABOVE: usize = 10;

/// `worker replay`.
pub async fn replay(
    settings: &Settings,
    args: &ReplayArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), OpsError> {
    if args.execute && args.id.is_none() && args.since.is_none() && args.from_seq.is_none() {
        return Err(OpsError::Unscoped);
    }
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
    // All selected first, so that --execute knows how many it would touch before touching any.
    let mut selected = Vec::new();
    while let Some(message) = reader.next().await? {
        if args.limit.is_some_and(|limit| selected.len() >= limit) {
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
        let wanted = match (&event, &args.id) {
            (Ok(event), Some(id)) => event.id.eq_ignore_ascii_case(id.trim()),
            (Err(_), Some(_)) => false,
            (_, None) => true,
        };
        if wanted {
            selected.push((seq, published, event));
        }
    }
    if args.execute && selected.len() > CONFIRM_ABOVE && !args.yes {
        deps.mailer.close().await;
        return Err(OpsError::Unconfirmed(selected.len()));
    }
    for (seq, published, event) in selected {
        let line = describe(&deps, args, seq, published, event).await?;
        writeln!(out, "{line}")?;
    }
    deps.mailer.close().await;
    Ok(())
}

/// Why `--execute` leaves an event alone, if it does: what a live delivery would not do
/// either, and what was decided before unless the operator says `--force`.
fn held_back(
    event: &ResetRequested,
    record: Option<&Record>,
    token_ttl: std::time::Duration,
    force: bool,
) -> Option<String> {
    match record.map(|r| r.outcome) {
        Some(Outcome::Pending) => {
            return Some(
                "pending: a worker may be sending it now, and a replay never mails it again"
                    .to_owned(),
            );
        }
        Some(outcome @ (Outcome::Throttled | Outcome::NoAccount)) if !force => {
            return Some(format!(
                "{} then; shown, not decided again (--force decides it again)",
                outcome.as_str()
            ));
        }
        _ => {}
    }
    let ttl = time::Duration::try_from(token_ttl).unwrap_or(time::Duration::MAX);
    if !force && event.requested_at + ttl < time::OffsetDateTime::now_utc() {
        return Some(
            "older than TOKEN_TTL: a link sent now would outlive the request (--force mails it anyway)"
                .to_owned(),
        );
    }
    None
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
    let held = args
        .execute
        .then(|| held_back(&event, record.as_ref(), deps.limits.token_ttl, args.force))
        .flatten();
    let executed = if let Some(why) = held {
        Some(format!("skipped: {why}"))
    } else if args.execute {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(age: Duration) -> ResetRequested {
        ResetRequested {
            version: shared::event::EVENT_VERSION,
            event_id: uuid::Uuid::now_v7(),
            id: "ada".into(),
            requested_at: time::OffsetDateTime::now_utc() - age,
            request_id: "r".into(),
            client: shared::event::ClientContext {
                ip: None,
                user_agent: None,
                api_key_label: "web".into(),
            },
        }
    }

    fn record(outcome: Outcome) -> Record {
        Record {
            outcome,
            attempts: 1,
            last_error: None,
            account_id: Some("ada".into()),
            sent_at: None,
            updated_at: time::OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn execute_leaves_pending_decided_and_old_events_alone_unless_forced() {
        let ttl = Duration::from_secs(900);
        let fresh = event(Duration::from_secs(60));
        let old = event(Duration::from_secs(901));
        let held = |e: &ResetRequested, r: Option<Outcome>, force: bool| {
            held_back(e, r.map(record).as_ref(), ttl, force)
        };
        // Pending: a worker may be sending it; not even --force mails it again.
        for force in [false, true] {
            let why = held(&fresh, Some(Outcome::Pending), force).expect("held");
            assert!(why.starts_with("pending"), "{why}");
        }
        for decided in [Outcome::Throttled, Outcome::NoAccount] {
            let why = held(&fresh, Some(decided), false).expect("held");
            assert!(why.starts_with(decided.as_str()), "{why}");
            assert_eq!(held(&fresh, Some(decided), true), None);
        }
        let why = held(&old, Some(Outcome::Failed), false).expect("held");
        assert!(why.starts_with("older than TOKEN_TTL"), "{why}");
        assert_eq!(held(&old, Some(Outcome::Failed), true), None);
        assert_eq!(held(&fresh, Some(Outcome::Failed), false), None);
        assert_eq!(held(&fresh, None, false), None);
    }
}
