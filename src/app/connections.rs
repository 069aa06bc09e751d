//! The gRPC port's connections, before HTTP/2 sees them: how many may be open at once, and,
//! with TLS, how long one may stay silent before its handshake.
//!
//! Why here and not in HTTP/2's settings: every open connection costs memory (its buffers, its
//! streams' state) whether or not it ever sends a request, and health and reflection need no
//! token, so a client that opens thousands of connections, or keeps them silent, reaches the
//! server's memory and its handshake slots without being anybody. So:
//!
//! - a new connection waits for its first byte (HTTP/2's preface, or a TLS ClientHello) on
//!   one of `MAX_PENDING` slots, for at most `FIRST_BYTE_TIMEOUT`, then with TLS finishes its
//!   handshake within `HANDSHAKE_TIMEOUT`, then sends HTTP/2's whole 24-byte preface within
//!   `PREFACE_TIMEOUT`, still on its slot: silent sockets, and sockets that stop after a
//!   byte, leave within seconds and cannot take the places of clients that speak at once,
//!   whose handshakes start at once (`tests/api/limits.rs` measures both). The preface read
//!   is handed to HTTP/2 again (`Counted`). When every slot is taken, a newcomer pushes the
//!   oldest such connection out (`Waiting`) rather than being refused: slow talkers (a byte
//!   every half second) could otherwise keep every slot for as long as they kept coming;
//!   now each holds one only until newer ones arrive;
//! - at most `--max-connections` that spoke are open at once: past that, a connection is
//!   closed (its client sees the connection closed, and retries elsewhere or later), with a
//!   warning in the log at most once a second, and the open ones are served as before. A
//!   connection holds its place (`Counted`) until it is dropped.
//!
//! Streams per connection are HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (`--max-streams-per-connection`, set in `app`), and the long-lived streams that need no
//! token are capped in `grpc::streams`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use backon::{ConstantBuilder, Retryable};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::audit::Throttle;
use crate::tls::Tls;

/// How long a TLS client may stay silent after connecting: a real client sends its ClientHello
/// at once; a socket that sends nothing is dropped, and gives its handshake slot back.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client that began its handshake and does not finish it is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the accept loop hands on before HTTP/2 takes them.
const QUEUE: usize = 64;

/// HTTP/2's connection preface: the first 24 bytes of every gRPC client.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Why a connection that closed before its first byte was dropped: load balancers' TCP checks
/// do that all day, so it is not worth a warning.
const CLOSED: &str = "the client closed the connection";
/// How long a client has for the whole preface once its first byte (or its TLS handshake) is
/// in: it comes in one packet; a client that sends it a byte at a time is holding a slot.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that holds one of the server's places until it closes.
///
/// Its preface was read before it got its place (`preface`); HTTP/2 reads it again from here.
pub struct Counted<IO> {
    io: IO,
    /// Given back when the connection is dropped, whoever drops it.
    _place: OwnedSemaphorePermit,
    /// Bytes of `PREFACE` not handed to HTTP/2 yet.
    replay: usize,
}

impl<IO> Counted<IO> {
    /// `io`, whose preface was read, holding `place`.
    fn new(io: IO, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _place: place,
            replay: PREFACE.len(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    /// The preface first, as it was read, then the connection.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay > 0 {
            let from = PREFACE.len() - self.replay;
            let n = self.replay.min(buf.remaining());
            buf.put_slice(&PREFACE[from..from + n]);
            self.replay -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of the gRPC port, counted against `max_connections`.
pub struct Listener {
    listener: TcpListener,
    /// Connections that have not spoken yet: they wait for their first byte (and, with TLS,
    /// their handshake) on a slot of `MAX_PENDING`, not on a place, so that silent sockets
    /// cannot take the places of clients that speak at once.
    pending: Arc<Semaphore>,
    /// The connections on `pending` slots, oldest first, which the newest may push out.
    waiting: Waiting,
    /// Connections that spoke: at most `max_connections`.
    places: Arc<Semaphore>,
    max_connections: usize,
    /// Rate-limits the warnings about connections refused.
    refused: Arc<Throttle>,
    /// Rate-limits the warnings about connections closed before they spoke HTTP/2.
    unspoken: Arc<Throttle>,
}

/// How long a newcomer waits for the slot of the connection it pushed out.
const EVICTION: Duration = Duration::from_millis(200);
/// Why a connection that had not spoken was closed for a newcomer.
const EVICTED: &str = "closed for a newer connection: it had not spoken HTTP/2 yet, and every \
                       slot for such connections was taken";

/// The connections on pending slots, by arrival: each can be told to give its slot up.
#[derive(Default)]
struct Waiting {
    next: std::sync::atomic::AtomicU64,
    by_arrival: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>>,
}

impl Waiting {
    /// A slot for a new connection, `permit` held, registered as the newest.
    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = CancellationToken::new();
        self.by_arrival
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, evicted.clone());
        Slot {
            _permit: permit,
            id,
            evicted,
            by_arrival: self.by_arrival.clone(),
        }
    }

    /// Tells the oldest connection still waiting to give its slot up.
    fn evict_oldest(&self) {
        let oldest = self
            .by_arrival
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_first();
        if let Some((_, evicted)) = oldest {
            evicted.cancel();
        }
    }
}

/// A pending slot: given back, and the connection's entry gone, when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    id: u64,
    evicted: CancellationToken,
    by_arrival: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>>,
}

impl Slot {
    /// Resolves when a newer connection needs this slot.
    async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.by_arrival
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Connections that have not spoken yet, at once. A slot costs a task and a socket, little
/// enough for many: with `FIRST_BYTE_TIMEOUT`, silent sockets cannot hold them long.
const MAX_PENDING: usize = 1024;

impl Listener {
    /// Counts the connections of `listener` against `max_connections` (at least 1).
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            listener,
            pending: Arc::new(Semaphore::new(MAX_PENDING)),
            waiting: Waiting::default(),
            places: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refused: Arc::new(Throttle::default()),
            unspoken: Arc::new(Throttle::default()),
        }
    }

    /// Plaintext connections, each holding a place while it is open: once it sent its first
    /// byte (HTTP/2's preface) within `FIRST_BYTE_TIMEOUT`.
    pub fn plaintext(self) -> ReceiverStream<io::Result<Counted<TcpStream>>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let this = Arc::new(self);
        tokio::spawn(async move {
            while let Some((tcp, peer, slot)) = this.next(&tx).await {
                let (this, tx) = (this.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    let heard = tokio::select! {
                        _ = slot.evicted() => Err(Unspoken::Failed(EVICTED.to_owned())),
                        heard = async {
                            first_byte(&tcp).await.map_err(Unspoken::Failed)?;
                            preface(&mut tcp).await
                        } => heard,
                    };
                    let spoke = match heard {
                        Ok(()) => Ok(tcp),
                        Err(Unspoken::Foreign(reason)) => {
                            go_away(tcp, PROTOCOL_ERROR, NOT_HTTP2).await;
                            Err(reason)
                        }
                        Err(Unspoken::Failed(reason)) => Err(reason),
                    };
                    match spoke {
                        Ok(tcp) => match this.place(peer) {
                            Some(place) => {
                                drop(slot);
                                let _ = tx.send(Ok(Counted::new(tcp, place))).await;
                            }
                            // Told why, on its pending slot, which bounds how many linger.
                            None => go_away(tcp, ENHANCE_YOUR_CALM, FULL).await,
                        },
                        Err(reason) if reason == CLOSED => {
                            tracing::debug!(%peer, "a connection closed before it spoke");
                        }
                        Err(reason) => this.unspoken.warn(|suppressed| {
                            tracing::warn!(
                                %peer, %reason, suppressed,
                                "a connection was closed before its first request"
                            )
                        }),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// TLS connections, each with the configuration current when it came and holding a place
    /// while it is open, once its handshake succeeded. A client that fails its handshake
    /// (plaintext on a TLS port, no or a wrong client certificate, silence) is dropped, with a
    /// warning at most once a second that names its address and the reason, and the server
    /// goes on.
    pub fn tls(
        self,
        tls: Arc<Tls>,
    ) -> ReceiverStream<io::Result<Counted<tokio_rustls::server::TlsStream<TcpStream>>>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(Throttle::default());
        let this = Arc::new(self);
        tokio::spawn(async move {
            while let Some((tcp, peer, slot)) = this.next(&tx).await {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let (this, tx, failed) = (this.clone(), tx.clone(), failed.clone());
                tokio::spawn(async move {
                    let shaken = tokio::select! {
                        _ = slot.evicted() => Err(EVICTED.to_owned()),
                        shaken = async {
                            match handshake(acceptor, tcp).await {
                                Ok(mut stream) => match preface(&mut stream).await {
                                    Ok(()) => Ok(stream),
                                    Err(Unspoken::Foreign(reason) | Unspoken::Failed(reason)) => {
                                        // The handshake worked: say why over TLS, as any
                                        // closing.
                                        let _ =
                                            tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                                        Err(reason)
                                    }
                                },
                                Err(reason) => Err(reason),
                            }
                        } => shaken,
                    };
                    match shaken {
                        Ok(stream) => match this.place(peer) {
                            Some(place) => {
                                drop(slot);
                                let _ = tx.send(Ok(Counted::new(stream, place))).await;
                            }
                            None => go_away(stream, ENHANCE_YOUR_CALM, FULL).await,
                        },
                        Err(reason) => failed.warn(|suppressed| {
                            tracing::warn!(
                                %peer, %reason, suppressed,
                                "TLS handshake failed; the connection is closed"
                            )
                        }),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// The next connection, with a slot to wait for its first byte in; `None` once the server
    /// stopped (`tx` closed). A connection past `MAX_PENDING` is closed at once.
    async fn next<T>(&self, tx: &mpsc::Sender<T>) -> Option<(TcpStream, SocketAddr, Slot)> {
        loop {
            // Out of file descriptors and the like: wait, do not spin.
            let accept = (|| self.listener.accept())
                .retry(
                    ConstantBuilder::default()
                        .with_delay(Duration::from_millis(100))
                        .without_max_times(),
                )
                .notify(|e, _| tracing::warn!(error = %e, "cannot accept a connection"));
            // The server stopped: let go of the port, even with no client coming.
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return None,
                accepted = accept => accepted.ok()?,
            };
            let permit = match self.pending.clone().try_acquire_owned() {
                Ok(permit) => Ok(permit),
                // Full: the oldest that has not spoken makes room for the newcomer, so that
                // slow talkers cannot keep every slot (a byte every half second did).
                Err(_) => {
                    self.waiting.evict_oldest();
                    tokio::time::timeout(EVICTION, self.pending.clone().acquire_owned())
                        .await
                        .map_err(|_| ())
                        .and_then(|permit| permit.map_err(|_| ()))
                }
            };
            match permit {
                Ok(permit) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer, self.waiting.slot(permit)));
                }
                Err(()) => self.refused.warn(|suppressed| {
                    tracing::warn!(
                        %peer, pending = MAX_PENDING, suppressed,
                        "a connection was refused: too many connections have not spoken yet"
                    )
                }),
            }
        }
    }

    /// A place for a connection that spoke; `None`, with the connection to be closed, when
    /// `max_connections` are open.
    fn place(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.places.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) => {
                let max = self.max_connections;
                self.refused.warn(|suppressed| {
                    tracing::warn!(
                        %peer, max, suppressed,
                        "a connection was refused: the server has --max-connections open"
                    )
                });
                None
            }
        }
    }
}

/// A TLS handshake with its deadlines: the first byte within `FIRST_BYTE_TIMEOUT`, all of it
/// within `HANDSHAKE_TIMEOUT`. The reason in plain words when it fails.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    // Plaintext HTTP/2 begins with its preface; a TLS ClientHello with 0x16.
    if first_byte(&tcp).await? != 0x16 {
        return Err(
            "the client spoke plaintext to a TLS port; connect with TLS (an https:// URL, or \
             the CLI's --tls-ca)"
                .to_owned(),
        );
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err((e, tcp))) => {
            linger(tcp).await;
            Err(e.to_string())
        }
        Err(_) => Err(format!(
            "the handshake took longer than {HANDSHAKE_TIMEOUT:?}"
        )),
    }
}

/// Reads HTTP/2's preface, within `PREFACE_TIMEOUT`: a connection gets its place only once it
/// has sent it, so that connections that stop after a byte stay on the pending slots (and go
/// within seconds) instead of holding places that real clients need. The reason in plain
/// words when it does not come, or is not HTTP/2's (HTTP/1.1 to a gRPC port, say).
async fn preface<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<(), Unspoken> {
    use tokio::io::AsyncReadExt;
    let mut got = [0u8; PREFACE.len()];
    match tokio::time::timeout(PREFACE_TIMEOUT, io.read_exact(&mut got)).await {
        Err(_) => Err(Unspoken::Failed(format!(
            "HTTP/2's preface did not come within {PREFACE_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(Unspoken::Failed(e.to_string())),
        Ok(Ok(_)) if &got == PREFACE => Ok(()),
        Ok(Ok(_)) => Err(Unspoken::Foreign(format!(
            "the client does not speak HTTP/2 (it began with {:?}); gRPC clients do",
            String::from_utf8_lossy(&got)
        ))),
    }
}

/// Why a connection's preface did not come.
enum Unspoken {
    /// It did not come in time, or the connection failed: nothing to answer.
    Failed(String),
    /// Other bytes came: another protocol (HTTP/1.1, or TLS to a plaintext port).
    Foreign(String),
}

/// GOAWAY's code for a connection that did not begin with HTTP/2's preface.
const PROTOCOL_ERROR: u32 = 0x1;
/// GOAWAY's code for a connection past `--max-connections`: "the peer might be generating
/// excessive load". The CLI reads it (`cli::diagnose`).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// Why, in the GOAWAY, for a client that spoke another protocol.
const NOT_HTTP2: &str = "expected HTTP/2's connection preface: this port serves gRPC";
/// Why, in the GOAWAY, for a connection past `--max-connections`.
const FULL: &str = "the server has all the connections it takes open (--max-connections); \
                    retry shortly";

/// Answers a connection as HTTP/2 says, then closes it: the server's SETTINGS, a GOAWAY with
/// `code` and `why` (its debug data, which clients such as grpc-go show), then a lingering
/// close so that the client reads it. For a client that spoke another protocol (RFC 9113
/// §3.4: an invalid preface is a PROTOCOL_ERROR; a TLS client thus reads bytes that are not
/// TLS, and the CLI says to connect without TLS rather than "the connection was closed"),
/// and for one past `--max-connections`, which learns that it should retry.
async fn go_away<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, code: u32, why: &str) {
    use tokio::io::AsyncWriteExt;
    let why = why.as_bytes();
    let mut frames = Vec::with_capacity(9 + 9 + 8 + why.len());
    // SETTINGS: no parameters (length 0, type 4, no flags, stream 0).
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // GOAWAY (type 7) on stream 0: last stream 0, the error code, then why.
    let length = (8 + why.len()) as u32;
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&code.to_be_bytes());
    frames.extend_from_slice(why);
    let written = async {
        io.write_all(&frames).await?;
        io.flush().await
    };
    if tokio::time::timeout(LINGER, written)
        .await
        .is_ok_and(|written| written.is_ok())
    {
        linger(io).await;
    }
}

/// Closes a connection whose handshake failed so that its client reads why.
///
/// rustls has written the alert that names the reason (a client certificate required, or
/// signed by an unknown CA). Closing at once, with the client's next bytes unread (TLS 1.3
/// clients send their first request right after their Finished), makes the kernel answer
/// with a reset that can overtake the alert: the client would see "connection reset" rather
/// than the reason. So the server stops writing and reads what still comes, for at most
/// `LINGER` and `LINGER_BYTES`, as web servers' lingering close does. The caller still holds
/// the connection's pending slot, which bounds how many linger at once.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut tcp: IO) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, tcp.shutdown()).await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// How long a connection whose handshake failed is read from before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// How much of it is read at most.
const LINGER_BYTES: usize = 64 * 1024;

/// The connection's first byte, without reading it, once it arrives within
/// `FIRST_BYTE_TIMEOUT`; the reason in plain words when it does not.
async fn first_byte(tcp: &TcpStream) -> Result<u8, String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await {
        Err(_) => Err(format!("nothing arrived within {FIRST_BYTE_TIMEOUT:?}")),
        Ok(Ok(0)) => Err(CLOSED.to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(_)) => Ok(first[0]),
    }
}
