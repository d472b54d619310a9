//! A TCP listener that hands out connections already through their TLS
//! handshake (or plain ones, without TLS), for both servers: tonic takes
//! it as a stream ([`SecureListener::into_incoming`]), axum as an
//! [`axum::serve::Listener`].
//!
//! Handshakes run on their own tasks, at most [`MAX_HANDSHAKES`] at once and
//! each within [`HANDSHAKE_TIMEOUT`], so a slow or silent client delays no
//! other. A failed handshake is counted by reason and closed; a client that
//! speaks plain HTTP to a TLS port is told so (gRPC: `UNAUTHENTICATED`
//! "requires TLS"; HTTP: a 400 saying https) instead of a bare reset.

use super::tls::{handshake_failure, Listener, ServerTls};
use super::SecurityStats;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Handshakes in progress at most; further connections wait in the kernel's
/// accept queue.
pub const MAX_HANDSHAKES: usize = 256;
/// A handshake not done by then is dropped (`timeout`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// An accepted connection, plain or TLS.
pub enum Conn {
    /// Without TLS.
    Plain(TcpStream),
    /// After a completed handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The peer of a connection, for tonic's `Request::extensions`.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerAddr;

    fn connect_info(&self) -> PeerAddr {
        let tcp = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        };
        PeerAddr(tcp.peer_addr().ok())
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Connections ready for a server. Dropping it stops the accept loop.
pub struct SecureListener {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl SecureListener {
    /// Starts accepting on `tcp` (on the current runtime). With `tls`, every
    /// connection goes through a handshake for `which` first.
    pub fn start(tcp: TcpListener, tls: Option<Arc<ServerTls>>, which: Listener, stats: Arc<SecurityStats>) -> io::Result<SecureListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, which, stats, tx));
        Ok(SecureListener { ready, local })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as the stream `tonic`'s `serve_with_incoming` takes.
    pub fn into_incoming(mut self) -> impl futures_util::Stream<Item = io::Result<Conn>> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| self.ready.poll_recv(cx).map(|c| c.map(|(conn, _)| Ok(conn))))
    }
}

impl axum::serve::Listener for SecureListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ends only once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
    which: Listener,
    stats: Arc<SecurityStats>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let accept_failed = super::Throttle::default();
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, never spin.
                if accept_failed.ready() {
                    tracing::warn!("accepting a connection failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            if tx.send((Conn::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let permit = tokio::select! {
            _ = tx.closed() => return,
            p = handshakes.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (acceptor, tx, stats) = (tls.acceptor(which), tx.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, acceptor, which, &stats)).await {
                Ok(Ok(conn)) => {
                    stats.handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tx.send((Conn::Tls(Box::new(conn)), peer)).await;
                }
                Ok(Err(None)) => tracing::debug!(%peer, "plaintext client on a TLS port"),
                Ok(Err(Some(reason))) => {
                    stats.handshake_failed(reason);
                    tracing::debug!(%peer, reason, "TLS handshake failed");
                }
                Err(_) => stats.handshake_failed("timeout"),
            }
        });
    }
}

async fn handshake(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    which: Listener,
    stats: &SecurityStats,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Option<&'static str>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err(Some("closed_by_client")),
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
            // Counted before the client is told, so whoever sees the refusal
            // also finds it in the counters. `None`: already counted.
            stats.handshake_failed("plaintext");
            tell_plaintext_client(stream, which).await;
            return Err(None);
        }
        Ok(_) => {}
        Err(_) => return Err(Some("io_error")),
    }
    acceptor.accept(stream).await.map_err(|e| Some(handshake_failure(&e)))
}

/// What a TLS port tells a client that spoke plain HTTP to it (bounded by
/// the handshake timeout).
const PLAINTEXT_MESSAGE: &str = "this collector port requires TLS: use https://";

async fn tell_plaintext_client(stream: TcpStream, which: Listener) {
    use tokio::io::AsyncWriteExt;
    match which {
        Listener::Http => {
            let mut stream = stream;
            let body = format!("{PLAINTEXT_MESSAGE}\n");
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Listener::Ingest => {
            // A gRPC client gets a status it can show: every call on this
            // connection is answered UNAUTHENTICATED, then it is closed.
            let service = hyper::service::service_fn(|_request| async {
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", (tonic::Code::Unauthenticated as i32).to_string())
                    .header("grpc-message", PLAINTEXT_MESSAGE)
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
            });
            let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
}
