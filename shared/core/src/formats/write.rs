//! Writing records in the output format.

use super::*;

pub(super) enum Sink<W: Write> {
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

pub(super) fn write_err(e: std::io::Error) -> ConvertError {
    ConvertError::Write(e)
}

pub(super) fn csv_write_err(e: csv::Error) -> ConvertError {
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

pub(super) fn cell(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

pub(super) fn scalar_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

/// Writes `value` as element `name` (see the module's XML mapping).
pub(super) fn write_xml<W: Write>(
    out: &mut W,
    name: &str,
    value: &Value,
    position: &RecordPosition,
) -> Result<(), ConvertError> {
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
