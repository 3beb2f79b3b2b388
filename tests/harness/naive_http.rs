//! A target that speaks HTTP/1.0 the way simple and legacy systems do (Python's
//! `http.server`, old embedded stacks): it reads exactly `Content-Length` bytes of body and
//! knows nothing of chunked transfer coding, so a chunked body reaches it as empty.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the naive target read: the request head's lines and the body it took.
#[derive(Debug, Clone)]
pub struct NaiveRequest {
    pub request_line: String,
    /// Header lines as sent, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl NaiveRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub struct NaiveHttpServer {
    pub url: String,
    received: Arc<Mutex<Vec<NaiveRequest>>>,
}

/// Requests whose head is larger than this are dropped (a test target, not a product).
const MAX_HEAD: usize = 64 * 1024;

impl NaiveHttpServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<NaiveRequest>>> = Arc::default();
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    if let Some(request) = read_request(&mut socket).await {
                        log.lock().expect("lock").push(request);
                        let _ = socket.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, received }
    }

    pub fn received(&self) -> Vec<NaiveRequest> {
        self.received.lock().expect("lock").clone()
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<NaiveRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Like http.server: the body is Content-Length bytes, or nothing.
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(NaiveRequest { request_line, headers, body })
}
