//! The image server on port 8080: Longhorn's backing-image manager or CDI's importer downloads each
//! disk from here. GET and HEAD with `Content-Length`, single byte ranges (206, 416), no directory
//! listing, no path outside the image directory, and only finished images: a file being written is
//! named `*.part` and never matches. Each image's name carries a random token, so its URL cannot be
//! guessed; the file (and so the URL) is deleted once its import no longer needs it.

use std::{io::SeekFrom, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures::{StreamExt, stream};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::{Request, Response, body::Frame};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    http_server::{self, Body},
    metrics::Metrics,
};

pub(crate) use http_parts::{RangeRequest, is_servable_name, parse_range};
/// Suffix of an image still being written.
pub(crate) const PARTIAL_SUFFIX: &str = ".part";
/// Frame size of image bodies: small, because a client that reads slowly holds a frame or two.
const CHUNK: usize = 256 << 10;

/// A random token for image names: 128 bits, hex.
pub(crate) fn new_token() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    // The OS RNG failing is not recoverable in any useful way; fall back to the clock and pid so
    // names stay unique, though then guessable (logged).
    if SystemRandom::new().fill(&mut bytes).is_err() {
        tracing::error!("system RNG failed; image token falls back to time and pid");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    hex::encode(bytes)
}

/// Serves images from one directory.
#[derive(Clone, Debug)]
pub(crate) struct ImageServer {
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl ImageServer {
    /// Serves the images in `dir`.
    pub(crate) fn new(dir: impl Into<PathBuf>, metrics: Arc<Metrics>) -> Self {
        Self {
            dir: dir.into(),
            metrics,
        }
    }

    /// Answers one request.
    pub(crate) async fn handle<B>(&self, request: Request<B>) -> Response<Body> {
        let method = request.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let mut response = http_server::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let name = request.uri().path().trim_start_matches('/');
        if !is_servable_name(name) {
            return http_server::text(StatusCode::NOT_FOUND, "not found\n");
        }
        let path = self.dir.join(name);
        // A regular file only, never through a link: the directory is the controller's, but a
        // link planted in it must not turn the server into a reader of the node's files.
        let opened = tokio::task::spawn_blocking(move || diskconv::source::open_regular(&path)).await;
        let Ok(Ok(file)) = opened else {
            return http_server::text(StatusCode::NOT_FOUND, "not found\n");
        };
        let mut file = tokio::fs::File::from_std(file);
        let size = match file.metadata().await {
            Ok(meta) => meta.len(),
            Err(_) => return http_server::text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let range = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
        let (status, start, length) = match parse_range(range, size) {
            RangeRequest::Full => (StatusCode::OK, 0, size),
            RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            RangeRequest::Unsatisfiable => {
                let mut response =
                    http_server::text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
        };
        let body = if method == Method::HEAD || length == 0 {
            http_server::full(Bytes::new())
        } else {
            if let Err(error) = file.seek(SeekFrom::Start(start)).await {
                tracing::warn!(image = name, %error, "seek failed");
                return http_server::text(StatusCode::INTERNAL_SERVER_ERROR, "read error\n");
            }
            file_body(file, length, self.metrics.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + length - 1))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        tracing::debug!(image = name, %method, start, length, "serving image");
        response
    }
}

/// Streams `length` bytes of `file` from its current position in [`CHUNK`] frames.
fn file_body(file: tokio::fs::File, length: u64, metrics: Arc<Metrics>) -> Body {
    let chunks = stream::unfold((file, length), move |(mut file, left)| {
        let metrics = metrics.clone();
        async move {
            if left == 0 {
                return None;
            }
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buffer = vec![0u8; want];
            match file.read_exact(&mut buffer).await {
                Ok(_) => {
                    metrics.image_bytes_served.inc_by(want as u64);
                    Some((Ok(Frame::data(Bytes::from(buffer))), (file, left - want as u64)))
                }
                // The file shrank or vanished (import deleted): end the body with an error so the
                // client sees a short read, not silently truncated data.
                Err(error) => Some((Err(error), (file, 0))),
            }
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(chunks.boxed()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    async fn status_of(server: &ImageServer, name: &str) -> StatusCode {
        let request = Request::get(format!("/{name}")).body(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), server.handle(request))
            .await
            .expect("the server hung")
            .status()
    }

    #[tokio::test]
    async fn links_fifos_and_directories_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let server = ImageServer::new(dir.path(), Arc::new(Metrics::new()));
        std::fs::write(dir.path().join("real.img"), b"disk").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd.img")).unwrap();
        std::os::unix::fs::symlink("real.img", dir.path().join("alias.img")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.path().join("fifo.img"),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("dir.img")).unwrap();
        assert_eq!(status_of(&server, "real.img").await, StatusCode::OK);
        for name in ["passwd.img", "alias.img", "fifo.img", "dir.img"] {
            assert_eq!(status_of(&server, name).await, StatusCode::NOT_FOUND, "{name}");
        }
    }

    #[test]
    fn tokens_are_unique_128_bit_hex() {
        let a = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_token());
    }
}
