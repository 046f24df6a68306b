//! Everything the worker keeps in PostgreSQL: processing records, tokens, and reads of
//! `accounts`. Queries are checked at run time, so building needs no database.

pub mod batch;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shared::event::ResetRequested;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use batch::Batcher;

/// A row of `accounts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub locale: Option<String>,
}

/// What a lookup of a request's `id` found.
#[derive(Debug)]
pub enum Lookup {
    Found(Account),
    NotFound,
    /// No account has this id and several share this email: mailing any of them would be a guess.
    Ambiguous(i64),
}

/// What a processing record says of its event: `Pending` while a mail is being sent; every
/// other outcome is final. Stored as text, which the table's CHECK constraint keeps to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pending,
    Sent,
    NoAccount,
    Throttled,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::NoAccount => "no_account",
            Self::Throttled => "throttled",
            Self::Failed => "failed",
        }
    }
}

/// A claim's answer for one event (`reset_find_and_claim`, `reset_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
enum ClaimAnswer {
    Proceed,
    Throttled,
    /// Decided before; the row's `done` says how.
    Done,
    NotFound,
    Ambiguous,
    /// Another delivery holds a live claim on the event; the row's `busy_for` says how long.
    Busy,
}

/// Which kind of email a processing record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reset,
    PasswordChanged,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::PasswordChanged => "password_changed",
        }
    }
}

/// What a processing record needs to know of an event, whatever its type.
#[derive(Debug, Clone)]
pub struct EventMeta {
    pub event_id: Uuid,
    pub request_id: String,
    pub at: time::OffsetDateTime,
    pub kind: Kind,
}

impl From<&ResetRequested> for EventMeta {
    fn from(event: &ResetRequested) -> Self {
        Self {
            event_id: event.event_id,
            request_id: event.request_id.clone(),
            at: event.requested_at,
            kind: Kind::Reset,
        }
    }
}

impl From<&shared::event::PasswordChanged> for EventMeta {
    fn from(event: &shared::event::PasswordChanged) -> Self {
        Self {
            event_id: event.event_id,
            request_id: event.request_id.clone(),
            at: event.changed_at,
            kind: Kind::PasswordChanged,
        }
    }
}

/// What a claim enforces: the per-account limits, and how long it keeps other deliveries of
/// its event from mailing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    pub token_ttl: Duration,
    pub lease: Duration,
}

/// One delivery of an event: JetStream's delivery count, and the id its claim is held under
/// (drawn afresh for each delivery, so two deliveries of one event never share a claim).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub attempt: u32,
    pub holder: Uuid,
}

impl Delivery {
    pub fn new(attempt: u32) -> Self {
        Self {
            attempt,
            holder: Uuid::now_v7(),
        }
    }

    fn attempt_i32(self) -> i32 {
        i32::try_from(self.attempt).unwrap_or(i32::MAX)
    }
}

/// Whether an earlier final outcome of the same event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any final outcome stands: a redelivery changes nothing.
    Normal,
    /// An operator asked to process the event again (replay, dead-letter retry): only `sent`
    /// stands, so an event is never mailed twice, but a failed or skipped one is decided anew.
    Again,
}

impl Mode {
    fn keeps(self, outcome: Outcome) -> bool {
        self == Self::Normal || outcome == Outcome::Sent
    }
}

/// A processing record as an operator reads it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Record {
    pub outcome: Outcome,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub account_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: time::OffsetDateTime,
}

impl Limits {
    pub fn new(policy: &crate::config::PolicySettings, lease: Duration) -> Self {
        Self {
            cooldown: policy.cooldown,
            max_cooldown: policy.max_cooldown,
            token_ttl: policy.token_ttl,
            lease,
        }
    }
}

/// The answer to "may this event be mailed now?".
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Go ahead: the token is stored and the account's older tokens are invalidated.
    Proceed,
    /// The account had its email recently or too often today; recorded as throttled.
    Throttled,
    /// The event was already decided (another delivery of it finished first).
    AlreadyDone(Outcome),
    /// Another delivery of the event holds its claim for this long yet: nothing was done.
    Busy(Duration),
}

/// What [`Store::find_and_claim`] found and decided.
#[derive(Debug)]
pub enum Resolution {
    Claimed(Account, Claim),
    NotFound,
    /// This many accounts share the email, and none has it as id.
    Ambiguous(i64),
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// Where [`Store::find_and_claim`] and [`Store::mark_sent`] queue their writes; started
    /// with the first one.
    writes: Arc<OnceLock<Batcher<Write, Written>>>,
}

/// Most claims and sent records written by one statement.
const WRITE_BATCH: usize = 256;

/// The longest a statement of the worker's may run, as PostgreSQL's `statement_timeout`
/// (an operator's replay of many events included): far above any claim's milliseconds.
const STATEMENT_TIMEOUT: &str = "30s";

/// A write queued for the next batch statement.
#[derive(Debug)]
enum Write {
    Claim(ClaimRequest),
    Sent(Uuid),
}

/// The answer to a [`Write`], of the same kind.
#[derive(Debug)]
enum Written {
    Claim(Result<Resolution, BatchError>),
    Sent(Result<(), BatchError>),
}

/// Why a queued database write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
    #[error("the database writer has stopped")]
    Stopped,
}

impl From<sqlx::Error> for BatchError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(Arc::new(err))
    }
}

/// One event for [`Store::find_and_claim`], as the batch statement takes it.
#[derive(Debug)]
struct ClaimRequest {
    event_id: Uuid,
    id: String,
    request_id: String,
    requested_at: time::OffsetDateTime,
    attempt: i32,
    holder: Uuid,
    token_hash: [u8; 32],
    limits: Limits,
    again: bool,
}

/// What `reset_find_account` says of an `id`; a claim row carries it too.
#[derive(Debug, sqlx::FromRow)]
struct FoundRow {
    id: Option<String>,
    email: Option<String>,
    display_name: Option<String>,
    locale: Option<String>,
    matches: i32,
}

impl FoundRow {
    /// No row means no account; a row without an account means several share the email.
    fn lookup(row: Option<Self>) -> Lookup {
        match row {
            None => Lookup::NotFound,
            Some(Self {
                id: Some(id),
                email: Some(email),
                display_name,
                locale,
                ..
            }) => Lookup::Found(Account {
                id,
                email,
                display_name,
                locale,
            }),
            Some(Self { matches: 0, .. }) => Lookup::NotFound,
            Some(Self { matches, .. }) => Lookup::Ambiguous(i64::from(matches)),
        }
    }
}

/// A row of `reset_find_and_claim`.
#[derive(Debug, sqlx::FromRow)]
struct ClaimRow {
    ord: i32,
    answer: ClaimAnswer,
    done: Option<Outcome>,
    busy_for: Option<f64>,
    #[sqlx(flatten)]
    found: FoundRow,
}

/// Writes a batch: its sent records and its claims in one statement when it has claims
/// (`reset_mark_sent_and_claim`: one round trip and one commit for the lot),
/// its sent records alone otherwise. Answers come back in the order of the writes.
async fn write_batch(pool: PgPool, batch: Vec<Write>) -> Vec<Written> {
    let mut claims = Vec::new();
    let mut sent = Vec::new();
    let is_claim: Vec<bool> = batch
        .into_iter()
        .map(|write| match write {
            Write::Claim(request) => {
                claims.push(request);
                true
            }
            Write::Sent(id) => {
                sent.push(id);
                false
            }
        })
        .collect();
    let (claimed, recorded) = if claims.is_empty() {
        (Vec::new(), record_sent(&pool, &sent).await)
    } else {
        match claim_rows(&pool, &sent, &claims).await {
            Ok(rows) => (claim_answers(rows, claims.len()), Ok(())),
            // The sent records must not share a claim's failure: an email whose record is
            // late is one that a redelivery would send again.
            Err(err) if !sent.is_empty() => (
                fail_all(claims.len(), err.into()),
                record_sent(&pool, &sent).await,
            ),
            Err(err) => (fail_all(claims.len(), err.into()), Ok(())),
        }
    };
    let mut claimed = claimed.into_iter();
    is_claim
        .into_iter()
        .map(|is_claim| {
            if is_claim {
                Written::Claim(claimed.next().unwrap_or(Err(BatchError::Stopped)))
            } else {
                Written::Sent(recorded.clone())
            }
        })
        .collect()
}

/// One answer per claim from the statement's rows, which must be one per claim, in order.
fn claim_answers(rows: Vec<ClaimRow>, claims: usize) -> Vec<Result<Resolution, BatchError>> {
    if rows.len() != claims {
        let err = sqlx::Error::Protocol(format!(
            "reset_find_and_claim answered {} rows for {claims} events",
            rows.len()
        ));
        return fail_all(claims, err.into());
    }
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| resolution(i, row).map_err(BatchError::from))
        .collect()
}

fn fail_all<T>(count: usize, err: BatchError) -> Vec<Result<T, BatchError>> {
    (0..count).map(|_| Err(err.clone())).collect()
}

async fn claim_rows(
    pool: &PgPool,
    sent: &[Uuid],
    batch: &[ClaimRequest],
) -> Result<Vec<ClaimRow>, sqlx::Error> {
    // The statement takes one array per field.
    fn column<'a, T>(batch: &'a [ClaimRequest], field: impl Fn(&'a ClaimRequest) -> T) -> Vec<T> {
        batch.iter().map(field).collect()
    }
    sqlx::query_as(
        "SELECT ord, answer, done, busy_for, id, email, display_name, locale, matches
         FROM reset_mark_sent_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(sent)
    .bind(column(batch, |c| c.event_id))
    .bind(column(batch, |c| c.id.as_str()))
    .bind(column(batch, |c| c.request_id.as_str()))
    .bind(column(batch, |c| c.requested_at))
    .bind(column(batch, |c| c.attempt))
    .bind(column(batch, |c| c.token_hash.to_vec()))
    .bind(column(batch, |c| c.limits.token_ttl.as_secs_f64()))
    .bind(column(batch, |c| c.limits.cooldown.as_secs_f64()))
    .bind(column(batch, |c| c.limits.max_cooldown.as_secs_f64()))
    .bind(column(batch, |c| c.again))
    .bind(column(batch, |c| c.holder))
    // One lease for the batch: every claim of a worker has the same.
    .bind(batch.first().map_or(0.0, |c| c.limits.lease.as_secs_f64()))
    .fetch_all(pool)
    .await
}

/// What one row says about the event at `index` of its batch.
fn resolution(index: usize, row: ClaimRow) -> Result<Resolution, sqlx::Error> {
    if usize::try_from(row.ord).ok() != Some(index + 1) {
        return Err(sqlx::Error::Protocol(format!(
            "reset_find_and_claim answered row {} in place {}",
            row.ord,
            index + 1
        )));
    }
    let account = match FoundRow::lookup(Some(row.found)) {
        Lookup::Found(account) => account,
        Lookup::NotFound => return Ok(Resolution::NotFound),
        Lookup::Ambiguous(count) => return Ok(Resolution::Ambiguous(count)),
    };
    let claim = match (row.answer, row.done) {
        (ClaimAnswer::Proceed, _) => Claim::Proceed,
        (ClaimAnswer::Throttled, _) => Claim::Throttled,
        (ClaimAnswer::Done, Some(done)) => Claim::AlreadyDone(done),
        (ClaimAnswer::Busy, _) => Claim::Busy(Duration::from_secs_f64(
            row.busy_for.unwrap_or(1.0).clamp(0.0, 86_400.0),
        )),
        (answer, done) => {
            return Err(sqlx::Error::Protocol(format!(
                "reset_find_and_claim answered {answer:?} ({done:?}) for an account it found"
            )));
        }
    };
    Ok(Resolution::Claimed(account, claim))
}

/// Writes sent records on their own (`reset_mark_sent`).
async fn record_sent(pool: &PgPool, ids: &[Uuid]) -> Result<(), BatchError> {
    sqlx::query("SELECT reset_mark_sent($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        // Every wait on the database has a bound: for a connection (5 s, below), and for a
        // statement, a lock it waits on included (a claim waits on its accounts' locks).
        let options = url
            .parse::<PgConnectOptions>()?
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // Opened at start and kept: a worker that joins just before a burst would
            // otherwise set up its connections, a process each on the server, while the
            // burst waits.
            .min_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx already pings every connection when it returns to the pool; a second ping
            // on the way out would add a round trip to every query. A connection that died
            // while idle fails its query, which is retried like any other database error.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            writes: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations. sqlx takes an advisory lock while migrating, so any
    /// number of workers may start at once.
    pub async fn migrate(&self) -> Result<(), shared::db::SchemaError> {
        shared::db::migrate(&self.pool).await
    }

    /// The outcome already recorded for an event, if it is final and stands in `mode`.
    pub async fn standing_outcome(
        &self,
        event_id: Uuid,
        mode: Mode,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let outcome: Option<Outcome> = sqlx::query_scalar(
            "SELECT outcome FROM reset_requests WHERE event_id = $1 AND outcome <> 'pending'",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(outcome.filter(|o| mode.keeps(*o)))
    }

    /// The processing record of an event, if any.
    pub async fn record(&self, event_id: Uuid) -> Result<Option<Record>, sqlx::Error> {
        sqlx::query_as(
            "SELECT outcome, attempts, last_error, account_id, sent_at, updated_at
             FROM reset_requests WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Why a mail to `account_id` would be throttled now (not counting `event_id` itself).
    pub async fn throttle_reason(
        &self,
        account_id: &str,
        event_id: Uuid,
        limits: Limits,
    ) -> Result<Option<String>, sqlx::Error> {
        // The same rule the claim applies (`reset_throttle_reason`).
        sqlx::query_scalar("SELECT reset_throttle_reason($1, $2, $3, $4)")
            .bind(account_id)
            .bind(event_id)
            .bind(limits.cooldown.as_secs_f64())
            .bind(limits.max_cooldown.as_secs_f64())
            .fetch_one(&self.pool)
            .await
    }

    /// Finds the account an `id` names: by account id first, else by email, case-insensitively
    /// (`reset_find_account`: the rule the claim uses too).
    pub async fn find_account(&self, id: &str) -> Result<Lookup, sqlx::Error> {
        let found = sqlx::query_as(
            "SELECT id, email, display_name, locale, matches FROM reset_find_account($1)",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(FoundRow::lookup(found))
    }

    /// [`Store::find_account`], then, if it is found, the claim: under a per-account lock,
    /// decides whether this event may be mailed now, and if so stores the new token's hash,
    /// invalidates the account's other live tokens (including one minted by an earlier
    /// attempt at this event) and marks the event pending.
    ///
    /// The lock serialises claims for one account across all workers, so a burst of requests
    /// for one account yields one email however many workers take part. Throttling counts
    /// `pending` and `sent` resets whose `claimed_at` is within the window, this event aside.
    ///
    /// Events claimed at about the same time go to the database together: one statement, one
    /// round trip and one commit for the lot (see [`Batcher`]).
    pub async fn find_and_claim(
        &self,
        event: &ResetRequested,
        delivery: Delivery,
        token_hash: &[u8; 32],
        limits: Limits,
        mode: Mode,
    ) -> Result<Resolution, BatchError> {
        let request = ClaimRequest {
            event_id: event.event_id,
            id: event.id.clone(),
            request_id: event.request_id.clone(),
            requested_at: event.requested_at,
            attempt: delivery.attempt_i32(),
            holder: delivery.holder,
            token_hash: *token_hash,
            limits,
            again: mode == Mode::Again,
        };
        match self.writer().call(Write::Claim(request)).await {
            Some(Written::Claim(result)) => result,
            _ => Err(BatchError::Stopped),
        }
    }

    /// The account with exactly this id.
    pub async fn account_by_id(&self, id: &str) -> Result<Option<Account>, sqlx::Error> {
        sqlx::query_as("SELECT id, email, display_name, locale FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Claims a notification's event for `delivery` as `reset_claim` claims a reset: a pending
    /// record held for `lease`, unless a final outcome stands in `mode` (`AlreadyDone`) or
    /// another delivery holds a live claim (`Busy`, counted as a wait).
    pub async fn claim_notification(
        &self,
        event: &EventMeta,
        delivery: Delivery,
        account_id: &str,
        lease: Duration,
        mode: Mode,
    ) -> Result<Claim, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The record may not exist yet: the lock, not FOR UPDATE, keeps two first deliveries
        // from both inserting it.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7042))")
            .bind(event.event_id)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(Outcome, Option<Uuid>, Option<f64>)> = sqlx::query_as(
            "SELECT outcome, lease_holder, extract(epoch FROM lease_until - now())::float8
             FROM reset_requests WHERE event_id = $1",
        )
        .bind(event.event_id)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some((outcome, _, _)) if outcome != Outcome::Pending && mode.keeps(outcome) => {
                return Ok(Claim::AlreadyDone(outcome));
            }
            Some((Outcome::Pending, holder, Some(left)))
                if left > 0.0 && holder != Some(delivery.holder) =>
            {
                sqlx::query(
                    "UPDATE reset_requests SET waits = waits + 1, updated_at = now()
                     WHERE event_id = $1",
                )
                .bind(event.event_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Claim::Busy(Duration::from_secs_f64(left.min(86_400.0))));
            }
            _ => {}
        }
        sqlx::query(
            "INSERT INTO reset_requests
                 (event_id, account_id, outcome, attempts, request_id, requested_at, kind,
                  lease_holder, lease_until)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
             ON CONFLICT (event_id) DO UPDATE
             SET account_id = EXCLUDED.account_id, outcome = 'pending',
                 attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
                 lease_holder = EXCLUDED.lease_holder, lease_until = EXCLUDED.lease_until,
                 updated_at = now()",
        )
        .bind(event.event_id)
        .bind(account_id)
        .bind(delivery.attempt_i32())
        .bind(&event.request_id)
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(delivery.holder)
        .bind(lease.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Claim::Proceed)
    }

    /// Records a final outcome reached without mailing (no account).
    pub async fn record_outcome(
        &self,
        event: &EventMeta,
        attempt: u32,
        account_id: Option<&str>,
        outcome: Outcome,
        note: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO reset_requests
                 (event_id, account_id, outcome, attempts, last_error, request_id, requested_at, kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (event_id) DO UPDATE
             SET outcome = EXCLUDED.outcome, attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
                 last_error = EXCLUDED.last_error, updated_at = now()",
        )
        .bind(event.event_id)
        .bind(account_id)
        .bind(outcome.as_str())
        .bind(attempt as i32)
        .bind(note)
        .bind(&event.request_id)
        .bind(event.at)
        .bind(event.kind.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the event's email as sent, and returns once that is committed.
    ///
    /// Under load many emails finish at about the same time; their records are written
    /// together, in the statement that carries the next batch of claims when one is queued
    /// (one round trip and one commit for both), on their own otherwise.
    pub async fn mark_sent(&self, event_id: Uuid) -> Result<(), BatchError> {
        match self.writer().call(Write::Sent(event_id)).await {
            Some(Written::Sent(result)) => result,
            _ => Err(BatchError::Stopped),
        }
    }

    /// The batcher behind [`Store::find_and_claim`] and [`Store::mark_sent`].
    fn writer(&self) -> &Batcher<Write, Written> {
        self.writes.get_or_init(|| {
            let pool = self.pool.clone();
            Batcher::start(WRITE_BATCH, move |batch| write_batch(pool.clone(), batch))
        })
    }

    /// Notes a failed attempt, and gives up the delivery's claim (if it still holds it) so the
    /// next delivery need not wait for its lease. When it is the last (`give_up`), the event
    /// is marked failed and its token invalidated: the email carrying it may never have
    /// arrived.
    pub async fn record_failure(
        &self,
        event: &EventMeta,
        delivery: Delivery,
        error: &str,
        give_up: bool,
    ) -> Result<(), sqlx::Error> {
        self.record_attempt(event, delivery, error, give_up, false)
            .await
    }

    /// Records a delivery that could not be the message's fault (no SMTP session; its claim
    /// about to run out before a connection was free): a failure like any other, one more of
    /// the event's `waits`, and the delivery's claim given up.
    pub async fn record_wait(
        &self,
        event: &EventMeta,
        delivery: Delivery,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        self.record_attempt(event, delivery, error, false, true)
            .await
    }

    async fn record_attempt(
        &self,
        event: &EventMeta,
        delivery: Delivery,
        error: &str,
        give_up: bool,
        wait: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO reset_requests
                 (event_id, outcome, attempts, last_error, request_id, requested_at, kind, waits)
             VALUES ($1, CASE WHEN $5 THEN 'failed' ELSE 'pending' END, $2, $3, $4, $6, $7,
                     CASE WHEN $9 THEN 1 ELSE 0 END)
             ON CONFLICT (event_id) DO UPDATE
             SET last_error = EXCLUDED.last_error,
                 attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
                 outcome = CASE WHEN $5 THEN 'failed' ELSE reset_requests.outcome END,
                 waits = reset_requests.waits + EXCLUDED.waits,
                 lease_until = CASE WHEN reset_requests.lease_holder = $8 THEN NULL
                                    ELSE reset_requests.lease_until END,
                 updated_at = now()
             WHERE reset_requests.outcome IN ('pending', 'failed')",
        )
        .bind(event.event_id)
        .bind(delivery.attempt_i32())
        .bind(error)
        .bind(&event.request_id)
        .bind(give_up)
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(delivery.holder)
        .bind(wait)
        .execute(&mut *tx)
        .await?;
        if give_up {
            sqlx::query(
                "UPDATE reset_tokens SET invalidated_at = now()
                 WHERE event_id = $1 AND used_at IS NULL AND invalidated_at IS NULL",
            )
            .bind(event.event_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// How many deliveries of the event were waits, not failures of the message.
    pub async fn waits(&self, event_id: Uuid) -> Result<u32, sqlx::Error> {
        let waits: Option<i32> =
            sqlx::query_scalar("SELECT waits FROM reset_requests WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(waits.map_or(0, |w| u32::try_from(w).unwrap_or(0)))
    }
}
