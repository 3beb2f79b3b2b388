//! Moving payloads: small ones inline (`Raw`), large ones as data file sets in object
//! storage. Streams stay streams; only the inline threshold is ever buffered.

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt, TryStreamExt};
use handoff_core::exchange::Payload;
use handoff_core::ids::DataFileSetId;
use handoff_ports::{ByteStream, DataFileStore, PortError};
use std::sync::Arc;

/// The file name of a single-file payload set.
pub const PAYLOAD_FILE: &str = "payload";

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("data file set {0} has no file '{PAYLOAD_FILE}' and more or fewer than one file")]
    MissingFile(DataFileSetId),
    /// One body was asked of a set of several files (e.g. a rest delivery of collected files).
    #[error("data file set {set} holds {count} files, not one body; deliver it with sftp or fileUpload, or transform it into one file")]
    SeveralFiles { set: DataFileSetId, count: usize },
    #[error("payload could not be read: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A payload opened for reading: its bytes, and how many there are when known.
pub struct OpenedPayload {
    pub body: ByteStream,
    pub length: Option<u64>,
}

#[derive(Clone)]
pub struct PayloadCodec {
    files: Arc<dyn DataFileStore>,
    inline_limit: usize,
}

impl PayloadCodec {
    pub fn new(files: Arc<dyn DataFileStore>, inline_limit: usize) -> Self {
        Self { files, inline_limit }
    }

    /// Stores bytes: inline when small, else as a new data file set.
    pub async fn store(&self, bytes: Bytes, content_type: &str) -> Result<Payload, PayloadError> {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) if bytes.len() <= self.inline_limit => Ok(Payload::raw(text)),
            _ => {
                let body: ByteStream = stream::once(async move { Ok(bytes) }).boxed();
                self.store_in_file_set(body, content_type).await
            }
        }
    }

    /// Stores a stream of unknown length, buffering at most the inline limit.
    pub async fn store_stream(&self, mut body: ByteStream, content_type: &str) -> Result<Payload, PayloadError> {
        let mut head = BytesMut::new();
        while head.len() <= self.inline_limit {
            match body.next().await {
                Some(chunk) => head.extend_from_slice(&chunk.map_err(PayloadError::Read)?),
                None => return self.store(head.freeze(), content_type).await,
            }
        }
        let head = head.freeze();
        let whole = stream::once(async move { Ok(head) }).chain(body).boxed();
        self.store_in_file_set(whole, content_type).await
    }

    async fn store_in_file_set(&self, body: ByteStream, content_type: &str) -> Result<Payload, PayloadError> {
        let set = DataFileSetId::new(format!("dfs-{}", uuid::Uuid::now_v7()));
        self.files.write(&set, PAYLOAD_FILE, content_type, body).await?;
        Ok(Payload::DataFileSet { data_file_set_id: set })
    }

    /// The payload as a stream (for deliveries).
    pub async fn open(&self, payload: &Payload) -> Result<ByteStream, PayloadError> {
        Ok(self.open_sized(payload).await?.body)
    }

    /// The payload as a stream with its size when the store knows it (every inline payload
    /// and stored file), so a delivery can send `Content-Length` rather than chunks.
    pub async fn open_sized(&self, payload: &Payload) -> Result<OpenedPayload, PayloadError> {
        match payload {
            Payload::Raw { raw } => {
                let bytes = Bytes::from(raw.clone());
                let length = Some(bytes.len() as u64);
                Ok(OpenedPayload { body: stream::once(async move { Ok(bytes) }).boxed(), length })
            }
            Payload::DataFileSet { data_file_set_id } => {
                if let Some((info, body)) = self.files.read(data_file_set_id, PAYLOAD_FILE).await? {
                    return Ok(OpenedPayload { body, length: Some(info.size) });
                }
                // A set of one named file (collected, then transformed) is that file.
                let files = self.files.list(data_file_set_id).await?;
                let only = match files.as_slice() {
                    [only] => only,
                    [] => return Err(PayloadError::MissingFile(data_file_set_id.clone())),
                    several => {
                        return Err(PayloadError::SeveralFiles { set: data_file_set_id.clone(), count: several.len() })
                    }
                };
                let (info, body) = self
                    .files
                    .read(data_file_set_id, &only.name)
                    .await?
                    .ok_or_else(|| PayloadError::MissingFile(data_file_set_id.clone()))?;
                Ok(OpenedPayload { body, length: Some(info.size) })
            }
        }
    }

    /// The whole payload in memory (jq needs the whole document).
    pub async fn load(&self, payload: &Payload) -> Result<Bytes, PayloadError> {
        if let Payload::Raw { raw } = payload {
            return Ok(Bytes::from(raw.clone()));
        }
        let chunks: Vec<Bytes> = self.open(payload).await?.try_collect().await.map_err(PayloadError::Read)?;
        Ok(chunks.concat().into())
    }
}
