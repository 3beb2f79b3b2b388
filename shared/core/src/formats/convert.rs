//! Conversion: reading records (NDJSON, CSV, XML, JSON arrays streamed element by element, or
//! a whole document) and running the mapping and program over them.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// One record is at fault (names it).
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("the input is not valid {format}: {problem}")]
    Malformed { format: &'static str, problem: String },
    #[error("transformation: {0}")]
    Program(ExpressionError),
    #[error("reading the input failed: {0}")]
    Read(std::io::Error),
    #[error("writing the output failed: {0}")]
    Write(std::io::Error),
}

/// A failed read: over a bound of [`limits`] it is the data's fault, else the store's.
fn read_failed(format: &'static str, e: std::io::Error) -> ConvertError {
    match TooLarge::in_io(&e) {
        Some(bound) => ConvertError::Malformed { format, problem: bound.to_string() },
        None => ConvertError::Read(e),
    }
}

impl ConvertError {
    /// The data (or the program over it) is at fault: a business error, not worth retrying.
    pub fn is_data_error(&self) -> bool {
        match self {
            ConvertError::Record(_) | ConvertError::Malformed { .. } => true,
            ConvertError::Program(e) => e.is_program_error(),
            ConvertError::Read(_) | ConvertError::Write(_) => false,
        }
    }

    /// Its catalogue code (I/O trouble is the store's: [`ErrorCode::Unavailable`]).
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            ConvertError::Record(record) => record.code(),
            ConvertError::Malformed { .. } => ErrorCode::InvalidPayload,
            ConvertError::Program(e) => e.code(),
            ConvertError::Read(_) | ConvertError::Write(_) => ErrorCode::Unavailable,
        }
    }
}

/// Everything one conversion needs besides its input and output.
pub struct Conversion<'a> {
    pub input: &'a InputSpec,
    pub output: &'a OutputSpec,
    pub mapping: Option<&'a Mapping>,
    pub function: Option<&'a Expression>,
    pub vars: &'a ExpressionVars,
    /// Where the program runs (a sandbox in a deployment).
    pub runner: &'a dyn JqRunner,
}

/// Records waiting for the program: a sandboxed program costs a round trip to its process,
/// so records go in batches of a bounded count and size.
#[derive(Default)]
struct ProgramBatch {
    records: Vec<Value>,
    positions: Vec<RecordPosition>,
    bytes: usize,
}

impl ProgramBatch {
    const MAX_RECORDS: usize = 256;
    const MAX_BYTES: usize = 1024 * 1024;

    fn push(&mut self, record: Value, position: RecordPosition) {
        self.bytes += approximate_size(&record);
        self.records.push(record);
        self.positions.push(position);
    }

    fn is_full(&self) -> bool {
        self.records.len() >= Self::MAX_RECORDS || self.bytes >= Self::MAX_BYTES
    }

    /// Runs the program over the waiting records and writes what each yields, in order.
    fn run<W: Write>(
        &mut self,
        program: &Expression,
        c: &Conversion,
        writer: &mut RecordWriter<W>,
    ) -> Result<(), ConvertError> {
        if self.records.is_empty() {
            return Ok(());
        }
        let results = c.runner.run_batch(program.source(), &self.records, c.vars);
        for (result, position) in results.into_iter().zip(&self.positions) {
            let outputs = result.map_err(|e| match e.is_program_error() {
                true => RecordError::new(position, e.to_string()).into(),
                // Not the record's fault: the step may be retried.
                false => ConvertError::Program(e),
            })?;
            for out in &outputs {
                writer.write(out, position)?;
            }
        }
        self.records.clear();
        self.positions.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// A cheap upper-bound-ish estimate of a value's JSON size, for batching only.
fn approximate_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => items.iter().map(approximate_size).sum::<usize>() + 2,
        Value::Object(fields) => fields.iter().map(|(k, v)| k.len() + 3 + approximate_size(v)).sum::<usize>() + 2,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub records_in: u64,
    pub records_out: u64,
}

/// Converts `input` into `output`. Record-oriented input streams: memory stays bounded by
/// one record plus the read buffer, whatever the input size. Returns the writer (flushed).
pub fn convert<R: Read, W: Write>(input: R, conversion: &Conversion, output: W) -> Result<(W, Summary), ConvertError> {
    if conversion.input.format.is_record_oriented() {
        convert_records(input, conversion, output)
    } else {
        convert_document(input, conversion, output)
    }
}

pub(super) fn convert_records<R: Read, W: Write>(
    input: R,
    c: &Conversion,
    output: W,
) -> Result<(W, Summary), ConvertError> {
    let mut writer = RecordWriter::new(c.output, output)?;
    let mut records_in = 0;
    let mut batch = ProgramBatch::default();
    read_records(input, c.input, |record, position| {
        records_in += 1;
        let record = match c.mapping {
            Some(m) => m.apply(record, &position)?,
            None => record,
        };
        match c.function {
            None => writer.write(&record, &position),
            Some(program) => {
                batch.push(record, position);
                if batch.is_full() {
                    batch.run(program, c, &mut writer)?;
                }
                Ok(())
            }
        }
    })?;
    if let Some(program) = c.function {
        batch.run(program, c, &mut writer)?;
    }
    let records_out = writer.written;
    Ok((writer.finish()?, Summary { records_in, records_out }))
}

pub(super) fn convert_document<R: Read, W: Write>(
    input: R,
    c: &Conversion,
    output: W,
) -> Result<(W, Summary), ConvertError> {
    let (input, meter) = Metered::new(input, "the JSON document (read whole)", MAX_DOCUMENT_BYTES);
    let mut input = BufReader::with_capacity(64 * 1024, input);
    if c.function.is_none() && first_non_blank(&mut input).map_err(|e| read_failed("JSON", e))? == Some(b'[') {
        meter.rebound("an element of the JSON array", MAX_RECORD_BYTES);
        return convert_array_elements(input, &meter, c, output);
    }
    convert_whole_document(input, c, output)
}

/// The first byte of `input` that is not whitespace, left unread (the whitespace is read).
pub(super) fn first_non_blank<R: BufRead>(input: &mut R) -> std::io::Result<Option<u8>> {
    loop {
        let buffer = input.fill_buf()?;
        if buffer.is_empty() {
            return Ok(None);
        }
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let first = buffer[i];
                input.consume(i);
                return Ok(Some(first));
            }
            None => {
                let blank = buffer.len();
                input.consume(blank);
            }
        }
    }
}

/// A top-level JSON array, element by element: mapped and written as it is read.
pub(super) fn convert_array_elements<R: Read, W: Write>(
    input: R,
    meter: &Meter,
    c: &Conversion,
    output: W,
) -> Result<(W, Summary), ConvertError> {
    let mut writer = RecordWriter::new(c.output, output)?;
    let records_in = read_json_array(input, meter, |record, position| {
        let record = match c.mapping {
            Some(m) => m.apply(record, &position)?,
            None => record,
        };
        writer.write(&record, &position)
    })?;
    let records_out = writer.written;
    Ok((writer.finish()?, Summary { records_in, records_out }))
}

/// Calls `each` with every element of the JSON array `input` holds, reading one element at a
/// time; returns how many there were.
pub(super) fn read_json_array<R: Read>(
    input: R,
    meter: &Meter,
    mut each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<u64, ConvertError> {
    use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};

    /// Hands each element on as soon as it is parsed; `stopped` keeps the callback's error.
    struct Elements<'a, F> {
        each: &'a mut F,
        stopped: &'a mut Option<ConvertError>,
    }
    impl<'de, F: FnMut(Value, RecordPosition) -> Result<(), ConvertError>> Visitor<'de> for Elements<'_, F> {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
            let mut count = 0;
            while let Some(element) = seq.next_element::<Value>()? {
                count += 1;
                if let Err(e) = (self.each)(element, RecordPosition { record: count, line: None }) {
                    *self.stopped = Some(e);
                    return Err(A::Error::custom("stopped by a record"));
                }
            }
            Ok(count)
        }
    }

    let malformed = |e: serde_json::Error| ConvertError::Malformed { format: "JSON", problem: e.to_string() };
    let mut stopped = None;
    // Each element parsed ends a record: the next one is bounded afresh.
    let mut each = |element, position| {
        meter.record_done();
        each(element, position)
    };
    let mut deserializer = serde_json::Deserializer::from_reader(input);
    let counted = (&mut deserializer).deserialize_seq(Elements { each: &mut each, stopped: &mut stopped });
    if let Some(e) = stopped {
        return Err(e);
    }
    let count = counted.map_err(|e| if e.is_io() { read_failed("JSON", e.into()) } else { malformed(e) })?;
    deserializer.end().map_err(malformed)?;
    Ok(count)
}

/// A JSON document read whole: the program (if any) sees all of it.
pub(super) fn convert_whole_document<R: Read, W: Write>(
    mut input: R,
    c: &Conversion,
    mut output: W,
) -> Result<(W, Summary), ConvertError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| read_failed("JSON", e))?;
    let document = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ConvertError::Malformed { format: "JSON", problem: e.to_string() })?
    };
    drop(bytes);
    let records_in = match &document {
        Value::Array(items) => items.len() as u64,
        Value::Null => 0,
        _ => 1,
    };
    let document = match (c.mapping, document) {
        (None, d) | (Some(_), d @ Value::Null) => d,
        (Some(m), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, r)| m.apply(r, &RecordPosition { record: i as u64 + 1, line: None }))
                .collect::<Result<_, _>>()?,
        ),
        (Some(m), single) => m.apply(single, &RecordPosition { record: 1, line: None })?,
    };
    let value = match c.function {
        Some(f) => f.evaluate_single(c.runner, &document, c.vars).map_err(ConvertError::Program)?,
        None => document,
    };
    let records_out = match c.output.format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut output, &value).map_err(|e| ConvertError::Write(e.into()))?;
            output.flush().map_err(ConvertError::Write)?;
            return Ok((output, Summary { records_in, records_out: records_in }));
        }
        _ => {
            let mut writer = RecordWriter::new(c.output, output)?;
            let items = match &value {
                Value::Array(items) => items.as_slice(),
                single => std::slice::from_ref(single),
            };
            for (i, item) in items.iter().enumerate() {
                writer.write(item, &RecordPosition { record: i as u64 + 1, line: None })?;
            }
            let written = writer.written;
            output = writer.finish()?;
            written
        }
    };
    Ok((output, Summary { records_in, records_out }))
}

/// Calls `each` with every record of `input`, in order.
pub fn read_records<R: Read>(
    input: R,
    spec: &InputSpec,
    each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let (input, meter) = Metered::new(input, "a record", MAX_RECORD_BYTES);
    match spec.format {
        InputFormat::Ndjson => read_ndjson(input, &meter, each),
        InputFormat::Csv => read_csv(input, &meter, &spec.csv, each),
        InputFormat::Xml => read_xml(input, &meter, each),
        InputFormat::Json => {
            meter.rebound("the JSON document (read whole)", MAX_DOCUMENT_BYTES);
            let mut bytes = Vec::new();
            let mut input = input;
            input.read_to_end(&mut bytes).map_err(|e| read_failed("JSON", e))?;
            let document: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ConvertError::Malformed { format: "JSON", problem: e.to_string() })?;
            let mut each = each;
            let items = match document {
                Value::Array(items) => items,
                single => vec![single],
            };
            for (i, item) in items.into_iter().enumerate() {
                each(item, RecordPosition { record: i as u64 + 1, line: None })?;
            }
            Ok(())
        }
    }
}

pub(super) fn read_ndjson<R: Read>(
    input: R,
    meter: &Meter,
    mut each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    let mut line = Vec::new();
    let (mut line_number, mut record) = (0u64, 0u64);
    loop {
        line.clear();
        meter.record_done();
        let read = reader.read_until(b'\n', &mut line).map_err(|e| match TooLarge::in_io(&e) {
            Some(bound) => RecordError::new(
                &RecordPosition { record: record + 1, line: Some(line_number + 1) },
                format!("is too long: {bound}"),
            )
            .into(),
            None => ConvertError::Read(e),
        })?;
        if read == 0 {
            return Ok(());
        }
        line_number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        record += 1;
        let position = RecordPosition { record, line: Some(line_number) };
        let value = serde_json::from_slice(&line)
            .map_err(|e| RecordError::new(&position, format!("is not valid JSON: {e}")))?;
        each(value, position)?;
    }
}

pub(super) fn csv_error(e: csv::Error, record: u64) -> ConvertError {
    let line = e.position().map(|p| p.line());
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => match TooLarge::in_io(&io) {
            Some(bound) => RecordError::new(&RecordPosition { record, line }, format!("is too long: {bound}")).into(),
            None => ConvertError::Read(io),
        },
        other => {
            let problem = match other {
                csv::ErrorKind::Utf8 { err, .. } => format!("is not valid UTF-8 ({err})"),
                _ => format!("is not valid CSV ({message})"),
            };
            RecordError::new(&RecordPosition { record, line }, problem).into()
        }
    }
}

pub(super) fn read_csv<R: Read>(
    input: R,
    meter: &Meter,
    options: &CsvOptions,
    mut each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .has_headers(options.header)
        .flexible(true)
        .buffer_capacity(READ_BUFFER)
        .from_reader(input);
    let names: Vec<String> = match &options.columns {
        Some(columns) => columns.clone(),
        None => reader.headers().map_err(|e| csv_error(e, 0))?.iter().map(str::to_string).collect(),
    };
    if let Some((i, name)) = names.iter().enumerate().find(|(i, n)| n.is_empty() || names[..*i].contains(n)) {
        let problem = if name.is_empty() {
            format!("column {} of the header row has no name", i + 1)
        } else {
            format!("the header row names column '{name}' twice")
        };
        return Err(ConvertError::Malformed { format: "CSV", problem });
    }
    let mut row = csv::StringRecord::new();
    let mut record = 0u64;
    loop {
        meter.record_done();
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(csv_error(e, record + 1)),
        }
        record += 1;
        let position = RecordPosition { record, line: row.position().map(|p| p.line()) };
        if let Some((i, _)) = row.iter().enumerate().find(|(_, field)| field.len() > MAX_CSV_FIELD_BYTES) {
            let column = names.get(i).map_or_else(|| format!("{}", i + 1), |n| format!("'{n}'"));
            return Err(RecordError::new(
                &position,
                format!("has a field ({column}) larger than {MAX_CSV_FIELD_BYTES} bytes"),
            )
            .into());
        }
        if row.len() != names.len() {
            return Err(RecordError::new(
                &position,
                format!("has {} fields, but there are {} columns", row.len(), names.len()),
            )
            .into());
        }
        let fields: Map<String, Value> =
            names.iter().zip(row.iter()).map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect();
        each(Value::Object(fields), position)?;
    }
}

/// An element being read: its attributes and children so far, and its text.
pub(super) struct Frame {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Frame {
    fn open(start: &quick_xml::events::BytesStart) -> Result<Self, ConvertError> {
        let mut fields = Map::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| malformed_xml(e.to_string()))?;
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| malformed_xml(e.to_string()))?;
            let key: &str = attribute.key.as_ref();
            fields.insert(format!("@{key}"), Value::String(value.into_owned()));
        }
        let qname = start.name();
        let name: &str = qname.as_ref();
        Ok(Self { name: name.to_string(), fields, text: String::new() })
    }

    fn close(mut self) -> (String, Value) {
        if self.fields.is_empty() {
            return (self.name, Value::String(self.text));
        }
        if !self.text.trim().is_empty() {
            self.fields.insert("#text".into(), Value::String(self.text));
        }
        (self.name, Value::Object(self.fields))
    }
}

pub(super) fn malformed_xml(problem: String) -> ConvertError {
    ConvertError::Malformed { format: "XML", problem }
}

pub(super) fn read_xml<R: Read>(
    input: R,
    meter: &Meter,
    mut each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(READ_BUFFER, input));
    let mut buf = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let (mut root_seen, mut record) = (false, 0u64);
    // A finished element goes to its parent, or — a child of the document element — out as a record.
    let mut finish = |stack: &mut Vec<Frame>, frame: Frame, record: &mut u64| -> Result<(), ConvertError> {
        let (name, value) = frame.close();
        match stack.len() {
            0 => Ok(()),
            1 => {
                *record += 1;
                meter.record_done();
                each(value, RecordPosition { record: *record, line: None })
            }
            _ => {
                let parent = stack.last_mut().map(|p| &mut p.fields);
                if let Some(fields) = parent {
                    match fields.get_mut(&name) {
                        Some(Value::Array(items)) => items.push(value),
                        Some(existing) => {
                            let first = existing.take();
                            *existing = Value::Array(vec![first, value]);
                        }
                        None => {
                            fields.insert(name, value);
                        }
                    }
                }
                Ok(())
            }
        }
    };
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| match e {
            quick_xml::Error::Io(io) => match TooLarge::in_io(&io) {
                Some(bound) => malformed_xml(format!("record {} {bound}", record + 1)),
                None => ConvertError::Read(std::io::Error::new(io.kind(), io.to_string())),
            },
            other => malformed_xml(format!("{other} (near byte {})", reader.buffer_position())),
        })?;
        match event {
            Event::Start(start) => {
                if stack.is_empty() && std::mem::replace(&mut root_seen, true) {
                    return Err(malformed_xml("the document has more than one document element".into()));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(malformed_xml(format!("elements nest deeper than {MAX_XML_DEPTH}")));
                }
                stack.push(Frame::open(&start)?);
            }
            Event::Empty(start) => {
                let frame = Frame::open(&start)?;
                if stack.is_empty() {
                    root_seen = true;
                }
                finish(&mut stack, frame, &mut record)?;
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| malformed_xml("an end tag closes nothing".into()))?;
                finish(&mut stack, frame, &mut record)?;
            }
            Event::Text(text) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&data.into_inner());
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference.resolve_char_ref().map_err(|e| malformed_xml(e.to_string()))?.map(String::from)
                } else {
                    quick_xml::escape::resolve_predefined_entity(&reference.clone().into_inner()).map(str::to_string)
                };
                let text =
                    resolved.ok_or_else(|| malformed_xml(format!("unknown entity &{};", reference.into_inner())))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    match stack.last() {
        Some(open) => Err(malformed_xml(format!("the document ends inside <{}>", open.name))),
        None if !root_seen => Err(malformed_xml("the document has no document element".into())),
        None => Ok(()),
    }
}
