//! Email part bodies, encoded in one pass.
//!
//! lettre's `Body::new` scans a text to choose its encoding, turns its line ends into CRLF by
//! inserting a `\r` before each `\n` (moving the rest of the text every time), and then runs a
//! general-purpose quoted-printable encoder: for a rendered reset email that was a quarter of
//! the worker's instructions per mail (BENCHMARKS.md, change 26). Here one pass encodes
//! quoted-printable, writing CRLF as it goes, and the choice follows from what it found, much
//! as lettre's does: `7bit` where the encoding changed nothing (ASCII, lines of at most 76
//! characters, no `=` or space ending a line), `quoted-printable` for text needing few
//! escapes, base64, encoded by lettre, for the rest (mostly non-Latin scripts).

use lettre::message::{Body, header::ContentTransferEncoding};

/// Longest encoded line, soft break included (RFC 2045 6.7, rule 5).
const MAX_LINE: usize = 76;

/// A text part's body, line ends as CRLF.
pub fn text_body(text: String) -> Body {
    let encoded = quoted_printable(text.as_bytes());
    if encoded.escapes == 0 && !encoded.cut {
        // Nothing was escaped or cut: the encoding is the text with CRLF line ends, and
        // plain 7bit says so.
        Body::dangerous_pre_encoded(encoded.out, ContentTransferEncoding::SevenBit)
    } else if encoded.escapes <= text.len() / 3 {
        Body::dangerous_pre_encoded(encoded.out, ContentTransferEncoding::QuotedPrintable)
    } else {
        // Base64 takes any bytes; lettre only refuses 7bit or 8bit for unfit text.
        match Body::new_with_encoding(text, ContentTransferEncoding::Base64) {
            Ok(body) => body,
            Err(raw) => Body::new(raw),
        }
    }
}

/// A text in quoted-printable, and what it took.
#[derive(Debug)]
struct Encoded {
    out: Vec<u8>,
    /// Bytes written `=XX`.
    escapes: usize,
    /// Whether a line was cut with a soft break.
    cut: bool,
}

/// Quoted-printable (RFC 2045 6.7): line ends (`\n` or `\r\n`) become CRLF, lines longer
/// than 76 characters are cut with soft breaks (`=` CRLF), and `=`, a space or tab ending a
/// line, and every byte that is not printable ASCII are written `=XX`.
fn quoted_printable(text: &[u8]) -> Encoded {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len() + text.len() / 16 + 8);
    let mut escapes = 0;
    let mut cut = false;
    let mut column = 0;
    // Whether the byte after `i` ends the line (or the text).
    let ends_line = |i: usize| match text.get(i + 1) {
        None | Some(b'\n') => true,
        Some(b'\r') => text.get(i + 2) == Some(&b'\n'),
        Some(_) => false,
    };
    let mut i = 0;
    while i < text.len() {
        // Most of a text is characters that go as they are: copy them a run at a time, as
        // far as the line has room, leaving to the loop below a space or tab ending a line.
        // Scanning no further than the line has room keeps a long line linear.
        let room = (MAX_LINE - 1).saturating_sub(column);
        let mut n = text[i..]
            .iter()
            .take(room)
            .take_while(|&&b| matches!(b, b'\t' | b' '..=b'<' | b'>'..=b'~'))
            .count();
        if n > 0 && matches!(text[i + n - 1], b' ' | b'\t') && ends_line(i + n - 1) {
            n -= 1;
        }
        if n > 0 {
            out.extend_from_slice(&text[i..i + n]);
            column += n;
            i += n;
            continue;
        }
        let b = text[i];
        let literal = match b {
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                column = 0;
                i += 1;
                continue;
            }
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                column = 0;
                i += 2;
                continue;
            }
            b'=' => false,
            b'!'..=b'~' => true,
            b' ' | b'\t' => !ends_line(i),
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Any character but a line's last must leave room for the `=` of a soft break.
        if column + width >= MAX_LINE && (column + width > MAX_LINE || !ends_line(i)) {
            out.extend_from_slice(b"=\r\n");
            column = 0;
            cut = true;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            escapes += 1;
        }
        column += width;
        i += 1;
    }
    Encoded { out, escapes, cut }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(text: &str) -> (ContentTransferEncoding, String) {
        let body = text_body(text.to_owned());
        let encoding = body.encoding();
        (
            encoding,
            String::from_utf8(body.into_vec()).expect("encoded bodies are ASCII"),
        )
    }

    /// Decodes a body as a mail client would: through a whole message, with mailparse.
    fn decoded(encoding: ContentTransferEncoding, body: &str) -> String {
        let raw = format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}"
        );
        mailparse::parse_mail(raw.as_bytes())
            .and_then(|mail| mail.get_body())
            .expect("a parsable part")
    }

    #[test]
    fn short_ascii_lines_go_as_7bit_with_crlf() {
        assert_eq!(
            encoded("Hello,\n\nyour link:\r\nhttps://e.com/r\n"),
            (
                ContentTransferEncoding::SevenBit,
                "Hello,\r\n\r\nyour link:\r\nhttps://e.com/r\r\n".to_owned()
            )
        );
    }

    #[test]
    fn a_long_line_is_cut_with_soft_breaks_and_equals_signs_escaped() {
        let link = format!("https://app.example.com/reset?a=1&token={}", "x".repeat(43));
        let (encoding, body) = encoded(&format!("Open {link}\nBye"));
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert_eq!(
            body,
            format!(
                "Open https://app.example.com/reset?a=3D1&token=3D{}=\r\n{}\r\nBye",
                // 49 characters before the token's: 26 of it fit before the `=` at 76.
                "x".repeat(26),
                "x".repeat(17)
            )
        );
        assert!(body.split("\r\n").all(|line| line.len() <= MAX_LINE));
    }

    #[test]
    fn a_line_of_76_characters_stays_whole_and_one_of_77_is_cut() {
        let line = "y".repeat(76);
        assert_eq!(
            encoded(&line),
            (ContentTransferEncoding::SevenBit, line.clone())
        );
        let (encoding, body) = encoded(&format!("{line}z\n"));
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert_eq!(body, format!("{}=\r\nyz\r\n", "y".repeat(75)));
    }

    #[test]
    fn a_long_line_is_cut_every_75_characters() {
        let (encoding, body) = encoded(&"x".repeat(100_000));
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert_eq!(lines.len(), 1_334);
        assert!(
            lines[..1_333]
                .iter()
                .all(|line| line.len() == 76 && line.ends_with('='))
        );
        assert_eq!(lines[1_333], "x".repeat(100_000 - 1_333 * 75));
    }

    #[test]
    fn trailing_white_space_and_non_ascii_are_escaped() {
        let (encoding, body) = encoded("Grüße an alle \nTab\t\n");
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert_eq!(body, "Gr=C3=BC=C3=9Fe an alle=20\r\nTab=09\r\n");
    }

    #[test]
    fn a_lone_carriage_return_is_escaped_not_sent_as_a_line_end() {
        let (encoding, body) = encoded("a\rb\n");
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert_eq!(body, "a=0Db\r\n");
        // Too short for escapes to pay: base64, and still no bare CR on the wire.
        let (encoding, body) = encoded("\r");
        assert_eq!(encoding, ContentTransferEncoding::Base64);
        assert_eq!(decoded(encoding, &body), "\r");
    }

    #[test]
    fn mostly_non_latin_text_goes_as_base64() {
        let text = "パスワードをリセットしてください";
        assert_eq!(encoded(text).0, ContentTransferEncoding::Base64);
    }

    /// Texts mostly of printable ASCII, as rendered emails are: some all ASCII, some not,
    /// with line ends, lone CRs, tabs and `=` among them.
    fn texts() -> impl Strategy<Value = String> {
        let ascii = prop_oneof![12 => "[ -~]", 2 => r"[\t\n\r=]"].boxed();
        let any = prop_oneof![12 => "[ -~]", 2 => r"[\t\n\r=]", 1 => "[äß€😀]"].boxed();
        prop_oneof![
            prop::collection::vec(ascii, 0..300),
            prop::collection::vec(any, 0..300),
        ]
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_text_decodes_back_to_itself_with_crlf_and_short_lines(text in texts()) {
            let (encoding, body) = encoded(&text);
            // What a mail client decodes: the text with CRLF line ends.
            let expected = text.replace("\r\n", "\n").replace('\n', "\r\n");
            prop_assert!(body.is_ascii());
            prop_assert!(!body.replace("\r\n", "").contains(['\r', '\n']));
            prop_assert!(body.split("\r\n").all(|line| line.len() <= MAX_LINE), "{body:?}");
            prop_assert_eq!(decoded(encoding, &body), expected);
        }
    }
}
