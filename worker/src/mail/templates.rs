//! Email templates: handlebars, one folder per locale and email kind.
//!
//! ```text
//! templates/
//!   en/reset_password/subject.hbs   one line
//!   en/reset_password/text.hbs      the plain-text part
//!   en/reset_password/html.hbs      the HTML part
//!   de/reset_password/...
//! ```
//!
//! Every template is compiled at start-up and rendered once with sample data, in strict mode:
//! a syntax error or a misspelt variable stops the worker with the file's name. Only the HTML
//! part is HTML-escaped; subject and text are rendered with a registry that does not escape,
//! so a link in the text part keeps its `&`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use handlebars::{Context, Handlebars};
use serde::Serialize;

/// The locale used when an account has none, or one without templates.
pub const FALLBACK_LOCALE: &str = "en";

/// The email kinds this build sends, each a folder per locale.
pub const KINDS: &[&str] = &["reset_password", "password_changed"];

const PARTS: [&str; 3] = ["subject", "text", "html"];

/// What a template may use. Every field is always present (absent values are `null`), so
/// strict mode only trips on real mistakes. Nothing here is text a requester chose: the
/// request's `User-Agent` would let anyone put words (a link, say) into a genuine mail from
/// the operator's domain, so it is not offered; the address is a parsed IP.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateData {
    pub display_name: Option<String>,
    pub email: String,
    pub reset_url: String,
    /// The one-time code, as `7K3M-Q9XD`: the link's secret for people who cannot open it.
    pub code: String,
    /// The reset page without a token, where the code is entered.
    pub page_url: String,
    /// "I did not ask for this": the api's page that reports this mail.
    pub report_url: String,
    pub expires_in_minutes: u64,
    pub app_name: String,
    pub support_email: String,
    pub requested_at: String,
    pub ip: Option<String>,
}

impl TemplateData {
    /// Data shaped like a real email's, for the start-up check.
    pub fn sample() -> Self {
        Self {
            display_name: Some("Ada Lovelace".into()),
            email: "ada@example.com".into(),
            reset_url: "https://example.com/reset?a=1&token=SAMPLE".into(),
            code: "7K3M-Q9XD".into(),
            page_url: "https://example.com/reset?a=1".into(),
            report_url: "https://example.com/reset/report?r=r.SAMPLE.SAMPLE".into(),
            expires_in_minutes: 30,
            app_name: "Example".into(),
            support_email: "support@example.com".into(),
            requested_at: "2026-01-01 12:00 UTC".into(),
            ip: Some("203.0.113.7".into()),
        }
    }
}

/// What the `password_changed` templates may use.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedData {
    pub display_name: Option<String>,
    pub email: String,
    pub app_name: String,
    pub support_email: String,
    pub changed_at: String,
    pub ip: Option<String>,
    /// "This wasn't me": the api's page that reports this change.
    pub report_url: String,
}

impl ChangedData {
    pub fn sample() -> Self {
        Self {
            display_name: Some("Ada Lovelace".into()),
            email: "ada@example.com".into(),
            app_name: "Example".into(),
            support_email: "support@example.com".into(),
            changed_at: "2026-01-01 12:00 UTC".into(),
            ip: Some("203.0.113.7".into()),
            report_url: "https://example.com/reset/report?r=c.SAMPLE.SAMPLE".into(),
        }
    }
}

/// Sample data for the start-up check of `kind`.
fn sample(kind: &str) -> serde_json::Value {
    let value = if kind == "password_changed" {
        serde_json::to_value(ChangedData::sample())
    } else {
        serde_json::to_value(TemplateData::sample())
    };
    value.unwrap_or_default()
}

/// One rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub locale: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A template problem, with the file it is in.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("templates folder {0} (TEMPLATES_DIR) cannot be read: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error(
        "no `{FALLBACK_LOCALE}` templates for `{kind}` in {dir}: the fallback locale must have every email kind"
    )]
    NoFallback { dir: PathBuf, kind: String },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("rendering {name}: {message}")]
    Render { name: String, message: String },
}

/// All templates, compiled.
#[derive(Debug)]
pub struct Templates {
    /// Subject and text: no escaping.
    plain: Handlebars<'static>,
    /// HTML: handlebars' HTML escaping.
    html: Handlebars<'static>,
    locales: BTreeSet<String>,
}

impl Templates {
    /// Loads, compiles and test-renders every template under `dir`.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        let mut html = Handlebars::new();
        html.set_strict_mode(true);

        let mut locales = BTreeSet::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| TemplateError::Folder(dir.to_owned(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TemplateError::Folder(dir.to_owned(), e))?;
            if !entry.path().is_dir() {
                continue;
            }
            let locale = entry.file_name().to_string_lossy().to_lowercase();
            for kind in KINDS {
                let kind_dir = entry.path().join(kind);
                if !kind_dir.is_dir() {
                    continue;
                }
                for part in PARTS {
                    let file = kind_dir.join(format!("{part}.hbs"));
                    let source =
                        std::fs::read_to_string(&file).map_err(|e| TemplateError::File {
                            file: file.clone(),
                            message: e.to_string(),
                        })?;
                    let registry = if part == "html" {
                        &mut html
                    } else {
                        &mut plain
                    };
                    registry
                        .register_template_string(&name(&locale, kind, part), source)
                        .map_err(|e| TemplateError::File {
                            file: file.clone(),
                            message: e.to_string(),
                        })?;
                }
            }
            locales.insert(locale);
        }
        let templates = Self {
            plain,
            html,
            locales,
        };
        templates.check(dir)?;
        Ok(templates)
    }

    /// Every kind has fallback templates, and every template renders with sample data.
    fn check(&self, dir: &Path) -> Result<(), TemplateError> {
        for kind in KINDS {
            let sample = sample(kind);
            if !self
                .plain
                .has_template(&name(FALLBACK_LOCALE, kind, "subject"))
            {
                return Err(TemplateError::NoFallback {
                    dir: dir.to_owned(),
                    kind: (*kind).to_owned(),
                });
            }
            for locale in &self.locales {
                for part in PARTS {
                    let registry = if part == "html" {
                        &self.html
                    } else {
                        &self.plain
                    };
                    let name = name(locale, kind, part);
                    if !registry.has_template(&name) {
                        continue;
                    }
                    registry
                        .render(&name, &sample)
                        .map_err(|e| TemplateError::File {
                            file: dir.join(locale).join(kind).join(format!("{part}.hbs")),
                            message: e.to_string(),
                        })?;
                }
            }
        }
        Ok(())
    }

    pub fn locales(&self) -> impl Iterator<Item = &str> {
        self.locales.iter().map(String::as_str)
    }

    /// Renders `kind` in the account's locale: the exact locale (`pt-br`), else its language
    /// (`pt`), else [`FALLBACK_LOCALE`].
    pub fn render<T: Serialize>(
        &self,
        kind: &str,
        locale: Option<&str>,
        data: &T,
    ) -> Result<Rendered, TemplateError> {
        let locale = self.locale_for(kind, locale);
        // The data as handlebars holds it, made once for the three parts.
        let context = Context::wraps(data).map_err(|e| TemplateError::Render {
            name: name(&locale, kind, "*"),
            message: e.to_string(),
        })?;
        let render = |registry: &Handlebars<'static>, part: &str| {
            let name = name(&locale, kind, part);
            registry
                .render_with_context(&name, &context)
                .map_err(|e| TemplateError::Render {
                    name,
                    message: e.to_string(),
                })
        };
        let subject = render(&self.plain, "subject")?;
        Ok(Rendered {
            // A subject is one line, whatever the template did with white space.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: render(&self.plain, "text")?,
            html: render(&self.html, "html")?,
            locale,
        })
    }

    /// The locale whose templates an account with locale `wanted` gets for `kind`.
    pub fn locale_for(&self, kind: &str, wanted: Option<&str>) -> String {
        let has = |locale: &str| self.plain.has_template(&name(locale, kind, "subject"));
        if let Some(wanted) = wanted {
            let wanted = wanted.trim().to_lowercase().replace('_', "-");
            if has(&wanted) {
                return wanted;
            }
            if let Some((language, _)) = wanted.split_once('-')
                && has(language)
            {
                return language.to_owned();
            }
        }
        FALLBACK_LOCALE.to_owned()
    }
}

fn name(locale: &str, kind: &str, part: &str) -> String {
    format!("{locale}/{kind}/{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Templates {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        Templates::load(&dir).expect("the shipped templates load")
    }

    /// A minimal valid template set in `en` for every kind but `except`.
    fn write_other_kinds(dir: &Path, except: &str) {
        for kind in KINDS.iter().filter(|k| **k != except) {
            write(dir, "en", kind, ["s", "t", "h"]);
        }
    }

    fn write(dir: &Path, locale: &str, kind: &str, parts: [&str; 3]) {
        let folder = dir.join(locale).join(kind);
        std::fs::create_dir_all(&folder).expect("mkdir");
        for (part, body) in PARTS.iter().zip(parts) {
            std::fs::write(folder.join(format!("{part}.hbs")), body).expect("write");
        }
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("templates-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn the_shipped_templates_cover_english_and_german() {
        let templates = shipped();
        let locales: Vec<&str> = templates.locales().collect();
        assert!(
            locales.contains(&"en") && locales.contains(&"de"),
            "{locales:?}"
        );
    }

    #[test]
    fn links_keep_their_ampersands_in_text_and_are_escaped_in_html() {
        let rendered = shipped()
            .render("reset_password", Some("en"), &TemplateData::sample())
            .expect("render");
        assert!(
            rendered
                .text
                .contains("https://example.com/reset?a=1&token=SAMPLE")
        );
        assert!(!rendered.text.contains("&amp;"));
        // handlebars escapes `=` too (`&#x3D;`); browsers read both back in an href.
        assert!(rendered.html.contains("&amp;token"), "{}", rendered.html);
        assert!(!rendered.html.contains("1&token"));
    }

    #[test]
    fn html_special_characters_in_data_are_escaped_only_in_html() {
        let mut data = TemplateData::sample();
        data.display_name = Some("<b>Eve</b>".into());
        let rendered = shipped()
            .render("reset_password", Some("en"), &data)
            .expect("render");
        assert!(rendered.html.contains("&lt;b&gt;Eve&lt;/b&gt;"));
        assert!(!rendered.html.contains("<b>Eve"));
        assert!(rendered.text.contains("<b>Eve</b>"));
    }

    #[test]
    fn a_null_display_name_gets_a_neutral_greeting() {
        let mut data = TemplateData::sample();
        data.display_name = None;
        let rendered = shipped()
            .render("reset_password", Some("en"), &data)
            .expect("render");
        assert!(!rendered.text.contains("Ada"));
        assert!(rendered.text.starts_with("Hello,"), "{}", rendered.text);
    }

    #[test]
    fn locales_fall_back_from_region_to_language_to_english() {
        let templates = shipped();
        let sample = TemplateData::sample();
        let pick = |l: Option<&str>| {
            templates
                .render("reset_password", l, &sample)
                .expect("render")
                .locale
        };
        assert_eq!(pick(Some("de")), "de");
        assert_eq!(pick(Some("de_AT")), "de");
        assert_eq!(pick(Some("DE-de")), "de");
        assert_eq!(pick(Some("pt-BR")), "en");
        assert_eq!(pick(None), "en");
    }

    #[test]
    fn a_misspelt_variable_stops_loading_and_names_the_file() {
        let dir = scratch();
        write_other_kinds(&dir, "reset_password");
        write(
            &dir,
            "en",
            "reset_password",
            ["Reset", "{{reset_ulr}}", "<p>{{reset_url}}</p>"],
        );
        let err = Templates::load(&dir).expect_err("strict mode");
        let message = err.to_string();
        assert!(message.contains("en/reset_password/text.hbs"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let dir = scratch();
        write_other_kinds(&dir, "reset_password");
        write(
            &dir,
            "en",
            "reset_password",
            ["Reset", "ok", "<p>{{#if reset_url}}</p>"],
        );
        let err = Templates::load(&dir).expect_err("syntax");
        assert!(err.to_string().contains("html.hbs"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn english_templates_are_required() {
        let dir = scratch();
        write(&dir, "de", "reset_password", ["a", "b", "c"]);
        assert!(matches!(
            Templates::load(&dir),
            Err(TemplateError::NoFallback { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
