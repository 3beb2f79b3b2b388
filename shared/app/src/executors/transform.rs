//! The `Transform` sub-step: format conversion, metadata mapping and jq (the pure work is
//! [`handoff_core::formats::convert`]; this module moves the bytes).
//!
//! A data file set is transformed file by file into a new set, each file **streamed**: the
//! S3 object body is read incrementally (a synchronous bridge over the async body, so the
//! conversion runs on a blocking thread next to the async runtime), records are converted
//! one at a time, and the output goes through a bounded channel of 64 KiB chunks into the
//! multipart writer of [`DataFileStore::write`](handoff_ports::DataFileStore::write).
//! Memory is bounded by the read buffer, the channel (8 chunks), one multipart part and
//! one record — not by the file size. (A JSON document with a jq program is read whole,
//! because the program sees all of it; a JSON array without one streams element by element.)

use super::{payload_failure, ExecutionContext, StepOutput};
use bytes::Bytes;
use futures::StreamExt;
use handoff_core::definition::StepAction;
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::Payload;
use handoff_core::expression::{Expression, ExpressionVars, JqRunner};
use handoff_core::formats::{convert, output_file_name, Conversion, ConvertError, InputSpec, OutputSpec, Summary};
use handoff_core::ids::DataFileSetId;
use handoff_core::mapping::Mapping;
use handoff_core::retry::Failure;
use handoff_ports::{ByteStream, DataFileInfo};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Output is handed to the store in chunks of this size…
const CHUNK_BYTES: usize = 64 * 1024;
/// …with at most this many chunks in flight.
const CHANNEL_CHUNKS: usize = 8;

/// Everything a conversion needs, owned, to move onto a blocking thread.
struct Job {
    input: InputSpec,
    output: OutputSpec,
    mapping: Option<Arc<Mapping>>,
    function: Option<Expression>,
    vars: ExpressionVars,
    runner: Arc<dyn JqRunner>,
}

impl Job {
    fn run<R: Read, W: Write>(&self, input: R, output: W) -> Result<(W, Summary), ConvertError> {
        let conversion = Conversion {
            input: &self.input,
            output: &self.output,
            mapping: self.mapping.as_deref(),
            function: self.function.as_ref(),
            vars: &self.vars,
            runner: self.runner.as_ref(),
        };
        convert(input, &conversion, output)
    }

    fn describe(&self, summary: &Summary) -> String {
        format!(
            "{} → {}: {} record(s) in, {} out",
            self.input.format.name(),
            self.output.format_name(),
            summary.records_in,
            summary.records_out
        )
    }
}

/// Bad data (or a failing program) is the customer's to fix; I/O trouble is worth a retry.
/// Names the step, and the file of a data file set, the conversion failed in.
fn convert_failure(cx: &ExecutionContext<'_>, e: ConvertError, file: Option<&str>) -> Failure {
    let step = cx.naming_the_step();
    let message = match file {
        Some(name) => format!("{step}file '{name}': {e}"),
        None => format!("{step}{e}"),
    };
    if e.is_data_error() {
        Failure::business(e.code(), message)
    } else {
        Failure::transient(message)
    }
}

pub(super) async fn transform(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let Some(StepAction::Transformation { function, input, output, mapping }) = cx.action() else {
        return Err(Failure::system("sub-step Transform on a step that is not a transformation"));
    };
    let mapping = match mapping {
        None => None,
        Some(name) => Some(
            cx.app
                .mappings
                .get(name)
                .await
                .map_err(|e| match e {
                    crate::mappings::MappingLoadError::Port(p) => {
                        Failure::transient(format!("reading mapping '{name}': {p}"))
                    }
                    corrupt => Failure::system(corrupt.to_string()),
                })?
                .ok_or_else(|| {
                    Failure::business(
                        ErrorCode::MappingMissing,
                        format!("mapping '{name}' does not exist (PUT /mappings/{name} defines it)"),
                    )
                })?,
        ),
    };
    let job = Arc::new(Job {
        input: input.clone(),
        output: output.clone(),
        mapping,
        function: function.clone(),
        vars: cx.vars(),
        runner: cx.app.jq.clone(),
    });
    match &cx.message.input {
        Some(Payload::DataFileSet { data_file_set_id }) => transform_set(cx, job, data_file_set_id, logs).await,
        inline => {
            let bytes = match inline {
                Some(payload) => cx.codec.load(payload).await.map_err(payload_failure)?,
                None => Bytes::new(),
            };
            let worker = job.clone();
            let (out, summary) =
                tokio::task::spawn_blocking(move || worker.run(std::io::Cursor::new(bytes), Vec::new()))
                    .await
                    .map_err(|e| Failure::system(format!("the transformation task failed: {e}")))?
                    .map_err(|e| convert_failure(cx, e, None))?;
            logs.push(format!("Transformed {}", job.describe(&summary)));
            let payload =
                cx.codec.store(out.into(), job.output.format.content_type()).await.map_err(payload_failure)?;
            Ok(StepOutput { payload: Some(payload), ..StepOutput::default() })
        }
    }
}

/// Every file of the set into a new set, one file at a time.
async fn transform_set(
    cx: &ExecutionContext<'_>,
    job: Arc<Job>,
    set: &DataFileSetId,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let files = cx
        .app
        .ports
        .files
        .list(set)
        .await
        .map_err(|e| Failure::transient(format!("listing data file set {set}: {e}")))?;
    if files.is_empty() {
        return Err(Failure::system(format!("data file set {set} has no files")));
    }
    let out_set = DataFileSetId::new(format!("dfs-{}", uuid::Uuid::now_v7()));
    let mut names = HashSet::new();
    for file in &files {
        let out_name = output_file_name(&file.name, job.output.format);
        if !names.insert(out_name.clone()) {
            return Err(Failure::business(
                ErrorCode::InvalidPayload,
                format!(
                    "two files of data file set {set} would both become '{out_name}' in {} format",
                    job.output.format_name()
                ),
            ));
        }
        let (_, body) = cx
            .app
            .ports
            .files
            .read(set, &file.name)
            .await
            .map_err(|e| Failure::transient(format!("reading {}: {e}", file.name)))?
            .ok_or_else(|| Failure::system(format!("file {} of data file set {set} disappeared", file.name)))?;
        let (summary, info) = stream_file(cx, job.clone(), body, &out_set, &file.name, &out_name).await?;
        logs.push(format!(
            "Transformed {} ({} bytes) into {} ({} bytes), {}",
            file.name,
            file.size,
            info.name,
            info.size,
            job.describe(&summary)
        ));
    }
    Ok(StepOutput { payload: Some(Payload::DataFileSet { data_file_set_id: out_set }), ..StepOutput::default() })
}

/// Streams one file through the conversion into `set`/`out_name`.
async fn stream_file(
    cx: &ExecutionContext<'_>,
    job: Arc<Job>,
    body: ByteStream,
    set: &DataFileSetId,
    in_name: &str,
    out_name: &str,
) -> Result<(Summary, DataFileInfo), Failure> {
    // Created here: the bridge needs the runtime's handle, and blocks only on the blocking thread.
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
    let converter = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter { tx, buffer: Vec::with_capacity(CHUNK_BYTES) };
        match job.run(reader, &mut writer) {
            Ok((_, summary)) => writer.flush().map(|()| summary).map_err(ConvertError::Write),
            Err(e) => {
                // The store must see a failure, not an end: a truncated file is never completed.
                writer.fail(e.to_string());
                Err(e)
            }
        }
    });
    let output: ByteStream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed();
    let written = cx.app.ports.files.write(set, out_name, job_content_type(cx), output).await;
    let converted = converter.await.map_err(|e| Failure::system(format!("the transformation task failed: {e}")))?;
    match (converted, written) {
        // The conversion's own error explains a failed write better than the write does.
        (Err(e), _) => Err(convert_failure(cx, e, Some(in_name))),
        (Ok(_), Err(e)) => Err(Failure::transient(format!("storing {out_name}: {e}"))),
        (Ok(summary), Ok(info)) => Ok((summary, info)),
    }
}

fn job_content_type(cx: &ExecutionContext<'_>) -> &'static str {
    match cx.action() {
        Some(StepAction::Transformation { output, .. }) => output.format.content_type(),
        _ => "application/octet-stream",
    }
}

/// A blocking `Write` feeding a bounded channel: a slow store slows the conversion down
/// instead of letting output pile up in memory.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the data file store stopped reading the output")
        })
    }

    fn fail(self, message: String) {
        // If the store already stopped reading, it has failed on its own.
        let _ = self.tx.blocking_send(Err(std::io::Error::other(message)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
