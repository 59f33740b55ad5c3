//! The envelope that tells data channel receivers who sent a message.
//!
//! Text messages become the text `{"from":"<participant id>","identity":"<identity>",
//! "data":"<text>"}`; binary messages become `[n: u8][participant id: n bytes][message]`.
//! Built once per message by the sender's worker and shared by every receiver.

use crate::packet::DataMessage;

/// Wraps a message from `participant` (with `identity`). `None` if a text message is not
/// UTF-8 or the participant id is too long for the binary form (255 bytes).
pub(crate) fn wrap(
    participant: &str,
    identity: &str,
    binary: bool,
    data: &[u8],
) -> Option<DataMessage> {
    if binary {
        let id = participant.as_bytes();
        let len = u8::try_from(id.len()).ok()?;
        let mut bytes = Vec::with_capacity(1 + id.len() + data.len());
        bytes.push(len);
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(data);
        return Some(DataMessage {
            binary: true,
            bytes,
        });
    }
    let text = std::str::from_utf8(data).ok()?;
    let mut out = String::with_capacity(text.len() + participant.len() + identity.len() + 40);
    out.push_str("{\"from\":");
    push_json_string(&mut out, participant);
    out.push_str(",\"identity\":");
    push_json_string(&mut out, identity);
    out.push_str(",\"data\":");
    push_json_string(&mut out, text);
    out.push('}');
    Some(DataMessage {
        binary: false,
        bytes: out.into_bytes(),
    })
}

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_envelope_escapes() {
        let m = wrap("PA_1", "al\"ice", false, "hi\n\u{1}\\".as_bytes());
        let m = m.map(|m| (m.binary, String::from_utf8(m.bytes).unwrap_or_default()));
        assert_eq!(
            m,
            Some((
                false,
                r#"{"from":"PA_1","identity":"al\"ice","data":"hi\n\u0001\\"}"#.to_string()
            ))
        );
    }

    #[test]
    fn binary_envelope_and_refusals() {
        let m = wrap("PA_1", "x", true, &[9, 8]).map(|m| m.bytes);
        assert_eq!(m, Some(vec![4, b'P', b'A', b'_', b'1', 9, 8]));
        assert!(
            wrap("PA_1", "x", false, &[0xff]).is_none(),
            "text must be UTF-8"
        );
        assert!(wrap(&"x".repeat(300), "x", true, &[1]).is_none());
    }
}
