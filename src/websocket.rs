//! WebSocket connections taken off the HTTP dispatcher.
//!
//! actix-web-actors normally streams a WebSocket through the HTTP response,
//! which keeps actix-http's per-connection 8 KiB read and write buffers alive
//! for the whole session: most of an idle connection's memory. Instead, every
//! `Connection: Upgrade` request goes to [`upgrade_service`]: it runs the
//! request through the same actix-web `App` (routing, token and origin checks
//! stay in `http.rs`), and when a handler accepted the upgrade (a 101 carrying
//! an [`Accepted`] session) it writes the 101 and takes the socket over. The
//! session actor is still an actix-web-actors `WebsocketContext`; only the
//! bytes between it and the socket move through [`run`], which reads into a
//! small buffer and writes each batch of frames the context encodes with one
//! write.

use crate::message::InputState;
use crate::session::Session;
use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BodySize, MessageBody};
use actix_http::error::PayloadError;
use actix_http::{h1, ConnectionType, Request, Response};
use actix_service::{fn_factory, fn_service, IntoServiceFactory, Service, ServiceFactory};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// What a WebSocket handler attaches to its 101 response: the session to run
/// on the socket once the 101 is written.
pub struct Accepted {
    session: Session,
    max_frame_bytes: usize,
}

impl Accepted {
    pub fn new(session: Session, max_frame_bytes: usize) -> Self {
        Self {
            session,
            max_frame_bytes,
        }
    }
}

/// The upgrade service for actix-http: `app` builds the same `App` the HTTP
/// side serves (one instance per worker, like the HTTP one).
pub fn upgrade_service<T, F, A, SF>(
    app: F,
) -> impl ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    F: Fn() -> A + 'static,
    A: IntoServiceFactory<SF, Request>,
    SF: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse,
            Error = actix_web::Error,
        > + 'static,
    SF::InitError: std::fmt::Debug,
    SF::Service: 'static,
{
    fn_factory(move || {
        let factory = app().into_factory();
        async move {
            let app = factory
                .new_service(AppConfig::default())
                .await
                .map_err(|error| tracing::error!(?error, "cannot start the app for upgrades"))?;
            let app = Rc::new(app);
            Ok(fn_service(
                move |(req, framed): (Request, Framed<T, h1::Codec>)| {
                    let app = app.clone();
                    async move {
                        answer(&*app, req, framed).await;
                        Ok::<_, actix_web::Error>(())
                    }
                },
            ))
        }
    })
}

/// Runs an upgrade request through the app; writes its answer, and when the
/// answer is an accepted upgrade, runs the session on the socket.
async fn answer<T, S>(app: &S, req: Request, mut framed: Framed<T, h1::Codec>)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut response: Response<BoxBody> = match app.call(req).await {
        Ok(response) => response.into(),
        Err(error) => error.into(),
    };
    let accepted = response.extensions_mut().remove::<Accepted>();
    let (mut head, body) = response.into_parts();
    let accepted = accepted.map(|a| (a.session, a.max_frame_bytes));
    if accepted.is_none() {
        // Refused upgrades end the connection after the answer.
        head.head_mut().set_connection_type(ConnectionType::Close);
    }
    if let Err(error) = write_response(&mut framed, head, body).await {
        tracing::debug!(%error, "could not answer an upgrade request");
        return;
    }
    let Some((session, max_frame_bytes)) = accepted else {
        return;
    };
    let parts = framed.into_parts();
    // Bytes the client sent right behind its request (its first frames).
    let early = Bytes::copy_from_slice(&parts.read_buf);
    // A task of its own, so the HTTP dispatcher (its buffers, timers and
    // state, a few KiB) is freed instead of living as long as the socket.
    // Shutdown doesn't need actix-server to track it: `server.rs` waits for
    // the sessions' close frames, and stopping the worker drops its tasks.
    actix_web::rt::spawn(run(parts.io, early, session, max_frame_bytes));
}

async fn write_response<T>(
    framed: &mut Framed<T, h1::Codec>,
    head: Response<()>,
    body: BoxBody,
) -> Result<(), Box<dyn std::error::Error>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // One write for head and body: clients that read a refusal's body from
    // the packet that brought its head (tungstenite does) get all of it.
    let size = body.size();
    framed.feed(h1::Message::Item((head, size))).await?;
    if !matches!(size, BodySize::None) {
        let bytes = actix_http::body::to_bytes(body).await?;
        if !bytes.is_empty() {
            framed.feed(h1::Message::Chunk(Some(bytes))).await?;
        }
        framed.feed(h1::Message::Chunk(None)).await?;
    }
    framed.flush().await?;
    Ok(())
}

/// Moves bytes between the socket and the session until either side ends.
/// The session's input is read straight from the socket when the session
/// asks for more; while a write is blocked the session isn't polled (as with
/// the HTTP dispatcher), and `TCP_USER_TIMEOUT` ends a connection whose
/// reader stalled.
pub async fn run<T>(io: T, early: Bytes, session: Session, max_frame_bytes: usize)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, mut writer) = tokio::io::split(io);
    let input = SocketInput {
        reader,
        early: (!early.is_empty()).then_some(early),
        ended: false,
        frames: FrameGate::new(max_frame_bytes, session.input_state()),
    };
    let codec = actix_http::ws::Codec::new().max_size(max_frame_bytes);
    let mut output = std::pin::pin!(ws::WebsocketContext::with_codec(session, input, codec));
    // The context encodes every frame queued since its last poll into one
    // chunk: one write per batch.
    while let Some(frames) = output.next().await {
        let Ok(frames) = frames else { break };
        if writer.write_all(&frames).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// The socket's read side as the stream of chunks a `WebsocketContext` decodes.
/// Reads land in a stack buffer and are copied out at their exact size: the
/// context copies them into its decoder at once, so an idle connection holds
/// no read buffer at all.
struct SocketInput<R> {
    reader: R,
    /// What arrived behind the upgrade request, handed over first.
    early: Option<Bytes>,
    ended: bool,
    frames: FrameGate,
}

/// One read's worth: a frame larger than this arrives in several reads.
const READ_CHUNK: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> futures_util::Stream for SocketInput<R> {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(early) = this.early.take() {
            return Poll::Ready(Some(this.frames.pass(early, &mut this.ended)));
        }
        // The decoder still holds whole frames the session hasn't taken (it
        // decodes one of them right after this), or the session put some
        // aside: reading more now would only grow buffers.
        if this.frames.backlogged() {
            // Woken when the session takes up a frame it put aside.
            this.frames.state.reader.register(cx.waker());
            if this.frames.backlogged() {
                return Poll::Pending;
            }
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut chunk);
        match std::pin::Pin::new(&mut this.reader).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => {
                let bytes = Bytes::copy_from_slice(buf.filled());
                Poll::Ready(Some(this.frames.pass(bytes, &mut this.ended)))
            }
            Poll::Ready(Err(error)) => {
                this.ended = true;
                Poll::Ready(Some(Err(PayloadError::Io(error))))
            }
        }
    }
}

/// Follows the frame boundaries of what the client sends, so the decoder's
/// buffer never holds more than one partial frame and one read:
/// actix-web-actors' decoder reads its input until it would block before
/// decoding anything, so a client streaming one endless frame (or a flood of
/// tiny ones) grew it without bound. A header declaring more than
/// `max_frame_bytes` ends the input there, before any of its payload is read
/// (the decoder itself would wait for `max_frame_bytes` of it), and the
/// session closes with 1009.
struct FrameGate {
    max_frame_bytes: u64,
    /// Bytes of the current frame still to come (header included while it is
    /// incomplete: see `header`).
    remaining: u64,
    /// The current frame's header so far, while it is incomplete.
    header: [u8; 14],
    header_len: usize,
    /// Whole frames handed to the decoder.
    complete: u64,
    /// Shared with the session: frames it handled, and the oversize flag.
    state: Arc<InputState>,
}

impl FrameGate {
    fn new(max_frame_bytes: usize, state: Arc<InputState>) -> Self {
        Self {
            max_frame_bytes: max_frame_bytes as u64,
            remaining: 0,
            header: [0; 14],
            header_len: 0,
            complete: 0,
            state,
        }
    }

    fn backlogged(&self) -> bool {
        self.complete > self.state.handled.load(Ordering::Acquire)
    }

    /// Scans `bytes`: they go to the decoder, unless they hold an oversized
    /// frame's header (then the input ends with an error the session
    /// answers with 1009; the whole frames before it are dropped with it).
    fn pass(&mut self, bytes: Bytes, ended: &mut bool) -> Result<Bytes, PayloadError> {
        match self.scan(&bytes) {
            Some(_) => {
                *ended = true;
                self.state.oversized.store(true, Ordering::Release);
                Err(PayloadError::Overflow)
            }
            None => Ok(bytes),
        }
    }

    /// Counts the frames `bytes` completes; `Some(end)` when a header in it
    /// declares an oversized frame (`end`: just past that header).
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((bytes.len() - at) as u64);
                self.remaining -= take;
                at += take as usize;
                if self.remaining == 0 {
                    self.complete += 1;
                }
                continue;
            }
            self.header[self.header_len] = bytes[at];
            self.header_len += 1;
            at += 1;
            let Some((header_size, payload)) = header_size(&self.header[..self.header_len]) else {
                continue;
            };
            if self.header_len < header_size {
                continue;
            }
            self.header_len = 0;
            if payload > self.max_frame_bytes {
                return Some(at);
            }
            if payload == 0 {
                self.complete += 1;
            } else {
                self.remaining = payload;
            }
        }
        None
    }
}

/// A frame header's full size and its declared payload length, once enough
/// of it is there to know them.
fn header_size(header: &[u8]) -> Option<(usize, u64)> {
    let second = *header.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, payload) = match second & 0x7f {
        126 => {
            let b = header.get(2..4)?;
            (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = header.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(b))
        }
        n => (0, u64::from(n)),
    };
    Some((2 + extended + mask, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize) -> FrameGate {
        FrameGate::new(max, Arc::default())
    }

    fn handled(state: &InputState, n: u64) {
        state.handled.store(n, Ordering::Release);
    }

    fn masked_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_whole_frames_across_any_split() {
        let mut stream = Vec::new();
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            stream.extend(masked_frame(&vec![b'x'; len]));
        }
        for split in [1usize, 2, 3, 7, 1000, stream.len()] {
            let mut g = gate(100_000);
            for piece in stream.chunks(split) {
                assert_eq!(g.scan(piece), None);
            }
            assert_eq!(g.complete, 6, "split {split}");
            assert_eq!(g.remaining, 0);
        }
    }

    #[test]
    fn an_oversized_header_is_cut_right_behind_it() {
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let mut bytes = masked_frame(b"hi");
        let small = bytes.len();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&[b'x'; 100]);
        let mut g = gate(65_536);
        assert_eq!(g.scan(&bytes), Some(small + header.len()));
        assert_eq!(g.complete, 1);
        // Split inside the header: found once the length is complete.
        let mut g = gate(65_536);
        assert_eq!(g.scan(&header[..5]), None);
        assert_eq!(g.scan(&header[5..]), Some(header.len() - 5));
    }

    #[test]
    fn backlogged_until_the_session_took_every_whole_frame() {
        let state = Arc::new(InputState::default());
        let mut g = FrameGate::new(1000, state.clone());
        let mut two = masked_frame(b"a");
        two.extend(masked_frame(b"b"));
        assert_eq!(g.scan(&two), None);
        assert!(g.backlogged());
        handled(&state, 1);
        assert!(g.backlogged());
        handled(&state, 2);
        assert!(!g.backlogged());
        // A partial frame alone never holds reading back.
        assert_eq!(g.scan(&masked_frame(&[b'x'; 500])[..100]), None);
        assert!(!g.backlogged());
    }
}
