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
//!
//! **Bounds** ([`limits`]): a record (NDJSON line, CSV row, XML record, streamed array
//! element) holds at most 16 MiB, a CSV field 1 MiB, XML nests at most 64 deep, and a JSON
//! document read whole holds at most 64 MiB; past a bound the transformation fails as a
//! business error naming the bound.

mod convert;
#[cfg(test)]
mod json_array_streaming;
pub mod limits;
#[cfg(test)]
mod tests;
mod write;

pub use convert::*;
pub use write::*;

use crate::definition::OutputFormat;
use crate::expression::{Expression, ExpressionError, ExpressionVars, JqRunner};
use crate::mapping::{Mapping, RecordError, RecordPosition};
use crate::reader::{describe, FieldError, FieldResult, ObjectReader};
use limits::{Meter, Metered, TooLarge, MAX_CSV_FIELD_BYTES, MAX_DOCUMENT_BYTES, MAX_RECORD_BYTES, MAX_XML_DEPTH};
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
