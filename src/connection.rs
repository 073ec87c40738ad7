//! The byte stream of an accepted connection (plain TCP or TLS), as actix-http
//! and later the WebSocket session see it.
//!
//! actix-http's HTTP/1 dispatcher answers requests it cannot parse by itself,
//! before any handler runs: 400 for a malformed request, 431 for an oversized
//! head, 408 for a head that took too long. Those answers carry an empty body,
//! and the dispatcher logs each one at ERROR. The contract wants every HTTP
//! error as a JSON body, and a stranger's junk is no server error: this stream
//! recognises those canned answers on their way out, sends the contract's JSON
//! error instead, and logs a (rate-limited) warning.

use crate::protocol::{ErrorCode, Rejection};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The dispatcher's canned answers: status line plus the empty length that
/// only they carry (every handler's error has a JSON body).
const CANNED: [(&[u8], ErrorCode, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ErrorCode::BadRequest,
        "the request is malformed",
    ),
    (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n",
        ErrorCode::RequestTimeout,
        "the request took too long to arrive",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
        ErrorCode::HeadersTooLarge,
        "the request's headers are too large",
    ),
];

pub struct Connection<T> {
    io: T,
    peer: Option<SocketAddr>,
    /// An answer written in place of a canned one, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
    /// Still speaking HTTP/1 (not yet upgraded to WebSocket, not HTTP/2).
    http1: bool,
    /// Nothing written yet: the first write tells HTTP/1 from HTTP/2.
    fresh: bool,
}

impl<T> Connection<T> {
    pub fn new(io: T, peer: Option<SocketAddr>) -> Self {
        Self {
            io,
            peer,
            replacement: None,
            http1: true,
            fresh: true,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Connection<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Connection<T> {
    /// Writes out what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Connection<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        if this.http1 {
            match canned_answer(buf) {
                Found::At(0, head_len, rejection) => {
                    log_refused(this.peer, &rejection);
                    this.replacement = Some((json_answer(&buf[..head_len], &rejection), 0));
                    // The dispatcher's bytes count as written; ours go out now
                    // or on the next write/flush.
                    let _ = this.poll_replacement(cx)?;
                    return Poll::Ready(Ok(head_len));
                }
                // Write what precedes it; the next call starts at the answer.
                Found::At(start, _, _) => {
                    return Pin::new(&mut this.io).poll_write(cx, &buf[..start]);
                }
                Found::Nothing => {
                    // After a 101 the stream carries WebSocket frames; with
                    // HTTP/2 it never carried HTTP/1 answers.
                    let http2 = this.fresh && !buf.starts_with(b"HTTP/1.");
                    if http2 || buf.starts_with(b"HTTP/1.1 101 ") {
                        this.http1 = false;
                    }
                }
            }
            this.fresh = false;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

enum Found {
    /// A canned answer starting at this offset, its head this long.
    At(usize, usize, Rejection),
    Nothing,
}

/// Finds a canned answer in what the dispatcher writes. One pass over the
/// bytes for the empty length only canned answers carry (plain `memmem`, so
/// large responses cost little), then a look at the status line before it.
fn canned_answer(buf: &[u8]) -> Found {
    use memchr::memmem;
    const EMPTY_LENGTH: &[u8] = b"\r\ncontent-length: 0\r\n";
    let mut from = 0;
    while let Some(at) = memmem::find(&buf[from..], EMPTY_LENGTH).map(|i| from + i) {
        from = at + EMPTY_LENGTH.len();
        let Some(start) = memmem::rfind(&buf[..at], b"HTTP/1.1 ") else {
            continue;
        };
        let Some((_, code, message)) = CANNED
            .iter()
            .find(|(head, _, _)| buf[start..].starts_with(head))
        else {
            continue;
        };
        let Some(end) = memmem::find(&buf[start..], b"\r\n\r\n") else {
            return Found::Nothing;
        };
        return Found::At(start, end + 4, Rejection::new(*code, *message));
    }
    Found::Nothing
}

/// The canned head with its status line and headers kept, the length and
/// type changed, and the contract's JSON error as the body.
fn json_answer(head: &[u8], rejection: &Rejection) -> Vec<u8> {
    let body = rejection.to_http_body();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.eq_ignore_ascii_case(b"content-length: 0") {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

/// One warning per second at most: junk from the network is worth knowing
/// about, not worth a line per request.
fn log_refused(peer: Option<SocketAddr>, rejection: &Rejection) {
    static LAST_LOG_MS: AtomicI64 = AtomicI64::new(0);
    let now = crate::protocol::now_ms();
    let last = LAST_LOG_MS.load(Ordering::Relaxed);
    if now - last >= 1000
        && LAST_LOG_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        tracing::warn!(
            peer,
            code = rejection.code.as_str(),
            "refused an HTTP request that could not be read (further ones within a second are not logged)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Sun, 06 Dec 2026 19:40:52 GMT\r\n\r\n";

    #[test]
    fn a_canned_answer_becomes_the_json_error() {
        let Found::At(0, len, rejection) = canned_answer(BAD) else {
            panic!("not found");
        };
        assert_eq!(len, BAD.len());
        let answer = String::from_utf8(json_answer(BAD, &rejection)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains("connection: close"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(!head.contains("content-length: 0"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request");
    }

    #[test]
    fn a_canned_answer_behind_another_response_is_found_where_it_starts() {
        let mut buf = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let at = buf.len();
        buf.extend_from_slice(BAD);
        assert!(matches!(canned_answer(&buf), Found::At(start, _, _) if start == at));
    }

    #[test]
    fn answers_with_bodies_are_left_alone() {
        let ok = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 59\r\n\r\n{\"error\":{}}";
        assert!(matches!(canned_answer(ok), Found::Nothing));
    }
}
