//! Data formats of transformation steps, and the conversions between them.
//!
//! A transformation reads its input in the declared `input.format` (default `json`),
//! applies the step's mapping and jq program, and writes `output.format`. Between formats
//! the data is a sequence of **records** (JSON values, normally objects):
//!
//! | format | as input | as output |
//! |---|---|---|
//! | `json` | one document; an array's elements are its records, anything else is one record | the program's result as is (record-oriented input: a JSON array of the records) |
//! | `ndjson` | one record per non-blank line | one record per line |
//! | `csv` | one record per row: an object of the row's cells as **strings**, named by the header row (`header: true`, default) or by `columns` | one row per record (objects only); columns from `columns` or the first record's fields (in name order: JSON objects are unordered); `null`/missing → empty cell, nested values → their JSON text; header row unless `header: false` |
//! | `xml` | every child element of the document element is a record | `<records><record>…</record></records>`, names from `root`/`record` |
//! | `raw` | — | strings as they are, other values as JSON text |
//!
//! **XML mapping** (both directions): an element with child elements is an object whose
//! fields are the children (repeated names become an array); an element with only text is
//! a string (XML has no numbers: `<n>1</n>` reads as `"1"`); attributes are fields named
//! `@name`; text next to child elements is the field `#text`; `<a/>` reads as `""`, and
//! `null` writes as `<a/>`. Arrays write as repeated elements of the field's name; fields
//! write in name order.
//!
//! **Where the program runs**: for `json` input the jq program sees the whole document as
//! `.` (it may aggregate, so the document is read whole). For record-oriented input (`csv`,
//! `ndjson`, `xml`) it runs once per record, `.` being that record — it may yield zero
//! (a filter), one, or several output records — so any size streams in bounded memory.
//! The mapping, if any, applies to each input record before the program.
//!
//! A `json` document that is an array and has no program to see it whole (a conversion,
//! perhaps with a mapping) streams too: its elements are read, mapped and written one at a
//! time, so a multi-GB array needs the memory of one element.

use crate::definition::OutputFormat;
use crate::expression::{Expression, ExpressionError, ExpressionVars};
use crate::mapping::{Mapping, RecordError, RecordPosition};
use crate::reader::{describe, FieldError, FieldResult, ObjectReader};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};

/// Buffer of the input readers.
const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Json,
    Ndjson,
    Csv,
    Xml,
}

impl InputFormat {
    /// Record-oriented input is read, transformed and written record by record.
    pub fn is_record_oriented(&self) -> bool {
        !matches!(self, InputFormat::Json)
    }

    pub fn name(&self) -> &'static str {
        match self {
            InputFormat::Json => "json",
            InputFormat::Ndjson => "ndjson",
            InputFormat::Csv => "csv",
            InputFormat::Xml => "xml",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    /// Input: the first row names the fields. Output: write a header row.
    pub header: bool,
    /// Input: the field names (overrides the header row). Output: the columns, in order.
    pub columns: Option<Vec<String>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self { delimiter: b',', header: true, columns: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlOptions {
    /// The document element written around the records.
    pub root: String,
    /// The element name of each written record.
    pub record: String,
}

impl Default for XmlOptions {
    fn default() -> Self {
        Self { root: "records".into(), record: "record".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub format: InputFormat,
    pub csv: CsvOptions,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self { format: InputFormat::Json, csv: CsvOptions::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub format: OutputFormat,
    pub csv: CsvOptions,
    pub xml: XmlOptions,
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self { format: OutputFormat::Json, csv: CsvOptions::default(), xml: XmlOptions::default() }
    }
}

impl OutputSpec {
    pub fn format_name(&self) -> &'static str {
        match self.format {
            OutputFormat::Json => "json",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Csv => "csv",
            OutputFormat::Xml => "xml",
            OutputFormat::Raw => "raw",
        }
    }
}

// ------------------------------------------------------------------ definitions

/// `input: {format, ...}` of a transformation step.
pub fn parse_input(o: &ObjectReader) -> FieldResult<InputSpec> {
    let format = match o.required_str("format")? {
        "json" => InputFormat::Json,
        "ndjson" => InputFormat::Ndjson,
        "csv" => InputFormat::Csv,
        "xml" => InputFormat::Xml,
        other => {
            return Err(FieldError::new(
                o.field_path("format"),
                format!("unknown input format '{other}' (expected json, ndjson, csv or xml)"),
            ))
        }
    };
    let csv = match format {
        InputFormat::Csv => {
            o.deny_unknown(&["format", "delimiter", "header", "columns"])?;
            let csv = parse_csv(o)?;
            if !csv.header && csv.columns.is_none() {
                return Err(FieldError::new(
                    o.field_path("columns"),
                    "is required when header is false (the fields of a CSV input need names)",
                ));
            }
            csv
        }
        _ => {
            o.deny_unknown(&["format"])?;
            CsvOptions::default()
        }
    };
    Ok(InputSpec { format, csv })
}

/// `output: {format, ...}` of a transformation step.
pub fn parse_output(o: &ObjectReader) -> FieldResult<OutputSpec> {
    let format = match o.required_str("format")? {
        "json" => OutputFormat::Json,
        "ndjson" => OutputFormat::Ndjson,
        "csv" => OutputFormat::Csv,
        "xml" => OutputFormat::Xml,
        "raw" => OutputFormat::Raw,
        other => {
            return Err(FieldError::new(
                o.field_path("format"),
                format!("unknown format '{other}' (expected json, ndjson, csv, xml or raw)"),
            ))
        }
    };
    let mut spec = OutputSpec { format, ..OutputSpec::default() };
    match format {
        OutputFormat::Csv => {
            o.deny_unknown(&["format", "delimiter", "header", "columns"])?;
            spec.csv = parse_csv(o)?;
        }
        OutputFormat::Xml => {
            o.deny_unknown(&["format", "root", "record"])?;
            for (key, slot) in [("root", &mut spec.xml.root), ("record", &mut spec.xml.record)] {
                if let Some(name) = o.optional_str(key)? {
                    if !is_xml_name(name) {
                        return Err(FieldError::new(
                            o.field_path(key),
                            format!("'{name}' is not a valid XML element name"),
                        ));
                    }
                    *slot = name.to_string();
                }
            }
        }
        _ => o.deny_unknown(&["format"])?,
    }
    Ok(spec)
}

fn parse_csv(o: &ObjectReader) -> FieldResult<CsvOptions> {
    let mut csv = CsvOptions::default();
    if let Some(d) = o.optional_str("delimiter")? {
        match d.as_bytes() {
            [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => csv.delimiter = *b,
            _ => {
                return Err(FieldError::new(
                    o.field_path("delimiter"),
                    format!("'{d}' is not a delimiter (one ASCII character other than a quote or line break)"),
                ))
            }
        }
    }
    csv.header = o.optional_bool("header")?.unwrap_or(true);
    if let Some(value) = o.get("columns") {
        let path = o.field_path("columns");
        let Value::Array(items) = value else {
            return Err(FieldError::new(path, format!("must be an array of column names, found {}", describe(value))));
        };
        let mut columns: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(name) if !name.is_empty() && !columns.iter().any(|c| c == name) => columns.push(name.to_string()),
                Some("") => return Err(FieldError::new(format!("{path}[{i}]"), "must not be empty")),
                Some(name) => return Err(FieldError::new(format!("{path}[{i}]"), format!("'{name}' is listed twice"))),
                None => {
                    return Err(FieldError::new(
                        format!("{path}[{i}]"),
                        format!("must be a string, found {}", describe(item)),
                    ))
                }
            }
        }
        if columns.is_empty() {
            return Err(FieldError::new(path, "must list at least one column"));
        }
        csv.columns = Some(columns);
    }
    Ok(csv)
}

/// XML 1.0 element names, restricted to what needs no namespace handling.
pub fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The name of a converted file: `payload` stays `payload`; otherwise a known extension
/// is replaced by the output format's (`providers.csv` → `providers.ndjson`).
pub fn output_file_name(input: &str, format: OutputFormat) -> String {
    const KNOWN: [&str; 7] = ["json", "ndjson", "jsonl", "csv", "xml", "txt", "tsv"];
    let ext = match format {
        OutputFormat::Json => "json",
        OutputFormat::Ndjson => "ndjson",
        OutputFormat::Csv => "csv",
        OutputFormat::Xml => "xml",
        OutputFormat::Raw => return input.to_string(),
    };
    if input == "payload" {
        return input.to_string();
    }
    let stem = match input.rsplit_once('.') {
        Some((stem, e))
            if !stem.is_empty() && !stem.ends_with('/') && KNOWN.contains(&e.to_ascii_lowercase().as_str()) =>
        {
            stem
        }
        _ => input,
    };
    format!("{stem}.{ext}")
}

// ------------------------------------------------------------------ conversion

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

impl ConvertError {
    /// The data (or the program over it) is at fault: a business error, not worth retrying.
    pub fn is_data_error(&self) -> bool {
        matches!(self, ConvertError::Record(_) | ConvertError::Malformed { .. } | ConvertError::Program(_))
    }
}

/// Everything one conversion needs besides its input and output.
pub struct Conversion<'a> {
    pub input: &'a InputSpec,
    pub output: &'a OutputSpec,
    pub mapping: Option<&'a Mapping>,
    pub function: Option<&'a Expression>,
    pub vars: &'a ExpressionVars,
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

fn convert_records<R: Read, W: Write>(input: R, c: &Conversion, output: W) -> Result<(W, Summary), ConvertError> {
    let program = c.function.map(|f| f.for_records(c.vars)).transpose().map_err(ConvertError::Program)?;
    let mut writer = RecordWriter::new(c.output, output)?;
    let mut records_in = 0;
    read_records(input, c.input, |record, position| {
        records_in += 1;
        let record = match c.mapping {
            Some(m) => m.apply(record, &position)?,
            None => record,
        };
        match &program {
            None => writer.write(&record, &position),
            Some(p) => {
                for out in p.run(&record).map_err(|e| RecordError::new(&position, e.to_string()))? {
                    writer.write(&out, &position)?;
                }
                Ok(())
            }
        }
    })?;
    let records_out = writer.written;
    Ok((writer.finish()?, Summary { records_in, records_out }))
}

fn convert_document<R: Read, W: Write>(input: R, c: &Conversion, output: W) -> Result<(W, Summary), ConvertError> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    if c.function.is_none() && first_non_blank(&mut input).map_err(ConvertError::Read)? == Some(b'[') {
        return convert_array_elements(input, c, output);
    }
    convert_whole_document(input, c, output)
}

/// The first byte of `input` that is not whitespace, left unread (the whitespace is read).
fn first_non_blank<R: BufRead>(input: &mut R) -> std::io::Result<Option<u8>> {
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
fn convert_array_elements<R: Read, W: Write>(
    input: R,
    c: &Conversion,
    output: W,
) -> Result<(W, Summary), ConvertError> {
    let mut writer = RecordWriter::new(c.output, output)?;
    let records_in = read_json_array(input, |record, position| {
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
fn read_json_array<R: Read>(
    input: R,
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
    let mut deserializer = serde_json::Deserializer::from_reader(input);
    let counted = (&mut deserializer).deserialize_seq(Elements { each: &mut each, stopped: &mut stopped });
    if let Some(e) = stopped {
        return Err(e);
    }
    let count = counted.map_err(|e| if e.is_io() { ConvertError::Read(e.into()) } else { malformed(e) })?;
    deserializer.end().map_err(malformed)?;
    Ok(count)
}

/// A JSON document read whole: the program (if any) sees all of it.
fn convert_whole_document<R: Read, W: Write>(
    mut input: R,
    c: &Conversion,
    mut output: W,
) -> Result<(W, Summary), ConvertError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(ConvertError::Read)?;
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
        Some(f) => f.evaluate_single(&document, c.vars).map_err(ConvertError::Program)?,
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
    match spec.format {
        InputFormat::Ndjson => read_ndjson(input, each),
        InputFormat::Csv => read_csv(input, &spec.csv, each),
        InputFormat::Xml => read_xml(input, each),
        InputFormat::Json => {
            let mut bytes = Vec::new();
            let mut input = input;
            input.read_to_end(&mut bytes).map_err(ConvertError::Read)?;
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

fn read_ndjson<R: Read>(
    input: R,
    mut each: impl FnMut(Value, RecordPosition) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    let mut line = Vec::new();
    let (mut line_number, mut record) = (0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(ConvertError::Read)? == 0 {
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

fn csv_error(e: csv::Error, record: u64) -> ConvertError {
    let line = e.position().map(|p| p.line());
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => ConvertError::Read(io),
        other => {
            let problem = match other {
                csv::ErrorKind::Utf8 { err, .. } => format!("is not valid UTF-8 ({err})"),
                _ => format!("is not valid CSV ({message})"),
            };
            RecordError::new(&RecordPosition { record, line }, problem).into()
        }
    }
}

fn read_csv<R: Read>(
    input: R,
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
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(csv_error(e, record + 1)),
        }
        record += 1;
        let position = RecordPosition { record, line: row.position().map(|p| p.line()) };
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
struct Frame {
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

fn malformed_xml(problem: String) -> ConvertError {
    ConvertError::Malformed { format: "XML", problem }
}

fn read_xml<R: Read>(
    input: R,
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
            quick_xml::Error::Io(io) => ConvertError::Read(std::io::Error::new(io.kind(), io.to_string())),
            other => malformed_xml(format!("{other} (near byte {})", reader.buffer_position())),
        })?;
        match event {
            Event::Start(start) => {
                if stack.is_empty() && std::mem::replace(&mut root_seen, true) {
                    return Err(malformed_xml("the document has more than one document element".into()));
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

// ------------------------------------------------------------------ writing

enum Sink<W: Write> {
    Plain(W),
    Csv(Box<csv::Writer<W>>),
}

/// Writes records one at a time in an output format (streaming: nothing is kept but the
/// CSV column list).
pub struct RecordWriter<W: Write> {
    spec: OutputSpec,
    sink: Sink<W>,
    columns: Option<Vec<String>>,
    /// Columns were taken from the first record (not declared): other fields are errors.
    inferred: bool,
    pub written: u64,
}

fn write_err(e: std::io::Error) -> ConvertError {
    ConvertError::Write(e)
}

fn csv_write_err(e: csv::Error) -> ConvertError {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => ConvertError::Write(io),
        _ => ConvertError::Write(std::io::Error::other(message)),
    }
}

impl<W: Write> RecordWriter<W> {
    pub fn new(spec: &OutputSpec, mut out: W) -> Result<Self, ConvertError> {
        let mut columns = None;
        let sink = match spec.format {
            OutputFormat::Csv => {
                let mut writer =
                    csv::WriterBuilder::new().delimiter(spec.csv.delimiter).has_headers(false).from_writer(out);
                if let Some(declared) = &spec.csv.columns {
                    if spec.csv.header {
                        writer.write_record(declared).map_err(csv_write_err)?;
                    }
                    columns = Some(declared.clone());
                }
                Sink::Csv(Box::new(writer))
            }
            OutputFormat::Json => {
                out.write_all(b"[").map_err(write_err)?;
                Sink::Plain(out)
            }
            OutputFormat::Xml => {
                write!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{}>\n", spec.xml.root).map_err(write_err)?;
                Sink::Plain(out)
            }
            OutputFormat::Ndjson | OutputFormat::Raw => Sink::Plain(out),
        };
        Ok(Self { spec: spec.clone(), sink, columns, inferred: false, written: 0 })
    }

    pub fn write(&mut self, record: &Value, position: &RecordPosition) -> Result<(), ConvertError> {
        match &mut self.sink {
            Sink::Csv(writer) => {
                let Value::Object(fields) = record else {
                    return Err(RecordError::new(
                        position,
                        format!("is {}, but a CSV row needs an object", describe(record)),
                    )
                    .into());
                };
                if self.columns.is_none() {
                    let names: Vec<String> = fields.keys().cloned().collect();
                    if self.spec.csv.header {
                        writer.write_record(&names).map_err(csv_write_err)?;
                    }
                    self.columns = Some(names);
                    self.inferred = true;
                }
                let columns = self.columns.as_deref().unwrap_or_default();
                if self.inferred {
                    if let Some(extra) = fields.keys().find(|k| !columns.contains(k)) {
                        return Err(RecordError::new(
                            position,
                            format!("has field '{extra}', which is not a column (the first record sets the columns; declare output.columns to choose them)"),
                        )
                        .into());
                    }
                }
                let cells: Vec<Cow<str>> = columns.iter().map(|c| cell(fields.get(c))).collect();
                writer.write_record(cells.iter().map(|c| c.as_bytes())).map_err(csv_write_err)?;
            }
            Sink::Plain(out) => match self.spec.format {
                OutputFormat::Json => {
                    if self.written > 0 {
                        out.write_all(b",").map_err(write_err)?;
                    }
                    serde_json::to_writer(&mut *out, record).map_err(|e| ConvertError::Write(e.into()))?;
                }
                OutputFormat::Ndjson => {
                    serde_json::to_writer(&mut *out, record).map_err(|e| ConvertError::Write(e.into()))?;
                    out.write_all(b"\n").map_err(write_err)?;
                }
                OutputFormat::Raw => {
                    match record {
                        Value::String(s) => out.write_all(s.as_bytes()),
                        other => out.write_all(other.to_string().as_bytes()),
                    }
                    .map_err(write_err)?;
                    out.write_all(b"\n").map_err(write_err)?;
                }
                OutputFormat::Xml => {
                    write_xml(out, &self.spec.xml.record, record, position)?;
                    out.write_all(b"\n").map_err(write_err)?;
                }
                OutputFormat::Csv => {}
            },
        }
        self.written += 1;
        Ok(())
    }

    /// Closes the document and hands back the flushed writer.
    pub fn finish(self) -> Result<W, ConvertError> {
        match self.sink {
            Sink::Csv(writer) => {
                writer.into_inner().map_err(|e| ConvertError::Write(std::io::Error::other(e.to_string())))
            }
            Sink::Plain(mut out) => {
                match self.spec.format {
                    OutputFormat::Json => out.write_all(b"]").map_err(write_err)?,
                    OutputFormat::Xml => writeln!(out, "</{}>", self.spec.xml.root).map_err(write_err)?,
                    _ => {}
                }
                out.flush().map_err(write_err)?;
                Ok(out)
            }
        }
    }
}

fn cell(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

fn scalar_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

/// Writes `value` as element `name` (see the module's XML mapping).
fn write_xml<W: Write>(out: &mut W, name: &str, value: &Value, position: &RecordPosition) -> Result<(), ConvertError> {
    if !is_xml_name(name) {
        return Err(RecordError::new(position, format!("field '{name}' is not a valid XML element name")).into());
    }
    let escape = quick_xml::escape::escape;
    match value {
        Value::Array(items) => {
            for item in items {
                write_xml(out, name, item, position)?;
            }
        }
        Value::Null => write!(out, "<{name}/>").map_err(write_err)?,
        Value::Object(fields) => {
            write!(out, "<{name}").map_err(write_err)?;
            for (key, v) in fields.iter().filter(|(k, _)| k.starts_with('@')) {
                let attribute = &key[1..];
                if !is_xml_name(attribute) {
                    return Err(
                        RecordError::new(position, format!("field '{key}' is not a valid XML attribute name")).into()
                    );
                }
                write!(out, " {attribute}=\"{}\"", escape(scalar_text(v))).map_err(write_err)?;
            }
            out.write_all(b">").map_err(write_err)?;
            if let Some(text) = fields.get("#text") {
                out.write_all(escape(scalar_text(text)).as_bytes()).map_err(write_err)?;
            }
            for (key, v) in fields.iter().filter(|(k, _)| !k.starts_with('@') && k.as_str() != "#text") {
                write_xml(out, key, v, position)?;
            }
            write!(out, "</{name}>").map_err(write_err)?;
        }
        scalar => write!(out, "<{name}>{}</{name}>", escape(scalar_text(scalar))).map_err(write_err)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{parse_mapping, MappingName};
    use serde_json::json;

    fn spec_in(doc: Value) -> InputSpec {
        parse_input(&ObjectReader::new("input", &doc).unwrap()).unwrap()
    }

    fn spec_out(doc: Value) -> OutputSpec {
        parse_output(&ObjectReader::new("output", &doc).unwrap()).unwrap()
    }

    fn run(input: &str, i: Value, o: Value, mapping: Option<Value>, jq: Option<&str>) -> Result<String, ConvertError> {
        let (input_spec, output_spec) = (spec_in(i), spec_out(o));
        let mapping = mapping.map(|m| parse_mapping(MappingName::parse("m").unwrap(), &m).unwrap());
        let function = jq.map(|j| Expression::compile(j).unwrap());
        let vars = ExpressionVars { parameters: json!({"region": "north"}), exchange: json!({}) };
        let c = Conversion {
            input: &input_spec,
            output: &output_spec,
            mapping: mapping.as_ref(),
            function: function.as_ref(),
            vars: &vars,
        };
        let (out, _) = convert(input.as_bytes(), &c, Vec::new())?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn json_to_csv_infers_or_takes_columns() {
        let input = r#"[{"id": 1, "name": "A, B", "tags": ["x"]}, {"id": 2, "name": null}]"#;
        let out = run(input, json!({"format": "json"}), json!({"format": "csv"}), None, None).unwrap();
        assert_eq!(out, "id,name,tags\n1,\"A, B\",\"[\"\"x\"\"]\"\n2,,\n");
        let out = run(
            input,
            json!({"format": "json"}),
            json!({"format": "csv", "columns": ["name", "id"], "delimiter": ";", "header": false}),
            None,
            None,
        )
        .unwrap();
        assert_eq!(out, "A, B;1\n;2\n");
        let e = run(r#"[{"a": 1}, {"a": 2, "b": 3}]"#, json!({"format": "json"}), json!({"format": "csv"}), None, None)
            .unwrap_err();
        assert_eq!(e.to_string(), "record 2: has field 'b', which is not a column (the first record sets the columns; declare output.columns to choose them)");
    }

    #[test]
    fn csv_to_ndjson_streams_records_with_mapping_and_per_record_jq() {
        let input = "providerId;status\np1;A\np2;I\n";
        let mapping = json!({"fields": {"providerId": "id"}, "values": {"status": {"A": "active", "I": "inactive"}}});
        let out = run(
            input,
            json!({"format": "csv", "delimiter": ";"}),
            json!({"format": "ndjson"}),
            Some(mapping.clone()),
            None,
        )
        .unwrap();
        assert_eq!(out, "{\"id\":\"p1\",\"status\":\"active\"}\n{\"id\":\"p2\",\"status\":\"inactive\"}\n");
        let out = run(
            input,
            json!({"format": "csv", "delimiter": ";"}),
            json!({"format": "json"}),
            Some(mapping.clone()),
            Some("select(.status == \"active\") | .id"),
        )
        .unwrap();
        assert_eq!(out, "[\"p1\"]");
        let e = run(
            "providerId;status\np1;A\np2;X\n",
            json!({"format": "csv", "delimiter": ";"}),
            json!({"format": "ndjson"}),
            Some(mapping),
            None,
        )
        .unwrap_err();
        assert!(e.is_data_error());
        assert_eq!(e.to_string(), "record 2 (line 3): value 'X' of field 'status' has no translation in mapping 'm'");
    }

    #[test]
    fn csv_input_without_header_and_ragged_rows() {
        let out = run(
            "1,a\n2,b\n",
            json!({"format": "csv", "header": false, "columns": ["n", "s"]}),
            json!({"format": "ndjson"}),
            None,
            None,
        )
        .unwrap();
        assert_eq!(out, "{\"n\":\"1\",\"s\":\"a\"}\n{\"n\":\"2\",\"s\":\"b\"}\n");
        let e = run("a,b\n1,2\n3\n", json!({"format": "csv"}), json!({"format": "ndjson"}), None, None).unwrap_err();
        assert_eq!(e.to_string(), "record 2 (line 3): has 1 fields, but there are 2 columns");
    }

    #[test]
    fn ndjson_to_json_and_bad_lines_name_their_line() {
        let out = run("{\"a\":1}\n\n{\"a\":2}\n", json!({"format": "ndjson"}), json!({"format": "json"}), None, None)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([{"a": 1}, {"a": 2}]));
        let e = run("{\"a\":1}\n\n{oops\n", json!({"format": "ndjson"}), json!({"format": "json"}), None, None)
            .unwrap_err();
        assert!(e.to_string().starts_with("record 2 (line 3): is not valid JSON"), "{e}");
    }

    #[test]
    fn json_to_xml_and_back() {
        let input = r##"{"items": [{"id": 1, "name": "A & B", "tags": ["x", "y"], "meta": {"@lang": "en", "#text": "t"}, "none": null}]}"##;
        let out = run(
            input,
            json!({"format": "json"}),
            json!({"format": "xml", "root": "providers", "record": "provider"}),
            None,
            Some(".items"),
        )
        .unwrap();
        assert_eq!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<providers>\n<provider><id>1</id><meta lang=\"en\">t</meta><name>A &amp; B</name><none/><tags>x</tags><tags>y</tags></provider>\n</providers>\n"
        );
        let back = run(&out, json!({"format": "xml"}), json!({"format": "json"}), None, None).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&back).unwrap(),
            json!([{"id": "1", "name": "A & B", "tags": ["x", "y"], "meta": {"@lang": "en", "#text": "t"}, "none": ""}])
        );
        let e = run("<a><b>", json!({"format": "xml"}), json!({"format": "json"}), None, None).unwrap_err();
        assert!(e.is_data_error(), "{e}");
        let e = run(r#"[{"a b": 1}]"#, json!({"format": "json"}), json!({"format": "xml"}), None, None).unwrap_err();
        assert_eq!(e.to_string(), "record 1: field 'a b' is not a valid XML element name");
    }

    #[test]
    fn whole_document_jq_and_mapping_on_json() {
        let mapping = json!({"fields": {"providerId": "id"}});
        let out = run(
            r#"[{"providerId": 1}, {"providerId": 2}]"#,
            json!({"format": "json"}),
            json!({"format": "json"}),
            Some(mapping),
            Some("map(.id) | add"),
        )
        .unwrap();
        assert_eq!(out, "3");
        let out = run(r#"[{"a": 1}]"#, json!({"format": "json"}), json!({"format": "ndjson"}), None, None).unwrap();
        assert_eq!(out, "{\"a\":1}\n");
    }

    #[test]
    fn options_are_validated_with_field_paths() {
        let err = |o: Value| parse_output(&ObjectReader::new("steps[1].output", &o).unwrap()).unwrap_err();
        assert_eq!(err(json!({"format": "yaml"})).path, "steps[1].output.format");
        assert_eq!(err(json!({"format": "json", "delimiter": ";"})).path, "steps[1].output.delimiter");
        assert_eq!(err(json!({"format": "csv", "delimiter": ";;"})).path, "steps[1].output.delimiter");
        assert_eq!(err(json!({"format": "csv", "columns": ["a", "a"]})).path, "steps[1].output.columns[1]");
        assert_eq!(err(json!({"format": "xml", "root": "1x"})).path, "steps[1].output.root");
        let err_in = |o: Value| parse_input(&ObjectReader::new("steps[1].input", &o).unwrap()).unwrap_err();
        assert_eq!(err_in(json!({"format": "csv", "header": false})).path, "steps[1].input.columns");
        assert_eq!(err_in(json!({"format": "raw"})).path, "steps[1].input.format");
        assert_eq!(err_in(json!({"format": "xml", "root": "r"})).path, "steps[1].input.root");
    }

    #[test]
    fn output_names_follow_the_format() {
        assert_eq!(output_file_name("payload", OutputFormat::Csv), "payload");
        assert_eq!(output_file_name("a/providers.csv", OutputFormat::Ndjson), "a/providers.ndjson");
        assert_eq!(output_file_name("data.bin", OutputFormat::Xml), "data.bin.xml");
        assert_eq!(output_file_name(".csv", OutputFormat::Json), ".csv.json");
    }
}

#[cfg(test)]
mod json_array_streaming {
    use super::*;
    use crate::mapping::{parse_mapping, MappingName};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn conversion_output(
        input: &[u8],
        output: Value,
        mapping: Option<&Mapping>,
        whole: bool,
    ) -> Result<(String, Summary), ConvertError> {
        let input_spec = parse_input(&ObjectReader::new("input", &json!({"format": "json"})).unwrap()).unwrap();
        let output_spec = parse_output(&ObjectReader::new("output", &output).unwrap()).unwrap();
        let vars = ExpressionVars { parameters: json!({}), exchange: json!({}) };
        let c = Conversion { input: &input_spec, output: &output_spec, mapping, function: None, vars: &vars };
        let (out, summary) =
            if whole { convert_whole_document(input, &c, Vec::new())? } else { convert(input, &c, Vec::new())? };
        Ok((String::from_utf8(out).unwrap(), summary))
    }

    #[test]
    fn a_streamed_array_converts_exactly_as_the_whole_document_would() {
        let mapping = parse_mapping(
            MappingName::parse("m").unwrap(),
            &json!({"fields": {"providerId": "id"}, "values": {"s": {"A": "active"}}}),
        )
        .unwrap();
        let inputs = [
            "[]",
            "  \n [ ]",
            r#"[{"providerId": "p1", "s": "A", "n": 1.5}, {"providerId": "p2", "s": "A", "deep": {"x": [1, null, "y"]}}]"#,
            r#" [{"a": "1"}, {"a": "2"} ] "#,
        ];
        let outputs = [
            json!({"format": "json"}),
            json!({"format": "ndjson"}),
            json!({"format": "xml"}),
            json!({"format": "raw"}),
        ];
        for input in inputs {
            for output in &outputs {
                for mapping in [None, Some(&mapping)] {
                    let streamed = conversion_output(input.as_bytes(), output.clone(), mapping, false);
                    let whole = conversion_output(input.as_bytes(), output.clone(), mapping, true);
                    match (streamed, whole) {
                        (Ok(a), Ok(b)) => assert_eq!(a, b, "{input} → {output}"),
                        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{input} → {output}"),
                        (a, b) => panic!("{input} → {output}: streamed {a:?}, whole {b:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn errors_name_the_record_or_the_flaw() {
        let mapping =
            parse_mapping(MappingName::parse("m").unwrap(), &json!({"values": {"s": {"A": "active"}}})).unwrap();
        let e = conversion_output(br#"[{"s": "A"}, {"s": "Z"}]"#, json!({"format": "ndjson"}), Some(&mapping), false)
            .unwrap_err();
        assert!(e.to_string().starts_with("record 2:"), "{e}");
        for (input, problem) in [(&b"[1, 2"[..], "EOF"), (b"[1, 2] 3", "trailing"), (b"[1,, 2]", "expected value")] {
            let e = conversion_output(input, json!({"format": "ndjson"}), None, false).unwrap_err();
            assert!(
                matches!(&e, ConvertError::Malformed { format: "JSON", .. }) && e.to_string().contains(problem),
                "{e}"
            );
        }
    }

    /// An array far larger than any buffer, generated as it is read.
    struct LargeArray {
        elements: usize,
        produced: usize,
        pending: Vec<u8>,
        read: Arc<AtomicUsize>,
    }

    impl Read for LargeArray {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pending.is_empty() {
                self.pending = match self.produced {
                    0 => b"[".to_vec(),
                    n if n > self.elements + 1 => return Ok(0),
                    n if n == self.elements + 1 => b"]".to_vec(),
                    n => format!(
                        "{}{{\"id\": {n}, \"name\": \"provider {n}\", \"pad\": \"{}\"}}",
                        if n > 1 { "," } else { "" },
                        "x".repeat(200)
                    )
                    .into_bytes(),
                };
                self.produced += 1;
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            self.read.fetch_add(n, Ordering::Relaxed);
            Ok(n)
        }
    }

    /// Notes how much input had been read when the first output arrived.
    struct FirstWrite {
        read: Arc<AtomicUsize>,
        read_at_first_write: Option<usize>,
        written: usize,
    }

    impl Write for FirstWrite {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.read_at_first_write.get_or_insert(self.read.load(Ordering::Relaxed));
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_large_array_is_written_while_it_is_read() {
        let read = Arc::new(AtomicUsize::new(0));
        let input = LargeArray { elements: 100_000, produced: 0, pending: Vec::new(), read: read.clone() };
        let input_spec = parse_input(&ObjectReader::new("input", &json!({"format": "json"})).unwrap()).unwrap();
        let output_spec = parse_output(&ObjectReader::new("output", &json!({"format": "ndjson"})).unwrap()).unwrap();
        let vars = ExpressionVars { parameters: json!({}), exchange: json!({}) };
        let c = Conversion { input: &input_spec, output: &output_spec, mapping: None, function: None, vars: &vars };
        // Unbuffered output: the first record reaches it as soon as it is converted.
        let (out, summary) =
            convert(input, &c, FirstWrite { read: read.clone(), read_at_first_write: None, written: 0 }).unwrap();
        assert_eq!((summary.records_in, summary.records_out), (100_000, 100_000));
        let total = read.load(Ordering::Relaxed);
        assert!(total > 20_000_000, "the input is large: {total} bytes");
        let first = out.read_at_first_write.expect("output was written");
        assert!(first <= 128 * 1024, "output began after {first} of {total} input bytes: the array was not streamed");
    }
}
