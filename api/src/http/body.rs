//! Reading the `id` out of a request body, whichever of the three media types it came in.
//!
//! Every path ends in [`AccountRef::parse`]. Whatever the format, the body must name exactly one
//! `id`, as a string: a repeated `id`, an array or an object is refused rather than resolved to
//! one of its values, because a parser that quietly picks "the first" or "the last" of several
//! addresses is how a reset email has been sent to an attacker's second address before.

use http::HeaderValue;
use quick_xml::{Reader, events::Event};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use shared::account::{AccountRef, AccountRefError};

/// The body formats the endpoint reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Xml,
    Form,
}

const ACCEPTED: &str =
    "application/json, application/xml, text/xml or application/x-www-form-urlencoded";

/// Why a `Content-Type` is refused (415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    #[error("missing Content-Type: send {ACCEPTED}")]
    Missing,
    #[error("unsupported Content-Type `{0}`: send {ACCEPTED}")]
    Unsupported(String),
    #[error("unsupported charset `{0}`: bodies must be UTF-8")]
    Charset(String),
}

/// Why a body is refused (400). The texts are shown to clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("malformed form body: {0}")]
    Form(String),
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("XML with a DOCTYPE is not accepted (no DTDs, no custom entities)")]
    XmlDoctype,
    #[error("the XML root element must be <item>, not <{0}>")]
    XmlRoot(String),
    #[error("the XML body must hold exactly one <item> element")]
    XmlRootCount,
    #[error("fields must hold text only, not elements")]
    XmlNested,
    #[error("unexpected text outside the fields")]
    XmlStrayText,
    #[error("unknown XML entity `&{0};`")]
    XmlEntity(String),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("send either `token` (from the link) or `id` and `code` (from the email), not both")]
    TokenAndCode,
    #[error("`token` is missing: send the link's `token`, or `id` and the email's `code`")]
    NoSecret,
    #[error("`{0}` is given more than once: send exactly one")]
    Repeated(&'static str),
    #[error("`{0}` must be a string, not {1}")]
    NotString(&'static str, &'static str),
    #[error("unexpected field `{0}`: the body takes only {1}")]
    UnknownField(String, String),
    #[error(transparent)]
    Id(#[from] AccountRefError),
}

impl BodyError {
    /// The text for the log: the client's own text (a field name, a parser's quote of the
    /// body) stays out, since a password sent with an unencoded `&` turns its tail into a
    /// field name.
    pub fn log_text(&self) -> String {
        match self {
            Self::Json(_) => "malformed JSON".into(),
            Self::Form(_) => "malformed form body".into(),
            Self::Xml(_) => "malformed XML".into(),
            Self::XmlRoot(_) => "the XML root element is not <item>".into(),
            Self::XmlEntity(_) => "unknown XML entity".into(),
            Self::UnknownField(_, expected) => {
                format!("an unexpected field (name not logged): the body takes only {expected}")
            }
            other => other.to_string(),
        }
    }
}

/// Reads the media type (case-insensitive, parameters allowed, charset must be UTF-8).
pub fn media_type(header: Option<&HeaderValue>) -> Result<MediaType, MediaTypeError> {
    let raw = header
        .ok_or(MediaTypeError::Missing)?
        .to_str()
        .map_err(|_| MediaTypeError::Unsupported("(not ASCII)".into()))?;
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/json" => MediaType::Json,
        "application/xml" | "text/xml" => MediaType::Xml,
        "application/x-www-form-urlencoded" => MediaType::Form,
        "" => return Err(MediaTypeError::Missing),
        _ => return Err(MediaTypeError::Unsupported(clip(raw.trim()))),
    };
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let value = value.trim().trim_matches('"');
            if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("us-ascii") {
                return Err(MediaTypeError::Charset(clip(value)));
            }
        }
    }
    Ok(kind)
}

/// Reads the `id` from a body of the given media type.
pub fn parse(kind: MediaType, body: &[u8]) -> Result<AccountRef, BodyError> {
    let [id] = parse_fields(kind, body, ["id"])?;
    Ok(AccountRef::parse(&id)?)
}

/// Reads exactly the named string fields, each once, and nothing else, in the order named.
///
/// A form body that is a JSON object is read as JSON: the published example sends exactly
/// that (`content-type: application/x-www-form-urlencoded` with `{"id":"..."}`), and a form
/// field name never starts with `{`.
pub fn parse_fields<const N: usize>(
    kind: MediaType,
    body: &[u8],
    names: [&'static str; N],
) -> Result<[String; N], BodyError> {
    let found = parse_some_fields(kind, body, names)?;
    let mut values: [String; N] = std::array::from_fn(|_| String::new());
    for (index, value) in found.into_iter().enumerate() {
        values[index] = value.ok_or(BodyError::Missing(names[index]))?;
    }
    Ok(values)
}

/// Like [`parse_fields`], for bodies that name one of several sets of fields: each named
/// field at most once, and nothing else; which are present is for the caller to judge.
pub fn parse_some_fields<const N: usize>(
    kind: MediaType,
    body: &[u8],
    names: [&'static str; N],
) -> Result<[Option<String>; N], BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let fields = match kind {
        MediaType::Json => json_fields(text)?,
        MediaType::Form if text.trim_start().starts_with('{') => json_fields(text)?,
        MediaType::Form => form_fields(text)?,
        MediaType::Xml => xml_fields(text)?,
    };
    pick(fields, names)
}

/// One field of a body, with only as much of its value as the rules need.
enum Field {
    Text(String),
    NotText(&'static str),
}

/// Applies the shared rules to a body's fields: each named field exactly once, a string,
/// and nothing else.
fn pick<const N: usize>(
    fields: Vec<(String, Field)>,
    names: [&'static str; N],
) -> Result<[Option<String>; N], BodyError> {
    let mut found: [Option<Field>; N] = std::array::from_fn(|_| None);
    for (name, value) in fields {
        let Some(index) = names.iter().position(|n| *n == name) else {
            // `id[]=a&id[]=b` and `id[0]=a` are how forms smuggle arrays in.
            if let Some(field) = names
                .iter()
                .find(|n| name.starts_with(&format!("{n}[")) || name.starts_with(&format!("{n}.")))
            {
                return Err(BodyError::NotString(field, "an array or an object"));
            }
            let quoted = names.map(|n| format!("`{n}`"));
            let expected = match quoted.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                _ => quoted.join(""),
            };
            return Err(BodyError::UnknownField(clip(&name), expected));
        };
        if found[index].is_some() {
            return Err(BodyError::Repeated(names[index]));
        }
        found[index] = Some(value);
    }
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (index, field) in found.into_iter().enumerate() {
        match field {
            Some(Field::Text(text)) => values[index] = Some(text),
            Some(Field::NotText(kind)) => return Err(BodyError::NotString(names[index], kind)),
            None => {}
        }
    }
    Ok(values)
}

/// A JSON object's members in order, duplicates kept (serde_json's own maps keep only the last).
struct JsonFields(Vec<(String, Field)>);

impl<'de> Deserialize<'de> for JsonFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = JsonFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a JSON object like {"id": "..."}"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonFields, A::Error> {
                let mut fields = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(s) => Field::Text(s),
                        serde_json::Value::Array(_) => Field::NotText("an array"),
                        serde_json::Value::Object(_) => Field::NotText("an object"),
                        serde_json::Value::Number(_) => Field::NotText("a number"),
                        serde_json::Value::Bool(_) => Field::NotText("a boolean"),
                        serde_json::Value::Null => Field::NotText("null"),
                    };
                    fields.push((name, value));
                }
                Ok(JsonFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn json_fields(text: &str) -> Result<Vec<(String, Field)>, BodyError> {
    let JsonFields(fields) =
        serde_json::from_str(text).map_err(|e| BodyError::Json(e.to_string()))?;
    Ok(fields)
}

fn form_fields(text: &str) -> Result<Vec<(String, Field)>, BodyError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(text).map_err(|e| BodyError::Form(e.to_string()))?;
    // Percent-decoding is lossy: invalid UTF-8 (`id=%FF`) comes back as U+FFFD.
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err(BodyError::NotUtf8);
    }
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (k, Field::Text(v)))
        .collect())
}

/// Reads `<item><id>…</id></item>` with a streaming reader, so that the root's name, repeated
/// elements and DTDs are all seen and refused rather than ignored. No DTD means no entity can be
/// declared, so external-entity and entity-expansion payloads fail at the `<!DOCTYPE`.
fn xml_fields(text: &str) -> Result<Vec<(String, Field)>, BodyError> {
    let xml_err = |e: quick_xml::Error| BodyError::Xml(e.to_string());
    let mut reader = Reader::from_str(text);
    let mut roots = 0;
    // Depth 1: inside <item>; depth 2: inside a field of it.
    let mut depth = 0usize;
    let mut fields: Vec<(String, Field)> = Vec::new();
    let mut current: Option<String> = None;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match event {
            Event::DocType(_) => return Err(BodyError::XmlDoctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(ref start) | Event::Empty(ref start) if depth == 0 => {
                roots += 1;
                if roots > 1 {
                    return Err(BodyError::XmlRootCount);
                }
                let name = start.name();
                if name.as_ref() != "item" {
                    return Err(BodyError::XmlRoot(clip(name.as_ref())));
                }
                if matches!(event, Event::Start(_)) {
                    depth = 1;
                }
            }
            Event::Start(start) if depth == 1 => {
                fields.push((start.name().as_ref().to_owned(), Field::Text(String::new())));
                current = Some(String::new());
                depth = 2;
            }
            Event::Empty(start) if depth == 1 => {
                fields.push((start.name().as_ref().to_owned(), Field::Text(String::new())));
            }
            Event::Start(_) | Event::Empty(_) => return Err(BodyError::XmlNested),
            Event::Text(t) => match current.as_mut() {
                Some(buf) if depth == 2 => buf.push_str(&t.xml10_content()),
                _ if t.trim().is_empty() => {}
                _ => return Err(BodyError::XmlStrayText),
            },
            Event::CData(t) => match current.as_mut() {
                Some(buf) if depth == 2 => buf.push_str(&t.xml10_content()),
                _ => return Err(BodyError::XmlStrayText),
            },
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref().map_err(xml_err)? {
                    Some(ch) => ch,
                    None => predefined_entity(&r).ok_or_else(|| BodyError::XmlEntity(clip(&r)))?,
                };
                match current.as_mut() {
                    Some(buf) if depth == 2 => buf.push(ch),
                    _ => return Err(BodyError::XmlStrayText),
                }
            }
            Event::End(_) => {
                if depth == 2
                    && let (Some(text), Some((_, slot))) = (current.take(), fields.last_mut())
                {
                    *slot = Field::Text(text);
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
        }
    }
    if roots == 0 {
        return Err(BodyError::XmlRootCount);
    }
    Ok(fields)
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

/// Client-supplied text echoed in an error message is cut short.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(kind: MediaType, body: &str) -> Result<String, BodyError> {
        parse(kind, body.as_bytes()).map(|a| a.as_str().to_owned())
    }

    fn ct(value: &'static str) -> Result<MediaType, MediaTypeError> {
        media_type(Some(&HeaderValue::from_static(value)))
    }

    #[test]
    fn media_types_are_case_insensitive_and_take_parameters() {
        assert_eq!(ct("Application/JSON; charset=UTF-8"), Ok(MediaType::Json));
        assert_eq!(ct("text/xml"), Ok(MediaType::Xml));
        assert_eq!(ct("application/xml;charset=\"utf-8\""), Ok(MediaType::Xml));
        assert_eq!(ct("application/x-www-form-urlencoded"), Ok(MediaType::Form));
    }

    #[test]
    fn other_media_types_and_charsets_are_refused() {
        assert_eq!(media_type(None), Err(MediaTypeError::Missing));
        assert!(matches!(
            ct("text/plain"),
            Err(MediaTypeError::Unsupported(_))
        ));
        assert!(matches!(
            ct("multipart/form-data; boundary=x"),
            Err(MediaTypeError::Unsupported(_))
        ));
        assert_eq!(
            ct("application/json; charset=latin1"),
            Err(MediaTypeError::Charset("latin1".into()))
        );
    }

    #[test]
    fn json_bodies_give_the_trimmed_id() {
        assert_eq!(
            id(MediaType::Json, r#"{"id":"  ada@example.com "}"#),
            Ok("ada@example.com".into())
        );
    }

    #[test]
    fn the_published_json_in_a_form_body_is_read_as_json() {
        assert_eq!(
            id(MediaType::Form, r#"{"id":"string"}"#),
            Ok("string".into())
        );
        assert_eq!(
            id(MediaType::Form, " \n{\"id\":\"string\"}"),
            Ok("string".into())
        );
    }

    #[test]
    fn form_bodies_are_percent_decoded() {
        assert_eq!(
            id(MediaType::Form, "id=ada%40example.com"),
            Ok("ada@example.com".into())
        );
        assert_eq!(
            id(MediaType::Form, "id=ada+lovelace"),
            Ok("ada lovelace".into())
        );
    }

    #[test]
    fn xml_bodies_as_published_are_read() {
        let body =
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<item>\n  <id>string</id>\n</item>\n";
        assert_eq!(id(MediaType::Xml, body), Ok("string".into()));
        assert_eq!(
            id(MediaType::Xml, "<item><id>a&amp;b&#x40;c</id></item>"),
            Ok("a&b@c".into())
        );
        assert_eq!(
            id(MediaType::Xml, "<item><id><![CDATA[x<y]]></id></item>"),
            Ok("x<y".into())
        );
    }

    /// A second address riding along with the first must never be resolved to either of them.
    #[test]
    fn a_repeated_or_array_id_is_refused_so_no_reset_reaches_a_second_address() {
        let cases = [
            (
                MediaType::Json,
                r#"{"id":["victim@example.com","attacker@example.com"]}"#,
                BodyError::NotString("id", "an array"),
            ),
            (
                MediaType::Json,
                r#"{"id":"victim@example.com","id":"attacker@example.com"}"#,
                BodyError::Repeated("id"),
            ),
            (
                MediaType::Json,
                r#"{"id":{"email":"victim@example.com"}}"#,
                BodyError::NotString("id", "an object"),
            ),
            (
                MediaType::Form,
                "id=victim%40example.com&id=attacker%40example.com",
                BodyError::Repeated("id"),
            ),
            (
                MediaType::Form,
                "id[]=victim%40example.com&id[]=attacker%40example.com",
                BodyError::NotString("id", "an array or an object"),
            ),
            (
                MediaType::Xml,
                "<item><id>victim@example.com</id><id>attacker@example.com</id></item>",
                BodyError::Repeated("id"),
            ),
        ];
        for (kind, body, want) in cases {
            assert_eq!(id(kind, body), Err(want), "{body}");
        }
    }

    #[test]
    fn non_string_ids_name_what_they_got() {
        assert_eq!(
            id(MediaType::Json, r#"{"id":42}"#),
            Err(BodyError::NotString("id", "a number"))
        );
        assert_eq!(
            id(MediaType::Json, r#"{"id":null}"#),
            Err(BodyError::NotString("id", "null"))
        );
        assert_eq!(
            id(MediaType::Json, r#"{"id":true}"#),
            Err(BodyError::NotString("id", "a boolean"))
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_with_a_clear_message() {
        for nesting in ["[", "{\"a\":"] {
            let body = format!(r#"{{"id":"a","x":{}1"#, nesting.repeat(10_000));
            match id(MediaType::Json, &body) {
                Err(BodyError::Json(detail)) => {
                    assert!(detail.contains("recursion limit"), "{detail}");
                }
                other => panic!("{nesting}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_log_text_leaves_out_what_the_client_wrote() {
        let body = "token=abc&password=first-half&second-half-of-the-password";
        let err = id(MediaType::Form, body).expect_err("unknown fields");
        assert!(
            err.to_string().contains("token"),
            "the client is told: {err}"
        );
        for secret in ["token", "first-half", "second-half"] {
            assert!(!err.log_text().contains(secret), "{}", err.log_text());
        }
        let err = id(MediaType::Json, r#"{"id": "a", "x"#).expect_err("malformed");
        assert_eq!(err.log_text(), "malformed JSON");
    }

    #[test]
    fn missing_unknown_and_empty_fields_are_named() {
        assert_eq!(id(MediaType::Json, "{}"), Err(BodyError::Missing("id")));
        assert_eq!(id(MediaType::Form, ""), Err(BodyError::Missing("id")));
        assert_eq!(id(MediaType::Xml, "<item/>"), Err(BodyError::Missing("id")));
        assert_eq!(
            id(MediaType::Json, r#"{"id":"a","email":"b"}"#),
            Err(BodyError::UnknownField("email".into(), "`id`".into()))
        );
        assert_eq!(
            id(MediaType::Xml, "<item><email>b</email></item>"),
            Err(BodyError::UnknownField("email".into(), "`id`".into()))
        );
        assert_eq!(
            id(MediaType::Json, r#"{"id":"  "}"#),
            Err(BodyError::Id(AccountRefError::Empty))
        );
        assert_eq!(
            id(MediaType::Xml, "<item><id/></item>"),
            Err(BodyError::Id(AccountRefError::Empty))
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_format_named() {
        assert!(matches!(
            id(MediaType::Json, "{\"id\":"),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            id(MediaType::Json, "[\"a\"]"),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            id(MediaType::Json, r#"{"id":"a"} trailing"#),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            id(MediaType::Xml, "<item><id>a</item>"),
            Err(BodyError::Xml(_))
        ));
        assert_eq!(
            id(MediaType::Xml, "<user><id>a</id></user>"),
            Err(BodyError::XmlRoot("user".into()))
        );
        assert_eq!(
            id(MediaType::Xml, "<item><id>a</id></item><item/>"),
            Err(BodyError::XmlRootCount)
        );
        assert_eq!(id(MediaType::Xml, ""), Err(BodyError::XmlRootCount));
        assert_eq!(
            id(MediaType::Xml, "<item><id><b>a</b></id></item>"),
            Err(BodyError::XmlNested)
        );
        assert_eq!(
            id(MediaType::Xml, "<item>loose<id>a</id></item>"),
            Err(BodyError::XmlStrayText)
        );
        assert_eq!(
            parse(MediaType::Json, b"{\"id\":\"\xff\"}").map(|_| ()),
            Err(BodyError::NotUtf8)
        );
        assert_eq!(id(MediaType::Form, "id=%FF"), Err(BodyError::NotUtf8));
    }

    #[test]
    fn control_characters_cannot_be_smuggled_in_escaped() {
        assert_eq!(
            id(MediaType::Json, r#"{"id":"a\r\nb"}"#),
            Err(BodyError::Id(AccountRefError::ControlCharacter))
        );
        assert_eq!(
            id(MediaType::Form, "id=a%0D%0Ab"),
            Err(BodyError::Id(AccountRefError::ControlCharacter))
        );
        assert_eq!(
            id(MediaType::Xml, "<item><id>a&#10;b</id></item>"),
            Err(BodyError::Id(AccountRefError::ControlCharacter))
        );
    }

    #[test]
    fn external_entities_and_entity_expansion_are_refused_fast() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE item [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><item><id>&xxe;</id></item>"#;
        let mut laughs =
            String::from("<?xml version=\"1.0\"?><!DOCTYPE item [<!ENTITY lol \"lol\">");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            laughs.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&{prev};").repeat(10)
            ));
        }
        laughs.push_str("]><item><id>&lol9;</id></item>");
        // Refused at the DOCTYPE, before any entity could be declared, let alone expanded.
        for body in [xxe, laughs.as_str()] {
            assert_eq!(id(MediaType::Xml, body), Err(BodyError::XmlDoctype));
        }
        // Without a DOCTYPE an undeclared entity is simply unknown.
        assert_eq!(
            id(MediaType::Xml, "<item><id>&xxe;</id></item>"),
            Err(BodyError::XmlEntity("xxe".into()))
        );
    }

    #[test]
    fn echoed_names_are_clipped() {
        let long = "x".repeat(500);
        let body = format!(r#"{{"{long}":"a"}}"#);
        match id(MediaType::Json, &body) {
            Err(BodyError::UnknownField(name, _)) => assert!(name.chars().count() <= 65),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn several_fields_are_read_in_the_order_named() {
        let fields = parse_fields(
            MediaType::Json,
            br#"{"password":"hunter2 hunter2","token":"abc"}"#,
            ["token", "password"],
        );
        assert_eq!(fields, Ok(["abc".to_owned(), "hunter2 hunter2".to_owned()]));
        let form = parse_fields(
            MediaType::Form,
            b"token=abc&password=p%20w",
            ["token", "password"],
        );
        assert_eq!(form, Ok(["abc".to_owned(), "p w".to_owned()]));
        let xml = parse_fields(
            MediaType::Xml,
            b"<item><token>abc</token><password> pw </password></item>",
            ["token", "password"],
        );
        assert_eq!(xml, Ok(["abc".to_owned(), " pw ".to_owned()]));
        assert_eq!(
            parse_fields(
                MediaType::Json,
                br#"{"token":"abc"}"#,
                ["token", "password"]
            ),
            Err(BodyError::Missing("password"))
        );
        assert_eq!(
            parse_fields(MediaType::Json, br#"{"token":"a","id":"b"}"#, ["token"]),
            Err(BodyError::UnknownField("id".into(), "`token`".into()))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_body_makes_any_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for kind in [MediaType::Json, MediaType::Xml, MediaType::Form] {
                let _ = parse(kind, &bytes);
            }
        }

        #[test]
        fn no_xml_like_text_makes_the_xml_parser_panic(text in "[<>/a-z!?\\[\\]&;#x0-9 \"'=-]{0,200}") {
            let _ = parse(MediaType::Xml, text.as_bytes());
            let wrapped = format!("<item><id>{text}</id></item>");
            let _ = parse(MediaType::Xml, wrapped.as_bytes());
        }

        #[test]
        fn any_valid_id_survives_every_format(raw in "[a-zA-Z0-9@._+ -]{1,100}") {
            prop_assume!(!raw.trim().is_empty());
            let want = raw.trim().to_owned();
            let json = serde_json::json!({ "id": raw }).to_string();
            prop_assert_eq!(id(MediaType::Json, &json), Ok(want.clone()));
            let form = serde_urlencoded::to_string([("id", &raw)]).expect("encode");
            prop_assert_eq!(id(MediaType::Form, &form), Ok(want.clone()));
            let xml = format!("<item><id>{raw}</id></item>");
            prop_assert_eq!(id(MediaType::Xml, &xml), Ok(want));
        }
    }
}
