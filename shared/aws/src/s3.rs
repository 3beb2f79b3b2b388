//! [`DataFileStore`] on S3: file `name` of set `setId` is object `dfs/<setId>/<name>`.
//!
//! Writes stream: bodies up to one part (8 MiB) go up in one PutObject; longer ones in a
//! multipart upload of 8 MiB parts, so memory stays bounded by one part whatever the
//! file size (an aborted upload is cleaned up with AbortMultipartUpload). Reads stream the
//! object body.

use crate::error;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use handoff_core::ids::DataFileSetId;
use handoff_ports::{ByteStream, DataFileInfo, DataFileStore, PortError, PortResult};

const SERVICE: &str = "s3";
/// Size of every multipart part but the last (S3 wants ≥ 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

pub fn set_prefix(set: &DataFileSetId) -> String {
    format!("dfs/{set}/")
}

/// The object key of a file, after checking the names cannot escape their set.
pub fn object_key(set: &DataFileSetId, name: &str) -> PortResult<String> {
    let set_ok = !set.as_str().is_empty() && !set.as_str().contains('/') && set.as_str() != "..";
    if !set_ok {
        return Err(error::fault(SERVICE, format!("'{set}' is not a valid data file set id")));
    }
    let name_ok = !name.is_empty()
        && name.len() <= 512
        && !name.starts_with('/')
        && !name.chars().any(char::is_control)
        && !name.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if !name_ok {
        return Err(error::fault(SERVICE, format!("'{name}' is not a valid data file name")));
    }
    Ok(format!("{}{name}", set_prefix(set)))
}

fn body_error(e: std::io::Error) -> PortError {
    error::unavailable(SERVICE, format!("reading the file body failed: {e}"))
}

/// Data file sets in one bucket.
#[derive(Debug, Clone)]
pub struct S3DataFileStore {
    client: Client,
    bucket: String,
}

impl S3DataFileStore {
    pub fn new(client: Client, bucket: String) -> Self {
        Self { client, bucket }
    }

    async fn multipart(
        &self,
        key: &str,
        content_type: &str,
        first: Bytes,
        buffer: BytesMut,
        body: ByteStream,
    ) -> PortResult<u64> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "CreateMultipartUpload", e))?;
        let upload_id =
            created.upload_id.ok_or_else(|| error::fault(SERVICE, "CreateMultipartUpload returned no upload id"))?;
        let result = self.upload_parts(key, &upload_id, first, buffer, body).await;
        if result.is_err() {
            if let Err(e) =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await
            {
                tracing::warn!(key, upload_id, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "aborting a multipart upload failed");
            }
        }
        result
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, part: Bytes) -> PortResult<CompletedPart> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(S3Body::from(part))
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "UploadPart", e))?;
        Ok(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build())
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        mut buffer: BytesMut,
        mut body: ByteStream,
    ) -> PortResult<u64> {
        let mut parts = vec![self.upload_part(key, upload_id, 1, first).await?];
        let mut size = PART_SIZE as u64;
        loop {
            let chunk = body.next().await.transpose().map_err(body_error)?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                buffer.extend_from_slice(&chunk);
            }
            while buffer.len() >= PART_SIZE || (done && !buffer.is_empty()) {
                let take = buffer.len().min(PART_SIZE);
                let part = buffer.split_to(take).freeze();
                size += part.len() as u64;
                let number = parts.len() as i32 + 1;
                parts.push(self.upload_part(key, upload_id, number, part).await?);
            }
            if done {
                break;
            }
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "CompleteMultipartUpload", e))?;
        Ok(size)
    }

    async fn head(&self, key: &str) -> PortResult<Option<(u64, String)>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some((
                out.content_length.unwrap_or_default().max(0) as u64,
                out.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
            ))),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found()) => Ok(None),
            Err(e) => Err(error::sdk(SERVICE, "HeadObject", e)),
        }
    }
}

#[async_trait]
impl DataFileStore for S3DataFileStore {
    async fn write(
        &self,
        set: &DataFileSetId,
        name: &str,
        content_type: &str,
        mut body: ByteStream,
    ) -> PortResult<DataFileInfo> {
        let key = object_key(set, name)?;
        let content_type = if content_type.is_empty() { DEFAULT_CONTENT_TYPE } else { content_type };
        let mut buffer = BytesMut::new();
        while let Some(chunk) = body.next().await.transpose().map_err(body_error)? {
            buffer.extend_from_slice(&chunk);
            if buffer.len() >= PART_SIZE {
                let first = buffer.split_to(PART_SIZE).freeze();
                let size = self.multipart(&key, content_type, first, buffer, body).await?;
                return Ok(DataFileInfo { name: name.to_string(), size, content_type: content_type.to_string() });
            }
        }
        let size = buffer.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type(content_type)
            .body(S3Body::from(buffer.freeze()))
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "PutObject", e))?;
        Ok(DataFileInfo { name: name.to_string(), size, content_type: content_type.to_string() })
    }

    async fn read(&self, set: &DataFileSetId, name: &str) -> PortResult<Option<(DataFileInfo, ByteStream)>> {
        let key = object_key(set, name)?;
        let out = match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => return Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => return Ok(None),
            Err(e) => return Err(error::sdk(SERVICE, "GetObject", e)),
        };
        let info = DataFileInfo {
            name: name.to_string(),
            size: out.content_length.unwrap_or_default().max(0) as u64,
            content_type: out.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
        };
        let stream = futures::stream::unfold(out.body, |mut body| async move {
            match body.next().await {
                None => None,
                Some(Ok(bytes)) => Some((Ok(bytes), body)),
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), body)),
            }
        });
        Ok(Some((info, stream.boxed())))
    }

    async fn list(&self, set: &DataFileSetId) -> PortResult<Vec<DataFileInfo>> {
        // Validates the set id; the file name is a placeholder.
        object_key(set, "x")?;
        let prefix = set_prefix(set);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "ListObjectsV2", e))?;
            for object in out.contents.unwrap_or_default() {
                if let Some(key) = object.key {
                    keys.push(key);
                }
            }
            match out.next_continuation_token {
                Some(t) if out.is_truncated.unwrap_or(false) => token = Some(t),
                _ => break,
            }
        }
        let prefix = prefix.as_str();
        let heads: Vec<PortResult<Option<DataFileInfo>>> = futures::stream::iter(keys)
            .map(|key| async move {
                let name = key.strip_prefix(prefix).unwrap_or(&key).to_string();
                Ok(self.head(&key).await?.map(|(size, content_type)| DataFileInfo { name, size, content_type }))
            })
            .buffered(8)
            .collect()
            .await;
        let mut files = Vec::new();
        for head in heads {
            // A file deleted between listing and HEAD is simply not listed.
            if let Some(info) = head? {
                files.push(info);
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    async fn download_url(
        &self,
        set: &DataFileSetId,
        name: &str,
        valid_for: std::time::Duration,
    ) -> PortResult<String> {
        let key = object_key(set, name)?;
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(valid_for)
            .map_err(|e| error::fault(SERVICE, format!("presigning: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .presigned(config)
            .await
            .map_err(|e| error::fault(SERVICE, format!("presigning {key}: {e}")))?;
        Ok(request.uri().to_string())
    }

    async fn health(&self) -> PortResult<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "HeadBucket", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_their_set() {
        let set = DataFileSetId::new("set-1");
        assert_eq!(object_key(&set, "out.csv").expect("key"), "dfs/set-1/out.csv");
        assert_eq!(object_key(&set, "dir/out.csv").expect("key"), "dfs/set-1/dir/out.csv");
        for bad in ["", "/abs", "../x", "a/../b", "a//b", "a\nb"] {
            assert!(object_key(&set, bad).is_err(), "{bad:?}");
        }
        assert!(object_key(&DataFileSetId::new("a/b"), "x").is_err());
        assert!(object_key(&DataFileSetId::new(""), "x").is_err());
    }
}
