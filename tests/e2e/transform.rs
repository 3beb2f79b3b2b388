//! Transformation steps: format conversions, metadata mappings and streamed data file sets,
//! checked on what a loopback target actually receives.

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use handoff_e2e::{gateway, sub_steps, unique_code, ExternalSystem};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// query (answers `source_body`) → transformation `transform` → REST delivery to `target`.
fn pipeline(code: &str, source: &str, target: &str, transform: Value) -> Value {
    let mut step = json!({"name": "convert", "type": "transformation"});
    if let (Value::Object(step), Value::Object(extra)) = (&mut step, transform) {
        step.extend(extra);
    }
    json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "fetch", "type": "dataCollection", "kind": "query", "request": {"url": format!("{source}/data")}},
            step,
            {"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/in")}}]}
        ]
    })
}

/// Runs one exchange of a fresh pipeline and returns (final exchange, body the target got).
async fn run_pipeline(prefix: &str, source_body: &'static str, transform: Value) -> (Value, Option<String>) {
    let gw = gateway();
    let source = ExternalSystem::start(200, source_body).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code(prefix);
    gw.create_integration(&pipeline(&code, &source.url, &target.url, transform)).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let done = gw.wait_final(&id).await;
    let body = target.received().first().map(|r| String::from_utf8_lossy(&r.body).into_owned());
    (done, body)
}

#[tokio::test]
async fn conversions_between_json_ndjson_csv_and_xml_reach_the_target() {
    let ((json_csv, csv_out), (csv_nd, nd_out), (json_xml, xml_out), (nd_json, json_out)) = tokio::join!(
        run_pipeline(
            "JSON_CSV",
            r#"[{"id": 1, "name": "A, B"}, {"id": 2, "name": null}]"#,
            json!({"output": {"format": "csv", "columns": ["id", "name"]}})
        ),
        run_pipeline(
            "CSV_NDJSON",
            "id;name\n1;Ann\n2;Bob\n",
            json!({"input": {"format": "csv", "delimiter": ";"}, "output": {"format": "ndjson"}})
        ),
        run_pipeline(
            "JSON_XML",
            r#"{"providers": [{"id": 1, "name": "A & B"}]}"#,
            json!({"function": {"jq": ".providers"}, "output": {"format": "xml", "root": "providers", "record": "provider"}})
        ),
        run_pipeline(
            "NDJSON_JSON",
            "{\"id\": 1}\n\n{\"id\": 2}\n",
            json!({"input": {"format": "ndjson"}, "function": {"jq": "{id: .id, twice: (.id * 2)}"}, "output": {"format": "json"}})
        ),
    );
    for done in [&json_csv, &csv_nd, &json_xml, &nd_json] {
        assert_eq!(done["status"], "Completed", "{done:#}");
        assert!(sub_steps(done).contains(&("Transform".to_string(), "Done".to_string())));
    }
    assert_eq!(csv_out.as_deref(), Some("id,name\n1,\"A, B\"\n2,\n"));
    assert_eq!(nd_out.as_deref(), Some("{\"id\":\"1\",\"name\":\"Ann\"}\n{\"id\":\"2\",\"name\":\"Bob\"}\n"));
    assert_eq!(
        xml_out.as_deref(),
        Some("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<providers>\n<provider><id>1</id><name>A &amp; B</name></provider>\n</providers>\n")
    );
    let delivered: Value = serde_json::from_str(json_out.as_deref().unwrap_or("null")).expect("JSON");
    assert_eq!(delivered, json!([{"id": 1, "twice": 2}, {"id": 2, "twice": 4}]));
}

#[tokio::test]
async fn mappings_are_managed_over_the_api_and_translate_records() {
    let gw = gateway();
    let name = unique_code("provider-codes").to_ascii_lowercase().replace('_', "-");
    let mapping = json!({"fields": {"providerId": "id"}, "values": {"status": {"A": "active", "I": "inactive"}}});

    let (status, unknown) = gw.get(&format!("/mappings/{name}")).await;
    assert_eq!(status, 404, "{unknown}");
    let (status, bad) = gw
        .request(
            http_put(),
            &format!("/mappings/{name}"),
            Some(json!({"fields": {"a": "x", "b": "x"}}).to_string().into_bytes()),
        )
        .await;
    assert_eq!((status.as_u16(), bad["field"].clone()), (400, json!("fields.b")), "{bad}");
    let (status, created) =
        gw.request(http_put(), &format!("/mappings/{name}"), Some(mapping.to_string().into_bytes())).await;
    assert_eq!(status, 201, "{created}");
    let (status, replaced) =
        gw.request(http_put(), &format!("/mappings/{name}"), Some(mapping.to_string().into_bytes())).await;
    assert_eq!((status.as_u16(), replaced["revision"].clone()), (200, json!(2)), "{replaced}");
    let (status, read) = gw.get(&format!("/mappings/{name}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["mapping"], mapping);

    // A definition naming a mapping that does not exist is refused up front.
    let source = ExternalSystem::start(200, "providerId,status\np1,A\np2,I\n").await;
    let target = ExternalSystem::start(200, "{}").await;
    let transform =
        |mapping: &str| json!({"input": {"format": "csv"}, "output": {"format": "ndjson"}, "mapping": mapping});
    let (status, refused) = gw
        .post(
            "/integrations",
            &pipeline(&unique_code("NO_MAPPING"), &source.url, &target.url, transform("no-such-mapping")),
        )
        .await;
    assert_eq!((status.as_u16(), refused["field"].clone()), (400, json!("steps[1].mapping")), "{refused}");

    let code = unique_code("MAPPED");
    gw.create_integration(&pipeline(&code, &source.url, &target.url, transform(&name))).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    let body = String::from_utf8_lossy(&target.received()[0].body).into_owned();
    assert_eq!(body, "{\"id\":\"p1\",\"status\":\"active\"}\n{\"id\":\"p2\",\"status\":\"inactive\"}\n");

    // An unmapped value fails the exchange as a business error naming record and value.
    let bad_source = ExternalSystem::start(200, "providerId,status\np1,A\np2,X\n").await;
    let code = unique_code("UNMAPPED");
    gw.create_integration(&pipeline(&code, &bad_source.url, &target.url, transform(&name))).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business", "{failed:#}");
    assert_eq!(failed["error"]["subStep"], "Transform");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("record 2 (line 3)") && message.contains("value 'X' of field 'status'"), "{message}");
    assert_eq!(target.received().len(), 1, "nothing more was delivered");
}

fn http_put() -> axum::http::Method {
    axum::http::Method::PUT
}

#[tokio::test]
async fn bad_transformation_definitions_name_the_field() {
    let gw = gateway();
    let source = "http://127.0.0.1:9";
    for (transform, field) in [
        (json!({"output": {"format": "yaml"}}), "steps[1].output.format"),
        (json!({"output": {"format": "csv", "quote": "'"}}), "steps[1].output.quote"),
        (json!({"output": {"format": "json", "delimiter": ";"}}), "steps[1].output.delimiter"),
        (json!({"input": {"format": "csv", "header": false}}), "steps[1].input.columns"),
        (json!({"output": {"format": "xml", "record": "1st"}}), "steps[1].output.record"),
        (json!({"mapping": "bad name"}), "steps[1].mapping"),
        (json!({"function": {"jq": "map("}}), "steps[1].function.jq"),
    ] {
        let (status, body) =
            gw.post("/integrations", &pipeline(&unique_code("BAD_TRANSFORM"), source, source, transform)).await;
        assert_eq!((status.as_u16(), body["field"].clone()), (400, json!(field)), "{body}");
    }
}

/// A file server: `/files/{name}` answers `rows` CSV rows named after the file.
async fn file_server(rows: usize) -> String {
    let app = Router::new().route(
        "/files/{name}",
        get(move |Path(name): Path<String>| async move {
            let mut body = String::from("providerId,status,label\n");
            for i in 0..rows {
                body.push_str(&format!("{name}-{i},{},row {i} of {name}\n", if i % 2 == 0 { "A" } else { "I" }));
            }
            ([("content-type", "text/csv")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn a_multi_file_data_file_set_is_transformed_file_by_file() {
    let gw = gateway();
    let name = unique_code("status-codes").to_ascii_lowercase().replace('_', "-");
    let mapping = json!({"fields": {"providerId": "id"}, "values": {"status": {"A": "active", "I": "inactive"}}});
    let (status, _) =
        gw.request(http_put(), &format!("/mappings/{name}"), Some(mapping.to_string().into_bytes())).await;
    assert_eq!(status, 201);
    let partner = ExternalSystem::start(202, "{}").await;
    let files = file_server(5_000).await;
    let code = unique_code("MULTI_FILE");
    gw.create_integration(&json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "extract", "type": "dataCollection", "kind": "extract", "request": {"method": "POST", "url": format!("{}/extract", partner.url)}},
            {"name": "convert", "type": "transformation", "input": {"format": "csv"}, "output": {"format": "ndjson"},
             "mapping": name, "function": {"jq": "select(.status == \"active\") | {id, status}"}}
        ]
    }))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    let callback = partner.received()[0].header("x-handoff-callback-url").expect("callback url");
    let path = callback.split_once("/notifications/").map(|(_, t)| format!("/notifications/{t}")).expect("path");
    let (status, body) = gw
        .post(
            &path,
            &json!({"status": "success", "files": [
            {"name": "north.csv", "url": format!("{files}/files/north")},
            {"name": "south.csv", "url": format!("{files}/files/south")}]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");

    let transform =
        done["steps"].as_array().and_then(|s| s.iter().find(|s| s["subStep"] == "Transform")).expect("Transform step");
    let set = transform["payload"]["dataFileSetId"].as_str().expect("a data file set");
    let (status, listing) = gw.get(&format!("/data-file-sets/{set}")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        listing["files"].as_array().expect("files").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["north.ndjson", "south.ndjson"]);
    for region in ["north", "south"] {
        let response = reqwest::Client::new()
            .get(format!("{}/data-file-sets/{set}/files/{region}.ndjson", gw.api))
            .bearer_auth(&gw.token)
            .send()
            .await
            .expect("download");
        let text = response.text().await.expect("body");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect();
        assert_eq!(lines.len(), 2_500);
        assert_eq!(lines[0], json!({"id": format!("{region}-0"), "status": "active"}));
        assert_eq!(lines[2_499], json!({"id": format!("{region}-4998"), "status": "active"}));
    }
    let logs = gw.get(&format!("/exchanges/{id}/logs")).await.1;
    let text = logs.to_string();
    assert!(text.contains("csv → ndjson: 5000 record(s) in, 2500 out"), "{logs:#}");
}

#[tokio::test]
async fn a_runaway_program_fails_its_step_at_the_deadline_while_another_exchange_completes() {
    let started = std::time::Instant::now();
    let (never_yields, too_deep, fine) = tokio::join!(
        run_pipeline("RUNAWAY_LOOP", r#"[1]"#, json!({"function": {"jq": "last(range(1e15))"}})),
        run_pipeline("RUNAWAY_STACK", r#"[1]"#, json!({"function": {"jq": "def f: 1 + f; f"}})),
        async {
            // Starts once the runaways are in their sandboxes.
            tokio::time::sleep(Duration::from_millis(500)).await;
            run_pipeline("BESIDE_RUNAWAY", r#"[{"id": 1}]"#, json!({"function": {"jq": "map(.id)"}})).await
        },
    );
    assert_eq!(fine.0["status"], "Completed", "{:#}", fine.0);
    assert_eq!(fine.1.as_deref(), Some("[1]"));
    let (failed, delivered) = never_yields;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("step 'convert'")
            && message.contains("JqTimeoutMs")
            && message.contains(&format!("{} ms", handoff_e2e::JQ_TIMEOUT_MS)),
        "{message}"
    );
    assert_eq!(delivered, None, "nothing is delivered");
    let (failed, _) = too_deep;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap_or_default().contains("JqMaxMemoryMB"), "{failed:#}");
    // Each ran once (a business error is not retried) and was stopped at its deadline.
    assert!(started.elapsed() < Duration::from_millis(handoff_e2e::JQ_TIMEOUT_MS) * 4, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_program_error_names_types_never_the_payloads_values() {
    let (failed, _) =
        run_pipeline("JQ_REDACTED", r#"[{"ssn": "123-45-6789"}]"#, json!({"function": {"jq": ".[0].ssn | .x"}})).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot index string with string"), "{message}");
    assert!(!message.contains("123-45-6789"), "{message}");
}
