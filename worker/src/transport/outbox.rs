//! The quick start's way out: each email as an `.eml` file in a folder.

use std::path::PathBuf;

use lettre::Message;
use tokio::io::AsyncWriteExt;

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
        // Written aside and renamed, so a reader never sees half a message; readable by the
        // worker's user only, since each file holds a live reset link.
        let written = async {
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .await?;
            out.write_all(&message.formatted()).await?;
            out.flush().await?;
            drop(out);
            tokio::fs::rename(&partial, &file).await
        };
        written
            .await
            .map_err(|e| SendError::Transient(format!("writing {}: {e}", file.display())))?;
        tracing::info!(file = %file.display(), "email written to the outbox");
        Ok(())
    }
}
