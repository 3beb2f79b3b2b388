use super::*;

fn real_template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    Template::load(&path).expect("infra/template.yaml parses")
}

fn urls() -> LocalUrls {
    LocalUrls { aws_endpoint: "http://127.0.0.1:5000".into(), api_url: "http://127.0.0.1:8080".into() }
}

#[test]
fn parameters_take_their_defaults() {
    let t = real_template();
    assert_eq!(t.parameters.get("MaxReceiveCount").map(String::as_str), Some("5"));
}

#[test]
fn physical_identities_are_deterministic() {
    let t = real_template();
    let ids = t.identities(&urls()).expect("identities");
    assert_eq!(ids.ref_value("ExchangesTable").expect("ref"), "handoff-ExchangesTable");
    assert_eq!(ids.ref_value("DataBucket").expect("ref"), "handoff-databucket");
    assert_eq!(ids.ref_value("ControlQueue").expect("ref"), "http://127.0.0.1:5000/123456789012/handoff-ControlQueue");
    assert_eq!(
        ids.attribute("ControlDlq", "Arn").expect("arn"),
        "arn:aws:sqs:us-east-1:123456789012:handoff-ControlDlq"
    );
    assert_eq!(ids.ref_value("IntegrationScheduleGroup").expect("ref"), "handoff-integrations");
    assert_eq!(
        ids.attribute("TriggerFunction", "Arn").expect("arn"),
        "arn:aws:lambda:us-east-1:123456789012:function:handoff-TriggerFunction"
    );
    assert_eq!(ids.logical_id_for_arn("arn:aws:sqs:us-east-1:123456789012:handoff-QueryQueue"), Some("QueryQueue"));
}

#[test]
fn sub_resolves_pseudo_parameters_and_attributes() {
    let t = real_template();
    let ids = t.identities(&urls()).expect("identities");
    let v: Value = serde_yaml::from_str(
            r#"!Sub "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:schedule/${IntegrationScheduleGroup}/*""#,
        )
        .expect("yaml");
    assert_eq!(
        ids.resolve_string(&v).expect("sub"),
        "arn:aws:scheduler:us-east-1:123456789012:schedule/handoff-integrations/*"
    );
    let v: Value = serde_yaml::from_str(r#"!Sub "${DataBucket.Arn}/*""#).expect("yaml");
    assert_eq!(ids.resolve_string(&v).expect("sub"), "arn:aws:s3:::handoff-databucket/*");
    let v: Value = serde_yaml::from_str(r#"!Sub ["${X}-${!Literal}", {X: !Ref MaxReceiveCount}]"#).expect("yaml");
    assert_eq!(ids.resolve_string(&v).expect("sub"), "5-${Literal}");
    let v: Value = serde_yaml::from_str(r#"{"Fn::GetAtt": [ControlQueue, QueueName]}"#).expect("yaml");
    assert_eq!(ids.resolve_string(&v).expect("getatt"), "handoff-ControlQueue");
    let v: Value = serde_yaml::from_str("!Ref Nope").expect("yaml");
    assert!(matches!(ids.resolve(&v), Err(TemplateError::UnknownReference(_))));
}

#[test]
fn functions_merge_globals_and_resolve_events() {
    let t = real_template();
    let ids = t.identities(&urls()).expect("identities");
    let fns = t.functions(&ids).expect("functions");
    let api = fns.iter().find(|f| f.binary == "handoff-api").expect("api function");
    assert_eq!(api.timeout, Duration::from_secs(29));
    assert_eq!(api.env.get("HANDOFF_EXCHANGES_TABLE").map(String::as_str), Some("handoff-ExchangesTable"));
    assert_eq!(api.env.get("HANDOFF_SCHEDULE_GROUP").map(String::as_str), Some("handoff-integrations"));
    assert_eq!(api.env.get("HANDOFF_INLINE_PAYLOAD_LIMIT_BYTES").map(String::as_str), Some("65536"));
    assert!(api.http_routes.iter().any(|r| r.method == "GET" && r.path.as_deref() == Some("/exchanges/{id}")));
    let query = fns.iter().find(|f| f.binary == "handoff-worker-query").expect("query");
    assert_eq!(query.timeout, Duration::from_secs(30));
    assert_eq!(query.sqs_events.len(), 1);
    assert_eq!(query.sqs_events[0].batch_size, 5);
    assert!(query.sqs_events[0].report_batch_item_failures);
    assert_eq!(query.sqs_events[0].queue_arn, "arn:aws:sqs:us-east-1:123456789012:handoff-QueryQueue");
    // Every queue's dead-letter queue feeds the DLQ function: no dead letter goes unseen.
    let dlq = fns.iter().find(|f| f.binary == "handoff-dlq").expect("dlq");
    let redriven: Vec<&Resource> =
        t.resources_of("AWS::SQS::Queue").filter(|q| q.property("RedrivePolicy").is_some()).collect();
    assert!(redriven.len() >= 4);
    assert_eq!(dlq.sqs_events.len(), redriven.len());
    for queue in redriven {
        let dlq_name = format!("handoff-{}", queue.logical_id.replace("Queue", "Dlq"));
        assert!(
            dlq.sqs_events.iter().any(|e| e.queue_arn.ends_with(&format!(":{dlq_name}"))),
            "{dlq_name} has no event source on the DLQ function"
        );
    }
}

#[test]
fn queues_depend_on_their_dead_letter_queues() {
    let t = real_template();
    let q = t.resource("ControlQueue").expect("queue");
    assert!(t.dependencies(q).contains("ControlDlq"));
}

#[test]
fn schedule_v2_events_are_read() {
    let t = Template::parse(
        r#"
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: b}}
    Properties:
      Events:
        Nightly:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(0 18 * * ? *)
            ScheduleExpressionTimezone: Europe/Amsterdam
            Input: {"kind": "nightly", "fn": !Ref Fn}
"#,
    )
    .expect("parses");
    let ids = t.identities(&urls()).expect("ids");
    let fns = t.functions(&ids).expect("fns");
    let s = &fns[0].schedules[0];
    assert_eq!(s.name, "FnNightly");
    assert_eq!(s.group, "default");
    assert_eq!(s.timezone.as_deref(), Some("Europe/Amsterdam"));
    let input: serde_json::Value = serde_json::from_str(s.input.as_deref().expect("input")).expect("json");
    assert_eq!(input, serde_json::json!({"kind": "nightly", "fn": "handoff-Fn"}));
    assert_eq!(fns[0].timeout, Duration::from_secs(3));
}

#[test]
fn every_route_requires_the_scope_the_api_function_checks() {
    let mut t = real_template();
    t.parameters.insert("JwtIssuer".into(), "https://issuer.example".into());
    let ids = t.identities(&urls()).expect("identities");
    let auth = t.http_api_auth(&ids).expect("auth");
    assert_eq!(auth.default_authorizer.as_deref(), Some("HandoffJwt"));
    assert_eq!(
        auth.authorizers.get("HandoffJwt"),
        Some(&JwtAuthorizerSpec { issuer: "https://issuer.example".into(), audience: vec!["handoff".into()] })
    );
    let api = t.functions(&ids).expect("functions").into_iter().find(|f| f.binary == "handoff-api").expect("api");
    let in_template: BTreeSet<(String, String, Option<String>)> = api
        .http_routes
        .iter()
        .map(|r| {
            let path = r.path.clone().expect("no $default route");
            let scope = match r.auth.authorizer {
                RouteAuthorizer::Public => None,
                _ => {
                    assert_eq!(r.auth.scopes.len(), 1, "{} {path}: one scope per route", r.method);
                    Some(r.auth.scopes[0].clone())
                }
            };
            (r.method.clone(), path, scope)
        })
        .collect();
    let in_code: BTreeSet<(String, String, Option<String>)> = handoff_app::entry::api::ROUTE_SCOPES
        .iter()
        .map(|(m, p, s)| (m.to_string(), p.to_string(), s.map(|s| s.as_str().to_string())))
        .collect();
    assert_eq!(in_template, in_code, "template routes and the api function's scopes differ");
}

/// The alarms operators rely on exist for every piece they watch, and notify the topic.
#[test]
fn every_dead_letter_queue_scheduled_job_and_function_has_its_alarm() {
    let t = real_template();
    let alarms: Vec<serde_json::Value> = t
        .resources_of("AWS::CloudWatch::Alarm")
        .map(|a| yaml_to_json(&a.properties))
        .inspect(|a| {
            let notifies = |key: &str| a[key].to_string().contains("AlertTopic");
            assert!(notifies("AlarmActions") && notifies("OKActions"), "alarm without the alert topic: {a}");
        })
        .collect();
    let watching = |metric: &str, dimension: &str, value: &str| {
        alarms.iter().any(|a| {
            a["MetricName"] == metric
                && a["Dimensions"].as_array().is_some_and(|ds| {
                    ds.iter().any(|d| d["Name"] == dimension && d["Value"].to_string().contains(value))
                })
        })
    };
    let dead_letter_queues: Vec<String> = t
        .resources_of("AWS::SQS::Queue")
        .filter_map(|q| q.property("RedrivePolicy"))
        .map(|p| yaml_to_json(p)["deadLetterTargetArn"].to_string())
        .collect();
    assert_eq!(dead_letter_queues.len(), 10, "{dead_letter_queues:?}");
    for dlq in &dead_letter_queues {
        let id = dlq.split(['"', '.', '[', ']', ',', ' ']).find(|s| s.ends_with("Dlq")).expect("a Dlq logical id");
        assert!(watching("ApproximateNumberOfMessagesVisible", "QueueName", id), "no alarm on {id}");
    }
    let mut jobs = Vec::new();
    for function in t.resources_of("AWS::Serverless::Function") {
        let id = &function.logical_id;
        assert!(watching("Errors", "FunctionName", id), "no Errors alarm on {id}");
        assert!(watching("Throttles", "FunctionName", id), "no Throttles alarm on {id}");
        let events = function.property("Events").map(yaml_to_json).unwrap_or_default();
        for event in events.as_object().into_iter().flat_map(|e| e.values()) {
            if event["Type"] == "ScheduleV2" {
                let input: serde_json::Value =
                    serde_json::from_str(event["Properties"]["Input"].as_str().unwrap_or("{}")).expect("input");
                jobs.push(input["job"].as_str().expect("a job").to_string());
            }
        }
    }
    jobs.sort();
    assert_eq!(jobs, ["errorProcessing", "regular"]);
    for job in &jobs {
        let alarm = alarms.iter().find(|a| {
            a["MetricName"] == "JobRunsCompleted" && a["Dimensions"][0]["Value"].as_str() == Some(job.as_str())
        });
        let alarm = alarm.unwrap_or_else(|| panic!("no alarm on the {job} job"));
        assert_eq!(alarm["TreatMissingData"], "breaching", "a job that never reports must alarm");
    }
    assert!(alarms.iter().any(|a| a["MetricName"] == "SystemFailures"), "no system-error alarm");
    assert!(alarms.iter().any(|a| a["MetricName"] == "5xx" && a["Namespace"] == "AWS/ApiGateway"), "no API 5xx alarm");
}

#[test]
fn job_schedules_follow_their_every_minutes_parameter_through_the_mapping() {
    let mut t = real_template();
    let expressions = |t: &Template| -> Vec<String> {
        let ids = t.identities(&urls()).expect("identities");
        let functions = t.functions(&ids).expect("functions");
        let jobs = functions.iter().find(|f| f.logical_id == "JobsFunction").expect("jobs function");
        let mut expressions: Vec<String> = jobs.schedules.iter().map(|s| s.expression.clone()).collect();
        expressions.sort();
        expressions
    };
    assert_eq!(expressions(&t), ["rate(1 minute)", "rate(5 minutes)"]);
    t.parameters.insert("RegularJobEveryMinutes".into(), "2".into());
    assert_eq!(expressions(&t), ["rate(2 minutes)", "rate(5 minutes)"]);
    t.parameters.insert("ErrorJobEveryMinutes".into(), "7".into());
    let ids = t.identities(&urls()).expect("identities");
    assert!(t.functions(&ids).is_err(), "a value the mapping lacks is refused, as CloudFormation would");
}
