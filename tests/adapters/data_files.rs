//! The data file store adapter (S3).

use super::*;

fn pattern(offset: usize, len: usize) -> Bytes {
    Bytes::from((offset..offset + len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn data_files_stream_multipart_and_small() {
    let config = sdk().await;
    let s3_config = aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build();
    let client = aws_sdk_s3::Client::from_conf(s3_config);
    let bucket = unique("data");
    client.create_bucket().bucket(&bucket).send().await.expect("bucket");
    let store = S3DataFileStore::new(client, bucket);
    store.health().await.expect("health");
    let set = DataFileSetId::new("set-1");

    // 20 MB in 1 MiB chunks: three parts (8 + 8 + 4 MiB-ish).
    const TOTAL: usize = 20_000_000;
    const CHUNK: usize = 1 << 20;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..TOTAL).step_by(CHUNK).map(|o| Ok(pattern(o, CHUNK.min(TOTAL - o)))).collect();
    let info = store
        .write(&set, "big.bin", "application/octet-stream", futures::stream::iter(chunks).boxed())
        .await
        .expect("write big");
    assert_eq!(info.size, TOTAL as u64);
    let (info, mut body) = store.read(&set, "big.bin").await.expect("read").expect("exists");
    assert_eq!(info.size, TOTAL as u64);
    let mut offset = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        assert_eq!(chunk, pattern(offset, chunk.len()), "at {offset}");
        offset += chunk.len();
    }
    assert_eq!(offset, TOTAL);

    let small = futures::stream::iter(vec![Ok(Bytes::from_static(b"a,b\n")), Ok(Bytes::from_static(b"1,2\n"))]).boxed();
    let info = store.write(&set, "small.csv", "text/csv", small).await.expect("write small");
    assert_eq!(info.size, 8);
    let (_, body) = store.read(&set, "small.csv").await.expect("read").expect("exists");
    let text: Vec<Bytes> = body.map(|c| c.expect("chunk")).collect().await;
    assert_eq!(text.concat(), b"a,b\n1,2\n");

    // A failing body leaves nothing behind.
    let failing =
        futures::stream::iter(vec![Ok(pattern(0, 9 << 20)), Err(std::io::Error::other("source broke"))]).boxed();
    assert!(store.write(&set, "broken.bin", "application/octet-stream", failing).await.is_err());

    let files = store.list(&set).await.expect("list");
    let summary: Vec<(String, u64, String)> = files.into_iter().map(|f| (f.name, f.size, f.content_type)).collect();
    assert_eq!(
        summary,
        vec![
            ("big.bin".to_string(), TOTAL as u64, "application/octet-stream".to_string()),
            ("small.csv".to_string(), 8, "text/csv".to_string())
        ]
    );
    assert!(store.read(&set, "missing").await.expect("read").is_none());
    assert!(store.list(&DataFileSetId::new("nothing")).await.expect("list").is_empty());
}
