//! Connections on both ports, before any request: at most
//! `per_address` open from one address and `total` in all (a client over
//! either is closed at once), and a new connection must send its first
//! bytes (a TLS hello, the HTTP/2 preface, a request line) within
//! [`FIRST_BYTES`] or it is closed. So a slowloris — a thousand
//! connections opened and left silent — holds a few slots of its own
//! address for a few seconds, never the coordinator's file descriptors.
//! On the dashboard's port hyper also closes a connection whose request
//! headers are not complete within [`HEADER_READ`].

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::admission::{Place, Places};

/// How long a new connection may stay silent.
pub(crate) const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long an HTTP/1 request's headers may take to arrive.
pub(crate) const HEADER_READ: Duration = Duration::from_secs(10);

/// Open connections per address and in all, shared by both ports.
pub(crate) struct Gate(Arc<Places<IpAddr>>);

/// One admitted connection's place; dropping it (with the connection)
/// frees it.
pub(crate) type Slot = Place<IpAddr>;

impl Gate {
    pub(crate) fn new(per_address: usize, total: usize) -> Arc<Self> {
        Arc::new(Self(Places::new(per_address.max(1), total.max(1), "stylefarm_connections")))
    }

    /// The default overall cap: half the process's file descriptors
    /// (the rest are the database's, storage's and the clients'), at
    /// least 64.
    pub(crate) fn default_total() -> usize {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given and nothing else.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 };
        (soft.min(1 << 20) as usize / 2).max(64)
    }

    /// A place for a connection from `ip`, if both caps allow.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let slot = self.0.take(&ip).ok();
        if slot.is_none() {
            metrics::counter!("stylefarm_connections_refused_total").increment(1);
        }
        slot
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.0.open()
    }
}

/// A connection that passed the gate, holding its place while it lives.
pub(crate) struct Guarded {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
}

impl Guarded {
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepts on `listener` until the receiving side is dropped: each
/// connection over the gate's caps is closed at once; each admitted one
/// waits in its own task (at most [`FIRST_BYTES`]) for its first bytes,
/// so a silent client never holds up the next, and is then handed on with
/// Nagle's algorithm off (small responses must not wait for the client's
/// delayed ACK).
pub(crate) fn accept(listener: TcpListener, gate: Arc<Gate>) -> mpsc::Receiver<Guarded> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, don't spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = gate.admit(peer.ip()) else {
                tracing::debug!(%peer, "connection refused: over the connection limits");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut probe = [0u8; 1];
                match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut probe)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let _ = tx.send(Guarded { stream, peer, _slot: slot }).await;
                    }
                    Ok(_) => {}
                    Err(_) => tracing::debug!(%peer, "connection closed: nothing sent within {FIRST_BYTES:?}"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_surplus_connections_hold_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new(3, 100);
        let mut ready = accept(listener, gate.clone());
        // Three silent connections take this address's places …
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(gate.open(), 3);
        // … so a fourth is closed at once, without being read.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read(&mut fourth, &mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        // A client that speaks is handed on once it does.
        silent[0].write_all(b"x").await.unwrap();
        let handed = tokio::time::timeout(Duration::from_secs(2), ready.recv()).await.unwrap().unwrap();
        assert_eq!(handed.peer().ip(), addr.ip());
        drop(handed);
        drop(silent.remove(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(gate.open(), 2, "a closed connection frees its place");
    }

    #[test]
    fn places_are_per_address_and_in_all() {
        let gate = Gate::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = gate.admit(a).unwrap();
        let _s2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per address");
        let _s3 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "in all");
        drop(s1);
        assert!(gate.admit(b).is_some());
    }
}
