//! Connecting to NATS the same way from every binary.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

/// Where NATS is.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URL, or several separated by commas for a cluster (credentials may be given
    /// in it: `nats://user:pass@host:4222`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
}

impl NatsSettings {
    /// `NATS_URL` as logs and error messages may show it: without credentials.
    pub fn shown(&self) -> String {
        urls(&self.nats_url)
            .into_iter()
            .map(|raw| match url::Url::parse(raw) {
                Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                    let _ = url.set_password(None);
                    let _ = url.set_username("***");
                    url.to_string()
                }
                Ok(_) => raw.to_owned(),
                // It might hold credentials in a shape the parser did not follow.
                Err(_) => "<a URL that does not parse>".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl NatsSettings {
    /// The servers to dial, and options carrying the credentials written in `NATS_URL`. The
    /// client presents none it finds in a URL itself, so they are taken out of the URLs and
    /// given as options: `user:password@` as a user and password, a lone `token@` as a token.
    /// Where several URLs carry credentials, the first one's are used.
    pub fn connect_options(&self) -> (ConnectOptions, Vec<String>) {
        let (credentials, servers) = split_credentials(&self.nats_url);
        let options = match credentials {
            // Replies (PubAcks, pulled messages) come to inboxes under the user's own name, so
            // that NATS can let each user subscribe to its own and to no one else's.
            Some(Credentials::UserPassword(user, password)) if is_token(&user) => {
                ConnectOptions::new()
                    .custom_inbox_prefix(format!("_INBOX.{user}"))
                    .user_and_password(user, password)
            }
            Some(Credentials::UserPassword(user, password)) => {
                ConnectOptions::new().user_and_password(user, password)
            }
            Some(Credentials::Token(token)) => ConnectOptions::new().token(token),
            None => ConnectOptions::new(),
        };
        (options, servers)
    }
}

/// A user name that can stand as one subject token.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    UserPassword(String, String),
    Token(String),
}

fn split_credentials(raw: &str) -> (Option<Credentials>, Vec<String>) {
    let mut credentials = None;
    let servers = urls(raw)
        .into_iter()
        .map(|raw| {
            let Ok(mut url) = url::Url::parse(raw) else {
                return raw.to_owned();
            };
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(url.username());
            let found = match url.password().map(decode) {
                Some(password) => Credentials::UserPassword(user, password),
                None if user.is_empty() => return raw.to_owned(),
                None => Credentials::Token(user),
            };
            credentials.get_or_insert(found);
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        })
        .collect();
    (credentials, servers)
}

/// Connects without waiting for the server: the returned client keeps trying in the background,
/// so a binary can start (and report itself not ready) while NATS is still coming up.
pub async fn connect(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let (options, servers) = settings.connect_options();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    options
        .name(client_name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(servers.as_slice())
        .await
}

/// The seed servers of a comma-separated `NATS_URL`. (The client also learns the rest of a
/// cluster from the servers themselves.)
pub fn urls(raw: &str) -> Vec<&str> {
    raw.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_never_shown() {
        let settings = super::NatsSettings {
            nats_url: "nats://u:s3cret@n1:4222, nats://t0ken@n2:4222,nats://n3:4222".into(),
        };
        let shown = settings.shown();
        assert_eq!(
            shown,
            "nats://***@n1:4222,nats://***@n2:4222,nats://n3:4222"
        );
    }

    #[test]
    fn credentials_leave_the_urls_for_the_options() {
        let settings = super::NatsSettings {
            nats_url: "nats://api:p%40ss@n1:4222,nats://api:p%40ss@n2:4222,nats://n3:4222".into(),
        };
        let (credentials, servers) = super::split_credentials(&settings.nats_url);
        assert_eq!(
            servers,
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
        );
        assert_eq!(
            credentials,
            Some(super::Credentials::UserPassword(
                "api".into(),
                "p@ss".into()
            ))
        );
        let (credentials, servers) = super::split_credentials("nats://t0ken@n1:4222");
        assert_eq!(servers, ["nats://n1:4222"]);
        assert_eq!(credentials, Some(super::Credentials::Token("t0ken".into())));
        let (credentials, servers) = super::split_credentials("nats://127.0.0.1:4222");
        assert_eq!(
            (credentials, servers),
            (None, vec!["nats://127.0.0.1:4222".to_owned()])
        );
    }

    #[test]
    fn several_urls_are_split_on_commas() {
        assert_eq!(
            super::urls("nats://n1:4222, nats://n2:4222,nats://n3:4222"),
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
        );
        assert_eq!(
            super::urls("nats://127.0.0.1:4222"),
            ["nats://127.0.0.1:4222"]
        );
    }
}
