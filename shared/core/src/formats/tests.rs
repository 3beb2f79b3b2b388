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
        runner: &crate::expression::InProcess::default(),
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
    let out =
        run("{\"a\":1}\n\n{\"a\":2}\n", json!({"format": "ndjson"}), json!({"format": "json"}), None, None).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([{"a": 1}, {"a": 2}]));
    let e =
        run("{\"a\":1}\n\n{oops\n", json!({"format": "ndjson"}), json!({"format": "json"}), None, None).unwrap_err();
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

/// The text of a failed conversion, which must be the data's fault.
fn data_error(result: Result<String, ConvertError>) -> String {
    let Err(e) = result else { panic!("the input is over a bound, yet it converted") };
    assert!(e.is_data_error(), "{e}");
    e.to_string()
}

#[test]
fn a_record_over_its_bound_is_refused_before_it_is_buffered_whole() {
    // Over by more than the read-ahead of one buffer (the bound is exact to within one).
    let long = "x".repeat(limits::MAX_RECORD_BYTES as usize + 2 * READ_BUFFER);
    let ndjson = format!("{{\"a\": 1}}\n{{\"a\": \"{long}\"}}\n");
    let e = data_error(run(&ndjson, json!({"format": "ndjson"}), json!({"format": "ndjson"}), None, None));
    assert!(e.contains("record 2 (line 2)") && e.contains("is too long") && e.contains("16777216"), "{e}");
    // A quote that never closes would swallow the rest of the file as one field.
    let csv = format!("id,name\n1,\"{long}\n");
    let e = data_error(run(&csv, json!({"format": "csv"}), json!({"format": "ndjson"}), None, None));
    assert!(e.contains("is too long"), "{e}");
    let array = format!("[{{\"a\": 1}}, \"{long}\"]");
    let e = data_error(run(&array, json!({"format": "json"}), json!({"format": "ndjson"}), None, None));
    assert!(e.contains("an element of the JSON array is larger than 16777216 bytes"), "{e}");
    let xml = format!("<r><a>{long}</a></r>");
    let e = data_error(run(&xml, json!({"format": "xml"}), json!({"format": "ndjson"}), None, None));
    assert!(e.contains("record 1") && e.contains("larger than 16777216"), "{e}");
}

#[test]
fn bounds_are_per_record_so_a_large_stream_passes() {
    // 20 MiB in all, each line small.
    let line = format!("{{\"filler\": \"{}\"}}\n", "y".repeat(1000));
    let ndjson = line.repeat(20 * 1024);
    let out = run(&ndjson, json!({"format": "ndjson"}), json!({"format": "ndjson"}), None, None).unwrap();
    assert_eq!(out.len(), ndjson.len() - 20 * 1024, "one space fewer per record");
    let array = format!("[{}]", vec![format!("\"{}\"", "z".repeat(1000)); 20 * 1024].join(","));
    assert!(run(&array, json!({"format": "json"}), json!({"format": "ndjson"}), None, None).is_ok());
}

#[test]
fn a_csv_field_xml_nesting_and_a_whole_document_have_bounds_too() {
    let field = "f".repeat(limits::MAX_CSV_FIELD_BYTES + 1);
    let e = data_error(run(
        &format!("id,name\n1,{field}\n"),
        json!({"format": "csv"}),
        json!({"format": "ndjson"}),
        None,
        None,
    ));
    assert!(e.contains("record 1") && e.contains("field ('name') larger than 1048576 bytes"), "{e}");
    let deep = format!("<r>{}{}</r>", "<a>".repeat(limits::MAX_XML_DEPTH), "</a>".repeat(limits::MAX_XML_DEPTH));
    let e = data_error(run(&deep, json!({"format": "xml"}), json!({"format": "ndjson"}), None, None));
    assert!(e.contains("nest deeper than 64"), "{e}");
    let nested_ok = format!("<r>{}{}</r>", "<a>".repeat(10), "</a>".repeat(10));
    assert!(run(&nested_ok, json!({"format": "xml"}), json!({"format": "ndjson"}), None, None).is_ok());
    // Read whole because a program sees it all.
    let document = format!("{{\"a\": \"{}\"}}", "d".repeat(limits::MAX_DOCUMENT_BYTES as usize + 2 * READ_BUFFER));
    let e = data_error(run(&document, json!({"format": "json"}), json!({"format": "json"}), None, Some(".a | length")));
    assert!(e.contains("the JSON document (read whole) is larger than 67108864 bytes"), "{e}");
}
