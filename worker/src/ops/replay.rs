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
use crate::store::{Account, Delivery, Lookup, Mode, Outcome, Record};

use super::timeline::Timeline;
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

/// What the replay found for one readable event.
struct Found {
    seq: u64,
    time: String,
    event: ResetRequested,
    record: Option<Record>,
    action: &'static str,
    reason: Option<String>,
    /// The masked address a mail would go to.
    to: Option<String>,
    locale: Option<String>,
    rendered: Option<(String, String)>,
    executed: Option<String>,
    /// How far the request got: mailed, opened, completed, reported.
    timeline: Timeline,
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
        Err(err) if args.json => {
            return Ok(json!({ "seq": seq, "time": time, "decision": { "action": "unreadable", "reason": err.to_string() } }).to_string());
        }
        Err(err) => return Ok(format!("#{seq}  {time}  unreadable: {err}")),
    };
    let record = deps.store.record(event.event_id).await?;
    let (action, reason, account) = decide_now(deps, &event, record.as_ref()).await?;
    let locale = account.as_ref().map(|a| {
        deps.templates
            .locale_for("reset_password", a.locale.as_deref())
    });
    let rendered = match (&account, args.render) {
        (Some(account), true) => Some(deps.composer.render_reset(
            &deps.templates,
            &event,
            account,
            "TOKEN-PLACEHOLDER",
        )?),
        _ => None,
    };
    let executed = execute(deps, args, &event, record.as_ref()).await;
    let timeline = Timeline::of(deps.store.pool(), event.event_id).await?;
    let found = Found {
        seq,
        time,
        to: account.as_ref().map(|a| mask_id(&a.email)),
        event,
        record,
        action,
        reason,
        locale,
        rendered,
        executed,
        timeline,
    };
    Ok(if args.json {
        found.as_json()
    } else {
        found.as_text()
    })
}

/// What a live delivery would do with the event now, and why, with the account it found.
async fn decide_now(
    deps: &Deps,
    event: &ResetRequested,
    record: Option<&Record>,
) -> Result<(&'static str, Option<String>, Option<Account>), OpsError> {
    Ok(match deps.store.find_account(&event.id).await? {
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
        Lookup::Found(account) if record.is_some_and(|r| r.outcome == Outcome::Sent) => (
            "already_sent",
            Some("sent before; it is never sent twice".to_owned()),
            Some(account),
        ),
        Lookup::Found(account) => {
            let why = deps
                .store
                .throttle_reason(&account.id, event.event_id, deps.limits)
                .await?;
            match why {
                Some(why) => ("throttled", Some(why.to_owned()), Some(account)),
                None => ("would_send", None, Some(account)),
            }
        }
    })
}

/// With --execute, handles the event again (unless held back) and says how that went.
async fn execute(
    deps: &Deps,
    args: &ReplayArgs,
    event: &ResetRequested,
    record: Option<&Record>,
) -> Option<String> {
    if !args.execute {
        return None;
    }
    if let Some(why) = held_back(event, record, deps.limits.token_ttl, args.force) {
        return Some(format!("skipped: {why}"));
    }
    let attempt = record.map_or(1, |r| u32::try_from(r.attempts).unwrap_or(0) + 1);
    let delivery = Delivery::new(attempt);
    Some(match handle(event, delivery, Mode::Again, deps).await {
        Ok(handled) => handled.as_str().to_owned(),
        Err(err) => {
            let give_up = err.is_permanent();
            let _ = deps
                .store
                .record_failure(&event.into(), delivery, &err.to_string(), give_up)
                .await;
            format!(
                "error: {}",
                shared::logging::mask_addresses(&err.to_string())
            )
        }
    })
}

impl Found {
    fn as_json(&self) -> String {
        let mut line = json!({
            "seq": self.seq,
            "time": self.time,
            "event_id": self.event.event_id,
            "request_id": self.event.request_id,
            "id": mask_id(&self.event.id),
            "record": self.record,
            "timeline": self.timeline.as_json(self.event.requested_at),
            "decision": {
                "action": self.action,
                "reason": self.reason,
                "to": self.to,
                "locale": self.locale,
                "template": "reset_password",
            },
        });
        if let Some((subject, text)) = &self.rendered {
            line["rendered"] = json!({ "subject": subject, "text": text });
        }
        if let Some(executed) = &self.executed {
            line["executed"] = json!(executed);
        }
        line.to_string()
    }

    fn as_text(&self) -> String {
        let (seq, time, event) = (self.seq, &self.time, &self.event);
        let mut text = format!(
            "#{seq}  {time}  {}  event {}  request {}\n",
            mask_id(&event.id),
            event.event_id,
            event.request_id
        );
        match &self.record {
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
        let now = match (self.action, &self.to, &self.locale) {
            ("would_send", Some(to), Some(locale)) => {
                format!("would send to {to}, locale {locale}, template reset_password")
            }
            (action, ..) => format!("{action}: {}", self.reason.as_deref().unwrap_or_default()),
        };
        text.push_str(&format!(
            "    way:  {}\n",
            self.timeline.as_text(self.event.requested_at)
        ));
        text.push_str(&format!("    now:  {now}"));
        if let Some((subject, body)) = &self.rendered {
            text.push_str(&format!("\n    subject: {subject}\n"));
            for line in body.lines() {
                text.push_str(&format!("    | {line}\n"));
            }
        }
        if let Some(executed) = &self.executed {
            text.push_str(&format!("\n    executed: {executed}"));
        }
        text
    }
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
