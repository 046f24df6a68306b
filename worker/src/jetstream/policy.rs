//! What becomes of a delivery, decided from plain values: the rules the consume loop applies
//! (acks, naks and their delays, waits that spend no retries, dead letters) in one function
//! with no I/O, tested as a table beside it.

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::Backoff;

/// How a delivery's work ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Sent, skipped or found done: the outcome is recorded.
    Done,
    /// Another delivery holds the event's claim for `left` more.
    Busy { left: Duration },
    /// The worker is stopping and nothing was said to the SMTP server.
    Stopping,
    /// No SMTP connection was free before the claim's lease would have run out.
    TooLate,
    /// The event can never be mailed as it is (a 5xx to the message, a mail that cannot
    /// be composed).
    Permanent,
    /// No SMTP session: the server's or the settings' fault, never the event's.
    NoSession,
    /// Anything else worth another attempt.
    Failed,
}

impl Ended {
    /// Whether the decision needs the event's recorded waits (deliveries that found no
    /// SMTP session, which spend no retries).
    pub fn needs_waits(self) -> bool {
        self == Self::Failed
    }
}

/// What the loop knows of the delivery besides how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// JetStream's count of deliveries, this one included.
    pub attempt: u32,
    /// Earlier deliveries of the event that waited for an SMTP session.
    pub waits: u32,
    pub now: OffsetDateTime,
    /// When a mail for the event would be too late (its link would outlive its token).
    pub deadline: OffsetDateTime,
}

/// What the loop records before it answers JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    Nothing,
    /// A wait: lets the claim go and spends no retry.
    Wait,
    /// A failed attempt that will be retried.
    Failure,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Record `note`, count the event under `counted`, and ask for it again after `after`
    /// (at once with `None`).
    Again {
        note: Note,
        counted: &'static str,
        after: Option<Duration>,
    },
    /// Record the failure as final and move the event to the dead letters.
    GiveUp {
        reason: &'static str,
    },
}

/// How much later than a busy claim's lease a delivery comes back: by then the holder has
/// recorded the mail, or failed and let go.
const AFTER_LEASE: Duration = Duration::from_millis(100);

/// Before any work: an event whose link would outlive its token is not mailed at all.
pub fn too_late(now: OffsetDateTime, deadline: OffsetDateTime) -> Option<Verdict> {
    (now > deadline).then_some(Verdict::GiveUp { reason: "expired" })
}

/// What becomes of a delivery that ended as `ended`.
pub fn decide(ended: Ended, facts: Facts, backoff: &Backoff) -> Verdict {
    match ended {
        Ended::Done => Verdict::Ack,
        Ended::Busy { left } => Verdict::Again {
            note: Note::Nothing,
            counted: "busy",
            after: Some(left + AFTER_LEASE),
        },
        Ended::Stopping => Verdict::Again {
            note: Note::Wait,
            counted: "handed_back",
            after: None,
        },
        Ended::TooLate => Verdict::Again {
            note: Note::Wait,
            counted: "retried",
            after: Some(backoff.after(1).unwrap_or(Duration::from_secs(1))),
        },
        Ended::Permanent => Verdict::GiveUp {
            reason: "permanent",
        },
        Ended::NoSession => no_session(facts, backoff),
        Ended::Failed => failed(facts, backoff),
    }
}

/// An SMTP outage waits on the schedule (its last step once that runs out) for as long as
/// the link may still be sent, and is tried once more just before that, not given up a
/// whole delay early. It is never dead-lettered for running out of retries.
fn no_session(facts: Facts, backoff: &Backoff) -> Verdict {
    let scheduled = backoff
        .after(facts.attempt.max(1))
        .unwrap_or(backoff.longest());
    let left = Duration::try_from(facts.deadline - facts.now)
        .ok()
        .filter(|left| !left.is_zero());
    match left {
        Some(left) => Verdict::Again {
            note: Note::Wait,
            counted: "retried",
            after: Some(scheduled.min(left)),
        },
        None => Verdict::GiveUp { reason: "expired" },
    }
}

/// Any other failure spends a retry (waits for a session do not count), and is retried
/// while the schedule allows and the retry comes before the deadline.
fn failed(facts: Facts, backoff: &Backoff) -> Verdict {
    let spent = facts.attempt.saturating_sub(facts.waits).max(1);
    match backoff.after(spent) {
        Some(delay) if facts.now + delay < facts.deadline => Verdict::Again {
            note: Note::Failure,
            counted: "retried",
            after: Some(delay),
        },
        Some(_) => Verdict::GiveUp { reason: "expired" },
        None => Verdict::GiveUp {
            reason: "retries_exhausted",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn schedule() -> Backoff {
        Backoff(vec![S(2), S(10), S(30)])
    }

    fn facts(attempt: u32, waits: u32, left: i64) -> Facts {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        Facts {
            attempt,
            waits,
            now,
            deadline: now + time::Duration::seconds(left),
        }
    }

    fn again(note: Note, counted: &'static str, after: Option<Duration>) -> Verdict {
        Verdict::Again {
            note,
            counted,
            after,
        }
    }

    fn give_up(reason: &'static str) -> Verdict {
        Verdict::GiveUp { reason }
    }

    #[test]
    fn each_ending_has_its_verdict() {
        let table = [
            (Ended::Done, facts(1, 0, 600), Verdict::Ack),
            (
                Ended::Busy { left: S(3) },
                facts(2, 0, 600),
                again(Note::Nothing, "busy", Some(Duration::from_millis(3_100))),
            ),
            (
                Ended::Stopping,
                facts(1, 0, 600),
                again(Note::Wait, "handed_back", None),
            ),
            (
                Ended::TooLate,
                facts(5, 0, 600),
                again(Note::Wait, "retried", Some(S(2))),
            ),
            (Ended::Permanent, facts(1, 0, 600), give_up("permanent")),
            // Retries follow the schedule, one step per attempt...
            (
                Ended::Failed,
                facts(1, 0, 600),
                again(Note::Failure, "retried", Some(S(2))),
            ),
            (
                Ended::Failed,
                facts(3, 0, 600),
                again(Note::Failure, "retried", Some(S(30))),
            ),
            (
                Ended::Failed,
                facts(4, 0, 600),
                give_up("retries_exhausted"),
            ),
            // ...not counting deliveries that waited for a session...
            (
                Ended::Failed,
                facts(4, 2, 600),
                again(Note::Failure, "retried", Some(S(10))),
            ),
            (
                Ended::Failed,
                facts(2, 5, 600),
                again(Note::Failure, "retried", Some(S(2))),
            ),
            // ...and none that would come after the deadline.
            (Ended::Failed, facts(2, 0, 10), give_up("expired")),
            (
                Ended::Failed,
                facts(2, 0, 11),
                again(Note::Failure, "retried", Some(S(10))),
            ),
            // An outage waits on the schedule, then on its last step, never exhausted...
            (
                Ended::NoSession,
                facts(1, 0, 600),
                again(Note::Wait, "retried", Some(S(2))),
            ),
            (
                Ended::NoSession,
                facts(40, 0, 600),
                again(Note::Wait, "retried", Some(S(30))),
            ),
            // ...tried once more just before the deadline, and given up only after it.
            (
                Ended::NoSession,
                facts(40, 0, 7),
                again(Note::Wait, "retried", Some(S(7))),
            ),
            (Ended::NoSession, facts(40, 0, 0), give_up("expired")),
            (Ended::NoSession, facts(40, 0, -5), give_up("expired")),
        ];
        for (ended, facts, verdict) in table {
            assert_eq!(
                decide(ended, facts, &schedule()),
                verdict,
                "{ended:?} at attempt {}, {} waits",
                facts.attempt,
                facts.waits
            );
        }
    }

    #[test]
    fn an_empty_schedule_retries_nothing_but_still_waits_out_an_outage() {
        let none = Backoff(Vec::new());
        assert_eq!(
            decide(Ended::Failed, facts(1, 0, 600), &none),
            give_up("retries_exhausted")
        );
        assert_eq!(
            decide(Ended::NoSession, facts(1, 0, 600), &none),
            again(Note::Wait, "retried", Some(S(30)))
        );
        assert_eq!(
            decide(Ended::TooLate, facts(1, 0, 600), &none),
            again(Note::Wait, "retried", Some(S(1)))
        );
    }

    #[test]
    fn only_a_request_older_than_its_deadline_is_too_late_to_start() {
        let f = facts(1, 0, 0);
        assert_eq!(too_late(f.now, f.deadline), None);
        let past = f.deadline + time::Duration::milliseconds(1);
        assert_eq!(too_late(past, f.deadline), Some(give_up("expired")));
    }
}
