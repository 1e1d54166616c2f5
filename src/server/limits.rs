//! Connection limits for the operator's HTTP listeners: at most so many connections at once,
//! and from one address, and a connection that stalls (a client that stops reading its answer, or sends nothing)
//! is closed, so a slow or hostile client holds neither memory nor a scrape slot for long.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; further clients wait in the kernel's accept queue.
    pub connections: usize,
    /// Connections open at once from one address; a further one is closed at once, so one
    /// client cannot take the whole of `connections` (the kubelet's probes come from the node's
    /// address).
    pub per_peer: usize,
    /// While an answer is being written, each window of this long must carry at least
    /// `min_progress` bytes, or the connection is closed (a client that stopped reading, or
    /// reads a few bytes now and then).
    pub write_stall: Duration,
    /// Bytes a client must take per `write_stall` while an answer waits for it.
    pub min_progress: usize,
    /// The kernel's send buffer of each connection (it counts towards the pod's memory, and
    /// a larger one would take a whole answer from a client that never reads it).
    pub send_buffer: usize,
    /// A connection that sends nothing for this long (between requests too) is closed.
    pub read_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 128,
            per_peer: 16,
            write_stall: Duration::from_secs(10),
            min_progress: 256 * 1024,
            send_buffer: 256 * 1024,
            read_idle: Duration::from_secs(120),
        }
    }
}

/// A TCP listener that applies [`Limits`] to each connection it accepts.
pub struct Limited {
    listener: TcpListener,
    open: Arc<Semaphore>,
    peers: Peers,
    limits: Limits,
}

/// Connections open by peer address.
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;

impl Limited {
    pub fn new(listener: TcpListener, limits: Limits) -> Limited {
        Limited {
            listener,
            open: Arc::new(Semaphore::new(limits.connections.max(1))),
            peers: Peers::default(),
            limits,
        }
    }
}

/// One open connection of a peer; counted down when dropped.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, or `None` when it has `max` connections open already.
    fn take(peers: &Peers, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = crate::lock(peers);
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = crate::lock(&self.peers);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Stalling;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Stalling, std::net::SocketAddr) {
        // The semaphore is never closed, so this wait ends only with a permit.
        let permit = loop {
            if let Ok(permit) = self.open.clone().acquire_owned().await {
                break permit;
            }
        };
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            // A peer at its limit: closed at once (dropping the stream).
            let Some(peer) = PeerSlot::take(&self.peers, addr.ip(), self.limits.per_peer) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.limits.send_buffer);
            return (Stalling::new(stream, self.limits, permit, peer), addr);
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that fails with `TimedOut` once its client takes an answer too slowly, or
/// sends nothing for too long.
pub struct Stalling {
    stream: TcpStream,
    limits: Limits,
    /// Armed when a write first waits for the client, until the client's next request.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes written in the current window of the write timer.
    window_bytes: usize,
    read_timer: Pin<Box<Sleep>>,
    _open: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl Stalling {
    fn new(
        stream: TcpStream,
        limits: Limits,
        open: OwnedSemaphorePermit,
        peer: PeerSlot,
    ) -> Stalling {
        Stalling {
            stream,
            limits,
            write_timer: None,
            window_bytes: 0,
            read_timer: Box::pin(tokio::time::sleep(limits.read_idle)),
            _open: open,
            _peer: peer,
        }
    }

    /// A pending write: arms the window timer on the first pending poll; when a window ends
    /// with too little written, fails, else starts the next window.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self.limits.write_stall;
        if self.write_timer.is_none() {
            self.window_bytes = 0;
        }
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if self.window_bytes < self.limits.min_progress => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client reads too slowly or not at all",
                    ));
                }
                Poll::Ready(()) => {
                    self.window_bytes = 0;
                    timer.as_mut().reset(Instant::now() + stall);
                }
            }
        }
    }

    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => self.write_pending(cx).map(Err),
            Poll::Ready(Ok(n)) => {
                self.window_bytes = self.window_bytes.saturating_add(n);
                Poll::Ready(Ok(n))
            }
            failed => failed,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.read_timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                let idle = this.limits.read_idle;
                this.read_timer.as_mut().reset(Instant::now() + idle);
                // The client asked again (or closed): the answer before is done.
                this.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
