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
    let c = Conversion {
        input: &input_spec,
        output: &output_spec,
        mapping,
        function: None,
        vars: &vars,
        runner: &crate::expression::InProcess::default(),
    };
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
    let outputs =
        [json!({"format": "json"}), json!({"format": "ndjson"}), json!({"format": "xml"}), json!({"format": "raw"})];
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
    let mapping = parse_mapping(MappingName::parse("m").unwrap(), &json!({"values": {"s": {"A": "active"}}})).unwrap();
    let e = conversion_output(br#"[{"s": "A"}, {"s": "Z"}]"#, json!({"format": "ndjson"}), Some(&mapping), false)
        .unwrap_err();
    assert!(e.to_string().starts_with("record 2:"), "{e}");
    for (input, problem) in [(&b"[1, 2"[..], "EOF"), (b"[1, 2] 3", "trailing"), (b"[1,, 2]", "expected value")] {
        let e = conversion_output(input, json!({"format": "ndjson"}), None, false).unwrap_err();
        assert!(matches!(&e, ConvertError::Malformed { format: "JSON", .. }) && e.to_string().contains(problem), "{e}");
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
    let c = Conversion {
        input: &input_spec,
        output: &output_spec,
        mapping: None,
        function: None,
        vars: &vars,
        runner: &crate::expression::InProcess::default(),
    };
    // Unbuffered output: the first record reaches it as soon as it is converted.
    let (out, summary) =
        convert(input, &c, FirstWrite { read: read.clone(), read_at_first_write: None, written: 0 }).unwrap();
    assert_eq!((summary.records_in, summary.records_out), (100_000, 100_000));
    let total = read.load(Ordering::Relaxed);
    assert!(total > 20_000_000, "the input is large: {total} bytes");
    let first = out.read_at_first_write.expect("output was written");
    assert!(first <= 128 * 1024, "output began after {first} of {total} input bytes: the array was not streamed");
}
