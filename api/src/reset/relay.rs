//! The outbox relay: `PasswordChanged` and `Reported` events written in the reset's or the
//! report's own transaction are published from here, at once after it and again by the relay
//! loop for any that did not go (NATS away, or the api stopped in between).

use shared::event::{PASSWORD_CHANGED, REPORTED};
use uuid::Uuid;

use super::Resets;
use crate::publish::{Outgoing, Publisher};

/// Why a queued event is still in the outbox; the relay tries again.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("publishing: {0}")]
    Publish(#[from] crate::publish::PublishFailure),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Resets {
    /// Publishes one queued event and removes it from the outbox.
    pub async fn publish_queued(
        &self,
        publisher: &Publisher,
        event_id: Uuid,
        subject: &str,
        payload: Vec<u8>,
        request_id: &str,
    ) -> Result<(), OutboxError> {
        let msg_id = event_id.to_string();
        let event_type = if subject == self.subjects.reported() {
            REPORTED
        } else {
            PASSWORD_CHANGED
        };
        publisher
            .send(Outgoing {
                subject: subject.into(),
                event_type,
                request_id,
                payload,
                msg_id: Some(&msg_id),
            })
            .await?;
        sqlx::query("DELETE FROM event_outbox WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Publishes whatever the outbox still holds (events whose immediate publish failed, or
    /// whose api stopped in between). A repeated `Nats-Msg-Id` makes a double publish harmless.
    pub async fn relay_outbox(&self, publisher: &Publisher) -> Result<usize, OutboxError> {
        let queued: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT event_id, subject, payload FROM event_outbox
             WHERE created_at < now() - interval '2 seconds'
             ORDER BY created_at LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut published = 0;
        for (event_id, subject, payload) in queued {
            let request_id = request_id_of(&payload);
            self.publish_queued(publisher, event_id, &subject, payload, &request_id)
                .await?;
            published += 1;
        }
        Ok(published)
    }
}

/// The `request_id` every queued event carries, for the header.
fn request_id_of(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct WithRequestId {
        request_id: String,
    }
    serde_json::from_slice::<WithRequestId>(payload)
        .map(|e| e.request_id)
        .unwrap_or_default()
}
