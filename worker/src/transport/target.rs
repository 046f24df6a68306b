//! Where the SMTP server is and how to reach it, from `SMTP_URL` and `SMTP_CA_FILE`.

use std::path::PathBuf;
use std::sync::Arc;

use lettre::transport::smtp::{
    authentication::Credentials,
    client::{Certificate, TlsParameters},
};
use tokio_rustls::rustls;

use super::TransportSettingsError;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS (`smtp://`): for a relay on the same host or network.
    Plain,
    /// STARTTLS if the server offers it (`?tls=opportunistic`).
    Opportunistic,
    /// STARTTLS, and fail if the server does not offer it (`?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// An SMTP server and how to talk to it.
#[derive(Clone)]
pub struct SmtpTarget {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) security: Security,
    pub(super) credentials: Option<Credentials>,
    extra_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl SmtpTarget {
    pub fn parse(
        raw: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, TransportSettingsError> {
        let url = url::Url::parse(raw)?;
        let mut security = match url.scheme() {
            "smtp" => Security::Plain,
            "smtps" => Security::Implicit,
            other => return Err(TransportSettingsError::Scheme(other.to_owned())),
        };
        for (key, value) in url.query_pairs() {
            if key == "tls" && security != Security::Implicit {
                security = match value.as_ref() {
                    "none" => Security::Plain,
                    "required" => Security::StartTls,
                    "opportunistic" => Security::Opportunistic,
                    other => return Err(TransportSettingsError::TlsMode(other.to_owned())),
                };
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(TransportSettingsError::NoHost)?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::Implicit => 465,
            Security::StartTls => 587,
            Security::Plain | Security::Opportunistic => 25,
        });
        let decode = |s: &str| percent_decode(s);
        let credentials = (!url.username().is_empty()).then(|| {
            Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        // Opportunistic STARTTLS falls back to plain text when the server offers no TLS (or
        // someone in between strips the offer): credentials need TLS for certain.
        if credentials.is_some() && matches!(security, Security::Plain | Security::Opportunistic) {
            return Err(TransportSettingsError::PlainCredentials);
        }
        let extra_ca = ca_file
            .map(|path| {
                std::fs::read(path)
                    .map_err(|e| TransportSettingsError::CaFileUnread(path.to_owned(), e))
            })
            .transpose()?;
        let target = Self {
            host,
            port,
            security,
            credentials,
            extra_ca,
        };
        // Fail at start-up, not at the first email, if the TLS settings are unusable.
        if target.security != Security::Plain {
            let unusable = |e: TlsError| {
                TransportSettingsError::CaFile(ca_file.map(PathBuf::from).unwrap_or_default(), e)
            };
            target
                .tls_parameters()
                .map_err(|e| unusable(TlsError::Lettre(e)))?;
            if target.security == Security::Implicit {
                target.rustls_config().map_err(unusable)?;
            }
        }
        Ok(target)
    }

    pub(super) fn tls_parameters(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut builder = TlsParameters::builder(self.host.clone());
        if let Some(pem) = &self.extra_ca {
            builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
        }
        builder.build_rustls()
    }

    pub(super) fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.extra_ca {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert?)?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Why the TLS settings for SMTP cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Lettre(lettre::transport::smtp::Error),
    #[error("reading the PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_choose_security_and_default_ports() {
        let plain = SmtpTarget::parse("smtp://mail.example.com", None).expect("url");
        assert_eq!((plain.security, plain.port), (Security::Plain, 25));
        let starttls =
            SmtpTarget::parse("smtp://mail.example.com?tls=required", None).expect("url");
        assert_eq!(
            (starttls.security, starttls.port),
            (Security::StartTls, 587)
        );
        let implicit = SmtpTarget::parse("smtps://mail.example.com", None).expect("url");
        assert_eq!(
            (implicit.security, implicit.port),
            (Security::Implicit, 465)
        );
        let explicit = SmtpTarget::parse("smtp://127.0.0.1:2525", None).expect("url");
        assert_eq!((explicit.host.as_str(), explicit.port), ("127.0.0.1", 2525));
    }
    #[test]
    fn credentials_are_percent_decoded_and_never_printed() {
        let target = SmtpTarget::parse(
            "smtp://user%40example.com:p%40ss+word@mail.example.com?tls=required",
            None,
        )
        .expect("url");
        let credentials = target.credentials.clone().expect("credentials");
        assert_eq!(
            credentials,
            Credentials::new("user@example.com".into(), "p@ss+word".into())
        );
        assert!(!format!("{target:?}").contains("p@ss"));
    }
    #[test]
    fn bad_smtp_urls_are_refused() {
        assert!(matches!(
            SmtpTarget::parse("http://x", None),
            Err(TransportSettingsError::Scheme(_))
        ));
        assert!(matches!(
            SmtpTarget::parse("smtp://x?tls=maybe", None),
            Err(TransportSettingsError::TlsMode(_))
        ));
        assert!(SmtpTarget::parse("not a url", None).is_err());
        for plain in [
            "smtp://user:secret@mail.example.com",
            "smtp://user:secret@mail.example.com?tls=none",
            "smtp://user:secret@mail.example.com?tls=opportunistic",
        ] {
            let refused = SmtpTarget::parse(plain, None);
            assert!(
                matches!(refused, Err(TransportSettingsError::PlainCredentials)),
                "{plain}: {refused:?}"
            );
        }
        assert!(SmtpTarget::parse("smtps://user:secret@mail.example.com", None).is_ok());
    }
}
