//! The API's server-sent events as a client reads them: [`Event`], and [`EventParser`], which takes the
//! stream in whatever chunks it arrives and yields whole events (the SSE format: `event:` and `data:`
//! lines, a blank line ends an event, `:` starts a comment).

use crate::{Leader, Peer};

/// One event of `/v1/events` (or `/v1/peers/watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The full peer list.
    Peers(Vec<Peer>),
    /// The leader (boxed: it is the larger by far).
    Leader(Box<Leader>),
}

/// An event the client cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the `{name}` event's data is not what this version expects: {detail}")]
pub struct BadEvent {
    pub name: String,
    pub detail: String,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct EventParser {
    buffer: Vec<u8>,
    name: String,
    data: String,
}

impl EventParser {
    /// Takes `chunk` and returns the events it completes, in order. Events of kinds this version does not
    /// know are skipped, as the format says.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<Event, BadEvent>> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(event) = self.dispatch() {
                    out.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.name),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }

    fn dispatch(&mut self) -> Option<Result<Event, BadEvent>> {
        let name = std::mem::take(&mut self.name);
        let data = std::mem::take(&mut self.data);
        let bad = |e: serde_json::Error| BadEvent {
            name: name.clone(),
            detail: e.to_string(),
        };
        match name.as_str() {
            "peers" => Some(serde_json::from_str(&data).map(Event::Peers).map_err(bad)),
            "leader" => Some(
                serde_json::from_str(&data)
                    .map(|l| Event::Leader(Box::new(l)))
                    .map_err(bad),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: &str = r#"{"tokenId":2,"instanceId":null,"overlayIp":"10.0.1.2","address":"10.0.1.2","isSelf":false,"reachable":true,"later":1}"#;

    #[test]
    fn an_event_split_across_chunks_comes_out_whole() {
        let mut p = EventParser::default();
        let text = format!("event: leader\r\ndata: {LEADER}\r\n\r\n");
        let (a, b) = text.as_bytes().split_at(20);
        assert!(p.push(a).is_empty());
        let events = p.push(b);
        assert_eq!(events.len(), 1);
        let Ok(Event::Leader(l)) = &events[0] else {
            panic!("not a leader event: {events:?}")
        };
        assert_eq!(l.token_id, Some(2));
        assert_eq!(l.reachable, Some(true));
    }

    #[test]
    fn comments_and_unknown_kinds_are_skipped() {
        let mut p = EventParser::default();
        let events =
            p.push(b": keepalive\n\nevent: future\ndata: {}\n\nevent: peers\ndata: []\n\n");
        assert_eq!(events, vec![Ok(Event::Peers(Vec::new()))]);
    }

    #[test]
    fn data_over_several_lines_is_joined() {
        let mut p = EventParser::default();
        let events = p.push(b"event: peers\ndata: [\ndata: ]\n\n");
        assert_eq!(events, vec![Ok(Event::Peers(Vec::new()))]);
    }

    #[test]
    fn unreadable_data_is_an_error_naming_the_event() {
        let mut p = EventParser::default();
        let events = p.push(b"event: leader\ndata: [1]\n\n");
        let Err(e) = &events[0] else {
            panic!("read: {events:?}")
        };
        assert_eq!(e.name, "leader");
    }
}
