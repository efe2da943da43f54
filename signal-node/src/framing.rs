//! Cutting a TCP byte stream into SIP messages (RFC 3261 §18.3): headers up
//! to the blank line, then exactly Content-Length bytes of body.

use crate::wire::{self, MAX_MESSAGE};

/// What the stream holds next.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole message.
    Message(Vec<u8>),
    /// CRLF keep-alive pings (RFC 5626 §3.5.1) to answer with a single CRLF.
    Ping,
}

/// Why a stream cannot be read any further; the connection is closed
/// after `reply`, if any, is sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// What was wrong.
    pub why: String,
    /// A response to send before closing, when the bad message was a
    /// request with the headers to answer it.
    pub reply: Option<Vec<u8>>,
}

/// Accumulates bytes from one connection.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Broken> {
        let leading = self
            .buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if leading > 0 && leading == self.buf.len() && leading < 4 {
            // Maybe the start of a ping: wait for the rest.
            return Ok(None);
        }
        if leading > 0 {
            // "\r\n\r\n" is a ping; stray line ends between messages are
            // skipped as RFC 3261 §7.5 allows.
            let ping = self.buf.starts_with(b"\r\n\r\n");
            self.buf.drain(..if ping { 4 } else { leading.min(2) });
            if ping {
                return Ok(Some(Frame::Ping));
            }
            return self.next_frame();
        }
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buf.len() > MAX_MESSAGE {
                return Err(Broken {
                    why: format!("no end of headers within {MAX_MESSAGE} bytes"),
                    reply: None,
                });
            }
            return Ok(None);
        };
        let total = {
            let raw = self.head(head_end)?;
            match wire::content_length(&raw) {
                Ok(Some(n)) => head_end + 4 + n,
                Ok(None) => {
                    return Err(self.refuse(&raw, "Content-Length is required on a stream"));
                }
                Err(why) => return Err(self.refuse(&raw, &why.to_string())),
            }
        };
        if total > MAX_MESSAGE {
            let raw = self.head(head_end)?;
            return Err(self.refuse(&raw, &format!("message of {total} bytes is too large")));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let rest = self.buf.split_off(total);
        let frame = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Frame::Message(frame)))
    }

    /// The headers of the next message, which end at `head_end`.
    fn head(&self, head_end: usize) -> Result<wire::RawMessage<'_>, Broken> {
        wire::split(&self.buf[..head_end + 4]).map_err(|why| Broken {
            why: why.to_string(),
            reply: None,
        })
    }

    fn refuse(&self, raw: &wire::RawMessage<'_>, why: &str) -> Broken {
        let answerable = raw.method().is_some_and(|m| !m.eq_ignore_ascii_case("ACK"))
            && raw.values("Via").next().is_some();
        Broken {
            why: why.to_string(),
            reply: answerable.then(|| wire::raw_response(raw, 400, why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 3\r\n\r\nabc";

    #[test]
    fn messages_split_at_any_byte_boundary() {
        let mut two = MSG.to_vec();
        two.extend_from_slice(b"\r\n\r\n");
        two.extend_from_slice(MSG);
        for cut in 0..two.len() {
            let mut f = Framer::default();
            let mut frames = Vec::new();
            for chunk in [&two[..cut], &two[cut..]] {
                f.push(chunk);
                while let Some(frame) = f.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Message(MSG.to_vec()),
                    Frame::Ping,
                    Frame::Message(MSG.to_vec())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_stream_message_needs_a_content_length() {
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n");
        let broken = f.next_frame().unwrap_err();
        let reply = String::from_utf8(broken.reply.unwrap()).unwrap();
        assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    }

    #[test]
    fn endless_headers_break_the_stream() {
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        for _ in 0..10_000 {
            f.push(b"X-Filler: aaaaaaaa\r\n");
        }
        assert!(f.next_frame().is_err());
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\nContent-Length: 999999\r\n\r\n");
        assert!(f.next_frame().is_err());
    }
}
