//! A loopback HTTP/1.1 server whose handler may answer, or drop the connection without an
//! answer: what a crashed or overloaded peer does, and what neither axum nor a mock can play.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The handler's answer: a response, or [`Dropped`] to close the connection without one (the
/// client sees the connection closed before a response, as after a reset).
pub type Answer = Result<Response<Full<Bytes>>, Dropped>;

/// The connection is closed without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// A request with its body read (bounded by `MAX_BODY`).
pub struct ReadRequest {
    pub method: hyper::Method,
    pub uri: hyper::Uri,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl ReadRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Larger bodies are refused: the chaos run's payloads and data files are small.
const MAX_BODY: usize = 64 * 1024 * 1024;

type Handler = dyn Fn(ReadRequest) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync;

/// Serves `handler` on 127.0.0.1 (`port` 0 picks one) until the runtime ends; returns the
/// base URL.
pub async fn serve<F, Fut>(port: u16, handler: F) -> std::io::Result<String>
where
    F: Fn(ReadRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let handler: Arc<Handler> = Arc::new(move |request| Box::pin(handler(request)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                            Ok(collected) => collected.to_bytes(),
                            Err(_) => return Err(Dropped),
                        };
                        handler(ReadRequest { method: parts.method, uri: parts.uri, headers: parts.headers, body })
                            .await
                    }
                });
                // An error here is the dropped connection itself (or the peer going away).
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(url)
}

/// A response with `status`, `content_type` and `body`.
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}
