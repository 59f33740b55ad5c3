//! The numbering of a session's outgoing messages and the copies of the last ones written,
//! so that a client whose socket dropped gets, on a new socket, exactly the messages it did
//! not receive: some of those written to a dying socket never arrive, and nobody can tell
//! which.
//!
//! Every message carries `"seq": N` (1, 2, 3... per session). The copies are bounded in count
//! and bytes; a client that missed more than they hold cannot resume and joins again.

use std::collections::VecDeque;

use crate::protocol::ServerMessage;

/// Messages kept for a resume at most.
const KEPT_MESSAGES: usize = 256;
/// Bytes of kept messages at most (a subscribe offer of a big room is tens of KiB).
const KEPT_BYTES: usize = 128 * 1024;

/// The numbered copies of a session's last messages.
#[derive(Debug)]
pub(crate) struct Replay {
    next_seq: u64,
    kept: VecDeque<(u64, String)>,
    bytes: usize,
}

impl Default for Replay {
    fn default() -> Self {
        Self {
            next_seq: 1,
            kept: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl Replay {
    /// Numbers a message and keeps a copy; returns the frame to write.
    pub(crate) fn record(&mut self, message: &ServerMessage) -> Option<String> {
        let mut text = serde_json::to_string(message).ok()?;
        // Every server message is a JSON object: add the number as its last field.
        if !text.ends_with('}') {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        text.pop();
        text.push_str(&format!(",\"seq\":{seq}}}"));
        self.bytes += text.len();
        self.kept.push_back((seq, text.clone()));
        while self.kept.len() > KEPT_MESSAGES || (self.bytes > KEPT_BYTES && self.kept.len() > 1) {
            if let Some((_, old)) = self.kept.pop_front() {
                self.bytes -= old.len();
            }
        }
        Some(text)
    }

    /// The frames after `last_seq` (the last one the client received), or `None` if some of
    /// them are no longer kept (or `last_seq` was never sent).
    pub(crate) fn since(&self, last_seq: u64) -> Option<Vec<String>> {
        let first = last_seq.checked_add(1)?;
        if first > self.next_seq {
            return None;
        }
        if first == self.next_seq {
            return Some(Vec::new());
        }
        let oldest = self.kept.front()?.0;
        if first < oldest {
            return None;
        }
        Some(
            self.kept
                .iter()
                .filter(|(seq, _)| *seq >= first)
                .map(|(_, text)| text.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(n: usize) -> ServerMessage {
        ServerMessage::ParticipantLeft {
            participant: "x".repeat(n),
        }
    }

    #[test]
    fn messages_are_numbered_in_their_json() {
        let mut replay = Replay::default();
        let a = replay.record(&ServerMessage::Pong).unwrap();
        let b = replay.record(&left(1)).unwrap();
        assert_eq!(a, r#"{"type":"pong","seq":1}"#);
        assert_eq!(
            b,
            r#"{"type":"participant_left","participant":"x","seq":2}"#
        );
        let parsed: ServerMessage = serde_json::from_str(&b).unwrap();
        assert_eq!(parsed, left(1));
    }

    #[test]
    fn a_resume_gets_exactly_what_was_missed() {
        let mut replay = Replay::default();
        assert_eq!(replay.since(0), Some(vec![]));
        for _ in 0..5 {
            replay.record(&ServerMessage::Pong);
        }
        assert_eq!(replay.since(5), Some(vec![]));
        let missed = replay.since(3).unwrap();
        assert_eq!(missed.len(), 2);
        assert!(missed[0].ends_with(r#""seq":4}"#));
        assert_eq!(replay.since(0).unwrap().len(), 5);
        // A number never sent.
        assert_eq!(replay.since(6), None);
        assert_eq!(replay.since(u64::MAX), None);
    }

    #[test]
    fn what_fell_out_cannot_be_resumed_from() {
        let mut replay = Replay::default();
        for _ in 0..KEPT_MESSAGES + 10 {
            replay.record(&ServerMessage::Pong);
        }
        assert_eq!(replay.since(5), None);
        assert_eq!(replay.since(10).map(|m| m.len()), Some(KEPT_MESSAGES));
        // Bounded in bytes too, but the newest is always kept.
        let mut replay = Replay::default();
        replay.record(&left(KEPT_BYTES / 2));
        replay.record(&left(KEPT_BYTES));
        assert_eq!(replay.since(0), None);
        assert_eq!(replay.since(1).map(|m| m.len()), Some(1));
    }
}
