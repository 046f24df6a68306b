//! The quick start's way out: each email as an `.eml` file in a folder.

use std::path::PathBuf;

use lettre::Message;

use super::SendError;

/// Writes each email as an `.eml` file: the quick start's mail, readable with any mail client.
#[derive(Debug)]
pub struct Outbox {
    pub(super) dir: PathBuf,
}

impl Outbox {
    pub(super) async fn write(&self, message: &Message, name: &str) -> Result<(), SendError> {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let file = self.dir.join(format!("{stamp}-{name}.eml"));
        let partial = self.dir.join(format!(".{stamp}-{name}.eml.partial"));
        // Written aside and renamed, so a reader never sees half a message.
        let written = async {
            tokio::fs::write(&partial, message.formatted()).await?;
            tokio::fs::rename(&partial, &file).await
        };
        written
            .await
            .map_err(|e| SendError::Transient(format!("writing {}: {e}", file.display())))?;
        tracing::info!(file = %file.display(), "email written to the outbox");
        Ok(())
    }
}
