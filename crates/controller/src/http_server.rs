//! The accept loop both of the controller's HTTP listeners use (image server, metrics): HTTP/1.1,
//! one task per connection, a header read timeout so idle sockets do not pile up, a cap on
//! connections (in all and per client address) so that clients which connect and never read
//! cannot exhaust memory and descriptors, and a write timeout that drops a client that stops
//! reading mid-body.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};

/// Response body type of every handler.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Upstream's Go server uses a 10 s header timeout too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Longhorn's backing-image managers (one per node) and CDI importers
/// hold one connection per image they download; a few hundred bytes of state plus a frame or two
/// of image data each.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// Connections served at once to one client address.
pub(crate) const MAX_CONNECTIONS_PER_CLIENT: usize = 32;
/// A write that makes no progress for this long ends the connection: the client stopped reading.
pub(crate) const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Who holds how many connections.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its slot back when dropped.
struct Admitted {
    slots: Arc<Mutex<Slots>>,
    client: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.total = slots.total.saturating_sub(1);
        if let Some(n) = slots.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.per_client.remove(&self.client);
            }
        }
    }
}

fn admit(slots: &Arc<Mutex<Slots>>, client: IpAddr) -> Option<Admitted> {
    let mut guard = slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mine = guard.per_client.get(&client).copied().unwrap_or(0);
    if guard.total >= MAX_CONNECTIONS || mine >= MAX_CONNECTIONS_PER_CLIENT {
        return None;
    }
    guard.total += 1;
    *guard.per_client.entry(client).or_insert(0) += 1;
    Some(Admitted {
        slots: slots.clone(),
        client,
    })
}

/// Serves `listener` with `handler` until the process ends.
pub(crate) async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = admit(&slots, peer.ip()) else {
            tracing::warn!(%peer, "too many connections; refusing with 503");
            tokio::spawn(refuse(stream));
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let service = service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    TokioIo::new(StallTimeout::new(stream, WRITE_STALL_TIMEOUT)),
                    service,
                );
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// Answers a connection over the caps with a short 503 (a client retries later) and closes it.
async fn refuse(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

/// A stream whose writes fail with `TimedOut` once one has been pending for `limit`.
struct StallTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> StallTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
        }
    }

    fn pending_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A small fixed body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A response with a status and a short text body.
pub(crate) fn text(status: http::StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn a_client_over_its_cap_gets_503_and_a_freed_slot_serves_again() {
        let (listener, addr) = listener().await;
        tokio::spawn(serve(listener, |_| async { text(http::StatusCode::OK, "ok\n") }));
        // Connections that never send a request hold their slots.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_CLIENT {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them all before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        over.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stalled_past_the_limit_fails_with_timed_out() {
        let (near, _far) = tokio::io::duplex(16);
        let mut stream = StallTimeout::new(near, WRITE_STALL_TIMEOUT);
        stream.write_all(&[1u8; 16]).await.unwrap();
        // Nobody reads `_far`: the next write can only time out.
        let err = stream.write_all(&[2u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
