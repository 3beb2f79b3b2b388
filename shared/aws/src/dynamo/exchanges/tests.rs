use super::*;
use handoff_core::exchange::LogType;
use handoff_core::handoff::TimerKind;
use handoff_core::ids::DataFileSetId;
use handoff_core::retry::ErrorClassification;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).expect("test time")
}

fn exchange() -> Exchange {
    Exchange {
        exchange_id: ExchangeId::new("01J0000000000000000000000A"),
        integration_code: IntegrationCode::parse("PROVIDER_IMPORT").expect("code"),
        integration_version: IntegrationVersion::number(2).expect("version"),
        status: ExchangeStatus::Failed,
        parameters: serde_json::json!({"region": "EU", "n": 12345678901234_i64, "x": 1.5, "deep": [[{"a": null}]]}),
        created_at: t("2026-01-02T03:04:05.678901Z"),
        updated_at: t("2026-01-02T03:05:00Z"),
        completed_at: Some(t("2026-01-02T03:05:00Z")),
        error: Some(ExchangeError {
            classification: ErrorClassification::Business,
            code: handoff_core::error_code::ErrorCode::InvalidRecord,
            message: "bad data".into(),
            retryable: true,
            step_id: Some(StepId::from_sequence(3)),
            sub_step: Some(SubStep::Transform),
            at: t("2026-01-02T03:05:00Z"),
        }),
        recoveries: 3,
        parent: None,
        result: None,
        trigger: Some(handoff_core::exchange::Trigger::schedule()),
    }
}

fn step(seq: u32) -> ExchangeStep {
    ExchangeStep {
        step_id: StepId::from_sequence(seq),
        sequence: seq,
        integration_step: Some("fetch".into()),
        sub_step: SubStep::InvokeQuery,
        destination: Some(1),
        status: StepStatus::Initial,
        payload: Some(Payload::DataFileSet { data_file_set_id: DataFileSetId::new("set-1") }),
        attempts: 2,
        max_attempts: 5,
        last_error: Some(StepError {
            classification: ErrorClassification::System,
            code: handoff_core::error_code::ErrorCode::Unavailable,
            message: "timeout".into(),
            at: t("2026-01-02T03:04:05Z"),
        }),
        next_retry_at: Some(t("2026-01-02T03:04:09Z")),
        started_at: None,
        completed_at: None,
        sub_exchanges: None,
    }
}

#[test]
fn exchange_item_round_trips() {
    let ex = exchange();
    let item = exchange_to_item(&ex).expect("encode");
    assert_eq!(attr_str(&item, "pk"), Some("EX#01J0000000000000000000000A"));
    assert_eq!(attr_str(&item, "sk"), Some("EXCHANGE"));
    assert_eq!(attr_str(&item, "status"), Some("Failed"));
    assert_eq!(attr_str(&item, "gsi1pk"), Some("INT#PROVIDER_IMPORT"));
    assert_eq!(attr_str(&item, "gsi2pk"), Some("STATUS#Failed"));
    assert_eq!(attr_str(&item, "gsi3pk"), Some("EXCHANGES"));
    assert_eq!(attr_str(&item, "gsi1sk"), Some("2026-01-02T03:04:05.678Z#01J0000000000000000000000A"));
    assert_eq!(item.get("integrationVersion"), Some(&AttributeValue::N("2".into())));
    assert_eq!(item.get("recoveries"), Some(&n(3)));
    let error = item.get("error").and_then(|e| e.as_m().ok()).expect("error map");
    assert_eq!(error.get("retryable"), Some(&AttributeValue::Bool(true)));
    assert_eq!(exchange_from_item(item.clone()).expect("decode"), ex);

    // Written before recoveries and `retryable` existed: generation 0, not retryable.
    let mut old = item;
    old.remove("recoveries");
    if let Some(AttributeValue::M(error)) = old.get_mut("error") {
        error.remove("retryable");
    }
    let back = exchange_from_item(old).expect("decode old");
    assert_eq!(back.recoveries, 0);
    assert!(!back.error.expect("error").retryable);

    let mut minimal = exchange();
    minimal.integration_version = IntegrationVersion::NULL;
    minimal.parameters = serde_json::Value::Null;
    minimal.error = None;
    minimal.completed_at = None;
    minimal.status = ExchangeStatus::New;
    minimal.recoveries = 0;
    let item = exchange_to_item(&minimal).expect("encode");
    assert_eq!(item.get("integrationVersion"), Some(&AttributeValue::Null(true)));
    assert_eq!(item.get("recoveries"), Some(&n(0)), "written at creation");
    for absent in ["parent", "result", "gsi6pk", "gsi6sk"] {
        assert!(!item.contains_key(absent), "{absent}: not a sub-exchange, no result");
    }
    assert_eq!(exchange_from_item(item).expect("decode"), minimal);

    // A completed sub-exchange: on the parent's index, with its result.
    let mut child = exchange();
    child.status = ExchangeStatus::Completed;
    child.error = None;
    child.parent = Some(ParentLink {
        exchange_id: ExchangeId::new("parent-1"),
        step_id: StepId::from_sequence(4),
        index: 17,
        depth: 1,
    });
    child.result = Some(Payload::raw("{\"total\":3}"));
    let item = exchange_to_item(&child).expect("encode");
    assert_eq!(attr_str(&item, "gsi6pk"), Some("PARENT#parent-1"));
    assert_eq!(attr_str(&item, "gsi6sk"), Some("0004#00000017"));
    let parent = item.get("parent").and_then(|p| p.as_m().ok()).expect("parent map");
    assert_eq!(parent.get("exchangeId"), Some(&s("parent-1")));
    assert_eq!(parent.get("index"), Some(&n(17)));
    assert!(item.get("result").is_some_and(|r| r.as_m().is_ok()), "result as a map");
    assert_eq!(exchange_from_item(item).expect("decode"), child);
    // Siblings sort by index as text.
    let link =
        |index| ParentLink { exchange_id: ExchangeId::new("p"), step_id: StepId::from_sequence(4), index, depth: 1 };
    assert!(parent_gsi_sk(&link(9)) < parent_gsi_sk(&link(10)));
    assert!(
        parent_gsi_sk(&link(99_999_999)) < parent_gsi_sk(&ParentLink { step_id: StepId::from_sequence(5), ..link(0) })
    );
}

#[test]
fn step_item_round_trips_with_bookkeeping() {
    let st = step(3);
    let item = step_to_item(&ExchangeId::new("e1"), &st).expect("encode");
    assert_eq!(attr_str(&item, "sk"), Some("STEP#0003"));
    assert_eq!(attr_str(&item, "status"), Some("Initial"));
    assert_eq!(item.get("completedAttempt"), Some(&AttributeValue::N("0".into())));
    assert_eq!(item.get("claimedAttempt"), Some(&AttributeValue::N("0".into())));
    assert_eq!(item.get("leaseUntil"), Some(&AttributeValue::N("0".into())));
    assert_eq!(item.get("logs"), Some(&AttributeValue::L(vec![])));
    let (back, logs) = step_from_item(item).expect("decode");
    assert_eq!(back, st);
    assert!(logs.is_empty());

    let mut plain = step(0);
    plain.integration_step = None;
    plain.destination = None;
    plain.payload = Some(Payload::raw("{\"a\":1}"));
    plain.last_error = None;
    plain.next_retry_at = None;
    plain.completed_at = Some(t("2026-01-02T03:04:05Z"));
    let mut item = step_to_item(&ExchangeId::new("e1"), &plain).expect("encode");
    let line = LogLine {
        kind: LogType::User,
        line: "hello".into(),
        timestamp: t("2026-01-02T03:04:05.5Z"),
        step_id: StepId::from_sequence(0),
    };
    item.insert("logs".into(), to_av(&vec![line.clone()]).expect("logs"));
    let (back, logs) = step_from_item(item.clone()).expect("decode");
    assert_eq!(back, plain);
    assert_eq!(logs, vec![line]);
    for absent in ["subTotal", "subCompleted", "subFailed"] {
        assert!(!item.contains_key(absent), "{absent}: only set on subflow steps");
    }

    // A subflow step: its counts (a count not yet written is 0).
    item.insert("subTotal".into(), n(5));
    item.insert("subCompleted".into(), n(2));
    let (back, _) = step_from_item(item.clone()).expect("decode");
    assert_eq!(back.sub_exchanges, Some(SubExchangeCounts { total: 5, completed: 2, failed: 0 }));
    item.insert("subFailed".into(), n(1));
    let (back, _) = step_from_item(item).expect("decode");
    assert_eq!(back.sub_exchanges, Some(SubExchangeCounts { total: 5, completed: 2, failed: 1 }));
}

#[test]
fn sub_exchange_total_keeps_counts() {
    let (update, condition, names, values) = sub_total_parts(&ExchangeId::new("e"), StepId::from_sequence(1), 7);
    assert_eq!(
        update,
        "SET #subTotal = :total, #subCompleted = if_not_exists(#subCompleted, :zero), \
         #subFailed = if_not_exists(#subFailed, :zero)"
    );
    assert_eq!(condition, "attribute_exists(#pk)");
    assert_eq!(names.get("#subFailed").map(String::as_str), Some("subFailed"));
    assert_eq!(values, HashMap::from([(":total".to_string(), n(7)), (":zero".to_string(), n(0))]));
}

#[test]
fn creation_items_pack_exchanges_and_dedup() {
    let a = exchange();
    let mut b = exchange();
    b.exchange_id = ExchangeId::new("b");
    let (sa, sb) = (vec![step(0), step(1)], vec![step(0)]);
    let items = creation_items([(&a, sa.as_slice()), (&b, sb.as_slice()), (&a, sa.as_slice())]).expect("items");
    let keys = |items: &[Item]| -> Vec<String> {
        items
            .iter()
            .map(|i| format!("{}/{}", attr_str(i, "pk").unwrap_or(""), attr_str(i, "sk").unwrap_or("")))
            .collect()
    };
    assert_eq!(items.len(), 8);
    let unique = dedup_by_key(items);
    let a_pk = "EX#01J0000000000000000000000A";
    assert_eq!(
        keys(&unique),
        vec![
            format!("{a_pk}/STEP#0000"),
            format!("{a_pk}/STEP#0001"),
            format!("{a_pk}/EXCHANGE"),
            "EX#b/STEP#0000".to_string(),
            "EX#b/EXCHANGE".to_string(),
        ],
        "steps before their exchange, each key once"
    );
    let mut later = exchange();
    later.status = ExchangeStatus::Started;
    let again = creation_items([(&a, &[][..]), (&later, &[][..])]).expect("items");
    let unique = dedup_by_key(again);
    assert_eq!(unique.len(), 1);
    assert_eq!(attr_str(&unique[0], "status"), Some("Started"), "the last content wins");
}

#[test]
fn cursor_round_trips_and_rejects_garbage() {
    let key: Item = HashMap::from([
        ("pk".to_string(), s("EX#a")),
        ("sk".to_string(), s("EXCHANGE")),
        ("gsi2pk".to_string(), s("STATUS#New")),
        ("gsi2sk".to_string(), s("2026-01-01T00:00:00.000Z#a")),
    ]);
    let c = encode_cursor(INDEX_BY_STATUS, &key).expect("encode");
    assert!(c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
    assert_eq!(decode_cursor(INDEX_BY_STATUS, &c).expect("decode"), key);
    assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());
    assert!(decode_cursor(INDEX_BY_STATUS, "not a cursor!").is_err());
    assert!(decode_cursor(INDEX_BY_STATUS, &URL_SAFE_NO_PAD.encode(b"{\"i\":\"byStatus\",\"k\":{}}")).is_err());
    let numeric: Item = HashMap::from([("pk".to_string(), n(1))]);
    assert!(encode_cursor(INDEX_BY_STATUS, &numeric).is_err());
}

#[test]
fn list_picks_the_index() {
    let code = IntegrationCode::parse("A").expect("code");
    let both =
        ExchangeFilter { integration_code: Some(code.clone()), status: Some(ExchangeStatus::Failed), parent: None };
    assert_eq!(list_plan(&both), (INDEX_BY_INTEGRATION, "INT#A".into(), Some(ExchangeStatus::Failed)));
    let status = ExchangeFilter { status: Some(ExchangeStatus::Failed), ..ExchangeFilter::default() };
    assert_eq!(list_plan(&status), (INDEX_BY_STATUS, "STATUS#Failed".into(), None));
    assert_eq!(list_plan(&ExchangeFilter::default()), (INDEX_BY_CREATION, "EXCHANGES".into(), None));
    let children = ExchangeFilter { parent: Some(ExchangeId::new("p")), ..both };
    assert_eq!(list_plan(&children), (INDEX_BY_PARENT, "PARENT#p".into(), Some(ExchangeStatus::Failed)));
}

fn change(claimed: bool) -> StepChange {
    StepChange {
        step_id: StepId::from_sequence(2),
        attempt: 3,
        claimed,
        status: StepStatus::Done,
        payload: Some(Payload::raw("x")),
        max_attempts: 5,
        last_error: None,
        next_retry_at: None,
        started_at: None,
        completed_at: Some(t("2026-01-02T03:04:05Z")),
        logs: vec![],
    }
}

#[test]
fn step_update_conditions() {
    let u = step_update("T", &ExchangeId::new("e"), &change(false)).expect("update");
    assert_eq!(u.condition_expression(), Some("#status = :initial AND #completedAttempt < :attempt"));
    let expr = u.update_expression();
    assert!(expr.starts_with("SET #status = :status, #attempts = :attempt, #completedAttempt = :attempt"), "{expr}");
    assert!(expr.contains("#logs = list_append(if_not_exists(#logs, :empty), :logs)"), "{expr}");
    assert!(expr.ends_with("REMOVE #lastError, #nextRetryAt"), "{expr}");
    assert_eq!(u.key().get("sk"), Some(&s("STEP#0002")));
    let values = u.expression_attribute_values().expect("values");
    assert_eq!(values.get(":attempt"), Some(&n(3)));
    assert_eq!(values.get(":status"), Some(&s("Done")));

    let u = step_update("T", &ExchangeId::new("e"), &change(true)).expect("update");
    assert_eq!(
        u.condition_expression(),
        Some("#status = :initial AND #completedAttempt < :attempt AND #claimedAttempt = :attempt")
    );
    let mut zero = change(false);
    zero.attempt = 0;
    assert!(step_update("T", &ExchangeId::new("e"), &zero).is_err());
}

fn error_record(at: &str, step: Option<u32>, classification: ErrorClassification) -> ErrorRecord {
    ErrorRecord {
        exchange_id: ExchangeId::new("e"),
        integration_code: IntegrationCode::parse("A").expect("code"),
        step_id: step.map(StepId::from_sequence),
        sub_step: step.map(|_| SubStep::InvokeQuery),
        classification,
        code: handoff_core::error_code::ErrorCode::Unavailable,
        message: "503 from upstream".into(),
        retryable: true,
        exchange_failed: false,
        recovery: 2,
        at: t(at),
    }
}

fn timer(kind: TimerKind, due: &str) -> Timer {
    Timer { exchange_id: ExchangeId::new("e"), recovery: 1, due: t(due), kind }
}

fn values_of(e: Option<&HashMap<String, AttributeValue>>, key: &str) -> Option<AttributeValue> {
    e.and_then(|v| v.get(key)).cloned()
}

#[test]
fn commit_actions_order_and_limits() {
    let mut commit = StepCommit::new(
        ExchangeId::new("e"),
        2,
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::New, ExchangeStatus::Started],
            to: ExchangeStatus::Completed,
            error: None,
            completed_at: Some(t("2026-01-02T03:04:05Z")),
        },
        t("2026-01-02T03:04:05Z"),
    );
    commit.step = Some(change(false));
    commit.skip =
        vec![StepId::from_sequence(4), StepId::from_sequence(3), StepId::from_sequence(4), StepId::from_sequence(2)];
    let actions = commit_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 4, "the step itself and duplicates are not skipped");
    let ex = actions[3].update().expect("exchange update");
    assert_eq!(
        ex.condition_expression(),
        Some("#status IN (:from0, :from1) AND #recoveries = :recovery AND attribute_not_exists(#deletingAt)")
    );
    assert_eq!(values_of(ex.expression_attribute_values(), ":recovery"), Some(n(2)));
    assert!(ex.update_expression().contains("#gsi2pk = :gsi2pk"));
    assert_eq!(ex.expression_attribute_values().and_then(|v| v.get(":gsi2pk")), Some(&s("STATUS#Completed")));
    assert!(!ex.update_expression().contains("REMOVE"));
    assert!(!ex.update_expression().contains("recoveries"), "a commit never changes the generation");

    commit.exchange = ExchangeChange::RequireNotFinal;
    let actions = commit_actions("T", &commit).expect("actions");
    let check = actions[3].condition_check().expect("check");
    assert_eq!(check.condition_expression(), "#status IN (:s0, :s1, :s2, :s3) AND #recoveries = :recovery");

    // Generation 0 also matches exchanges stored before recoveries existed.
    commit.recovery = 0;
    let actions = commit_actions("T", &commit).expect("actions");
    let check = actions[3].condition_check().expect("check");
    assert_eq!(
        check.condition_expression(),
        "#status IN (:s0, :s1, :s2, :s3) AND (attribute_not_exists(#recoveries) OR #recoveries = :recovery)"
    );
    assert_eq!(values_of(check.expression_attribute_values(), ":recovery"), Some(n(0)));

    commit.skip = (10..109).map(StepId::from_sequence).collect();
    assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
    commit.skip.pop();
    assert_eq!(commit_actions("T", &commit).expect("100 actions").len(), 100);

    commit.skip.clear();
    commit.exchange =
        ExchangeChange::SetStatus { from: vec![], to: ExchangeStatus::Started, error: None, completed_at: None };
    assert!(commit_actions("T", &commit).is_err());
}

#[test]
fn commit_without_step_with_extras() {
    let mut commit = StepCommit::new(
        ExchangeId::new("e"),
        1,
        ExchangeChange::SetStatus {
            from: ExchangeStatus::not_final(),
            to: ExchangeStatus::TimedOut,
            error: None,
            completed_at: Some(t("2026-01-02T03:04:05Z")),
        },
        t("2026-01-02T03:04:05Z"),
    );
    let actions = commit_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 1, "the exchange alone");
    assert!(actions[0].update().is_some());

    commit.skip = vec![StepId::from_sequence(5)];
    commit.require_done = Some(StepId::from_sequence(2));
    commit.errors = vec![
        error_record("2026-01-02T03:04:05.123456Z", Some(3), ErrorClassification::System),
        error_record("2026-01-02T03:04:05Z", None, ErrorClassification::Business),
    ];
    commit.timers = vec![
        timer(TimerKind::Sla, "2026-01-02T04:00:00Z"),
        timer(TimerKind::StepTimeout { step_id: StepId::from_sequence(3) }, "2026-01-02T03:14:05Z"),
    ];
    let actions = commit_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 7);
    assert!(actions[0].update().is_some(), "the skip");
    let done = actions[1].condition_check().expect("require done");
    assert_eq!(done.condition_expression(), "#status = :done");
    assert_eq!(done.key().get("sk"), Some(&s("STEP#0002")));
    assert_eq!(values_of(done.expression_attribute_values(), ":done"), Some(s("Done")));

    // Each failure lands on its step's error entry (see an_error_entry_is_upserted_by_its_step_and_reads_back).
    let err = actions[2].update().expect("error upsert");
    assert_eq!(err.key().get("pk"), Some(&s("EX#e")));
    assert_eq!(err.key().get("sk"), Some(&s("ERROR#0003")));
    let values = err.expression_attribute_values().expect("values");
    assert_eq!(values.get(":gsi5pk"), Some(&s("ERRORS")));
    assert_eq!(values.get(":gsi5sk"), Some(&s("2026-01-02T03:04:05.123Z#e#0003")));
    assert_eq!(values.get(":classification"), Some(&s("system")));
    assert_eq!(values.get(":integrationCode"), Some(&s("A")));
    let err = actions[3].update().expect("error upsert");
    assert_eq!(err.key().get("sk"), Some(&s("ERROR#-")));
    assert_eq!(
        err.expression_attribute_values().and_then(|v| v.get(":gsi5sk")),
        Some(&s("2026-01-02T03:04:05.000Z#e#-"))
    );

    let sla = actions[4].put().expect("timer put").item();
    assert_eq!(attr_str(sla, "sk"), Some("TIMER#sla"));
    assert_eq!(attr_str(sla, "gsi4pk"), Some("TIMERS"));
    assert_eq!(attr_str(sla, "gsi4sk"), Some("001767326400000#e#sla"));
    let timeout = actions[5].put().expect("timer put").item();
    assert_eq!(attr_str(timeout, "sk"), Some("TIMER#timeout#0003"));
    assert!(actions[6].update().is_some(), "the exchange last");

    // Overlaps DynamoDB would refuse (one item twice in a transaction).
    let mut both = commit.clone();
    both.skip.push(StepId::from_sequence(2));
    assert!(matches!(commit_actions("T", &both), Err(PortError::Fault { .. })));
    let mut both = commit.clone();
    both.step = Some(change(false));
    assert!(matches!(commit_actions("T", &both), Err(PortError::Fault { .. })));
    let mut twice = commit.clone();
    twice.timers.push(timer(TimerKind::Sla, "2026-01-02T05:00:00Z"));
    assert!(matches!(commit_actions("T", &twice), Err(PortError::Fault { .. })));
    let mut same_step = commit.clone();
    same_step.errors.push(error_record("2026-01-02T03:04:06Z", Some(3), ErrorClassification::Business));
    assert!(matches!(commit_actions("T", &same_step), Err(PortError::Fault { .. })), "one entry per step");
    let mut many = commit.clone();
    many.errors =
        (10..106).map(|step| error_record("2026-01-02T03:04:05Z", Some(step), ErrorClassification::System)).collect();
    assert!(matches!(commit_actions("T", &many), Err(PortError::Fault { .. })), "101 actions");
    many.errors.pop();
    let actions = commit_actions("T", &many).expect("100 actions");
    let mut sks: Vec<String> = actions
        .iter()
        .filter_map(|a| a.update())
        .filter_map(|u| u.key().get("sk").and_then(|v| v.as_s().ok()).cloned())
        .filter(|sk| sk.starts_with("ERROR#"))
        .collect();
    sks.sort();
    sks.dedup();
    assert_eq!(sks.len(), 95, "each failing step has its own entry");
}

#[test]
fn commit_stores_the_result_and_tallies_the_parent() {
    let now = t("2026-01-02T03:04:05Z");
    let complete = ExchangeChange::SetStatus {
        from: vec![ExchangeStatus::Started],
        to: ExchangeStatus::Completed,
        error: None,
        completed_at: Some(now),
    };
    let mut commit = StepCommit::new(ExchangeId::new("child"), 0, complete, now);
    commit.step = Some(change(false));
    commit.result = Some(Payload::raw("done"));
    commit.tally =
        Some(ParentTally { parent: ExchangeId::new("parent"), step_id: StepId::from_sequence(4), completed: true });
    let actions = commit_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 3, "step, exchange, tally");
    let ex = actions[1].update().expect("exchange update");
    assert_eq!(ex.key().get("pk"), Some(&s("EX#child")));
    assert!(ex.update_expression().contains("#result = :result"), "{}", ex.update_expression());
    assert_eq!(values_of(ex.expression_attribute_values(), ":result"), Some(to_av(&Payload::raw("done")).expect("av")));
    let tally = actions[2].update().expect("tally");
    assert_eq!(tally.key(), &step_key(&ExchangeId::new("parent"), StepId::from_sequence(4)));
    assert_eq!(tally.update_expression(), "ADD #subCompleted :one");
    assert_eq!(tally.condition_expression(), Some("attribute_exists(#pk)"));
    assert_eq!(values_of(tally.expression_attribute_values(), ":one"), Some(n(1)));
    // The step update never touches the counts.
    let step = actions[0].update().expect("step").update_expression();
    assert!(!step.contains("sub"), "{step}");

    commit.tally.as_mut().expect("tally").completed = false;
    let actions = commit_actions("T", &commit).expect("actions");
    assert_eq!(actions[2].update().expect("tally").update_expression(), "ADD #subFailed :one");

    // Without a status change, the check becomes an update with the same condition.
    commit.exchange = ExchangeChange::RequireNotFinal;
    commit.tally = None;
    let actions = commit_actions("T", &commit).expect("actions");
    let ex = actions[1].update().expect("update instead of a check");
    assert_eq!(ex.update_expression(), "SET #result = :result");
    assert_eq!(
        ex.condition_expression(),
        Some("#status IN (:s0, :s1, :s2, :s3) AND (attribute_not_exists(#recoveries) OR #recoveries = :recovery)")
    );
    commit.result = None;
    assert!(commit_actions("T", &commit).expect("actions")[1].condition_check().is_some());

    // Limits count the tally; a parent is never its own child.
    commit.tally =
        Some(ParentTally { parent: ExchangeId::new("parent"), step_id: StepId::from_sequence(4), completed: true });
    commit.skip = (10..108).map(StepId::from_sequence).collect();
    assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
    commit.skip.pop();
    assert_eq!(commit_actions("T", &commit).expect("100 actions").len(), 100);
    commit.tally =
        Some(ParentTally { parent: ExchangeId::new("child"), step_id: StepId::from_sequence(2), completed: true });
    assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })));
}

#[test]
fn an_error_entry_is_upserted_by_its_step_and_reads_back() {
    let record = error_record("2026-01-02T03:04:05.123456Z", Some(3), ErrorClassification::Business);
    let update = error_upsert("T", &record).expect("encode");
    let key = update.key();
    assert_eq!(key.get("pk"), Some(&s("EX#e")));
    assert_eq!(key.get("sk"), Some(&s("ERROR#0003")));
    let expression = update.update_expression();
    assert!(expression.contains("#occurrences = if_not_exists(#occurrences, :zero) + :one"), "{expression}");
    assert!(!expression.contains("REMOVE"), "{expression}");
    assert!(update.condition_expression().is_none(), "a failure always lands on its entry");
    let values = update.expression_attribute_values().expect("values");
    assert_eq!(values.get(":state"), Some(&s("open")));
    assert_eq!(values.get(":errorId"), Some(&s("e.3")));
    assert_eq!(values.get(":gsi5sk"), Some(&s("2026-01-02T03:04:05.123Z#e#0003")));
    assert_eq!(values.get(":recovery"), Some(&n(2)));
    // The item the update leaves behind (what a first failure stores) reads back.
    let mut item: Item = serde_dynamo::to_item(StoredError::first(record.clone())).expect("item");
    item.insert("pk".into(), s("EX#e"));
    item.insert("sk".into(), s("ERROR#0003"));
    assert_eq!(error_from_item(item).expect("decode"), StoredError::first(record));
    let bare = error_record("2026-01-02T03:04:05Z", None, ErrorClassification::System);
    let update = error_upsert("T", &bare).expect("encode");
    assert_eq!(update.key().get("sk"), Some(&s("ERROR#-")));
    assert!(update.update_expression().contains("REMOVE #stepId, #subStep"), "{}", update.update_expression());
    assert_eq!(error_since_key(t("2026-01-02T03:04:05Z")), "2026-01-02T03:04:05.000Z");
    assert!(error_since_key(t("2026-01-02T03:04:05Z")) <= error_gsi_sk(&bare));
    assert!(error_since_key(t("2026-01-02T03:04:05.001Z")) > error_gsi_sk(&bare));
}

#[test]
fn timer_items_round_trip_and_sort_by_due() {
    let message = handoff_core::handoff::HandoffMessage {
        exchange_id: ExchangeId::new("e"),
        integration_code: IntegrationCode::parse("A").expect("code"),
        integration_version: IntegrationVersion::NULL,
        step_id: StepId::from_sequence(4),
        sub_step: SubStep::DeliverRest,
        attempt: 2,
        input: Some(Payload::raw("x")),
        parameters: serde_json::json!({"n": 12345678901234_i64, "deep": [[{"a": null}]]}),
        not_before: Some(t("2026-01-02T05:00:00Z")),
        recovery: 1,
        parent: Some(ParentLink {
            exchange_id: ExchangeId::new("p"),
            step_id: StepId::from_sequence(2),
            index: 3,
            depth: 1,
        }),
        requested_by: None,
        reexecution: false,
    };
    let retry = timer(TimerKind::Handoff { message: Box::new(message) }, "2026-01-02T05:00:00.5Z");
    let item = timer_to_item(&ExchangeId::new("e"), &retry).expect("encode");
    assert_eq!(attr_str(&item, "pk"), Some("EX#e"));
    assert_eq!(attr_str(&item, "sk"), Some("TIMER#handoff#0004#2"));
    assert_eq!(attr_str(&item, "gsi4sk"), Some("001767330000500#e#handoff#0004#2"));
    let expires = t("2026-01-09T05:00:00.5Z").timestamp();
    assert_eq!(item.get("expiresAt"), Some(&n(expires)));
    assert_eq!(timer_from_item(&item).expect("decode"), retry);
    assert_eq!(timer_key(&retry).get("sk"), item.get("sk"));

    // Due at the bound is included; a millisecond later is not; text order is time order.
    let until = t("2026-01-02T05:00:00.5Z");
    assert!(timer_gsi_sk(&retry) <= timers_until_key(until));
    assert!(timer_gsi_sk(&retry) > timers_until_key(t("2026-01-02T05:00:00.499Z")));
    let early = timer(TimerKind::Sla, "2001-09-09T01:46:39Z");
    let late = timer(TimerKind::Sla, "2001-09-09T01:46:40Z");
    assert!(timer_gsi_sk(&early) < timer_gsi_sk(&late), "{} < {}", timer_gsi_sk(&early), timer_gsi_sk(&late));
    assert_eq!(timers_until_key(t("1960-01-01T00:00:00Z")), "000000000000000~");
}

#[test]
fn token_items_and_consumption() {
    let mut token = CallbackToken {
        hash: "abc123".into(),
        exchange_id: ExchangeId::new("e"),
        integration_code: IntegrationCode::parse("A").expect("code"),
        integration_version: IntegrationVersion::number(3).expect("version"),
        step_id: StepId::from_sequence(5),
        sub_step: SubStep::InvokeQuery,
        recovery: 2,
        parameters: serde_json::json!({"n": 12345678901234_i64, "x": 1.5}),
        expires_at: Some(t("2026-01-02T04:00:00.250Z")),
        parent: Some(ParentLink {
            exchange_id: ExchangeId::new("p"),
            step_id: StepId::from_sequence(1),
            index: 0,
            depth: 1,
        }),
    };
    let now = t("2026-01-02T03:00:00Z");
    let item = token_to_item(&token, now).expect("encode");
    assert_eq!(token_key("abc123"), HashMap::from([("pk".into(), s("TOKEN#abc123")), ("sk".into(), s("TOKEN"))]));
    assert_eq!(attr_str(&item, "pk"), Some("TOKEN#abc123"));
    assert_eq!(attr_str(&item, "sk"), Some("TOKEN"));
    assert_eq!(item.get("tokenExpiresAt"), Some(&n(t("2026-01-02T04:00:00.250Z").timestamp_millis())));
    assert_eq!(item.get("expiresAt"), Some(&n(t("2026-01-09T04:00:00.250Z").timestamp())));
    assert!(!item.contains_key("usedAt"));
    assert_eq!(token_from_item(&item).expect("decode"), token);

    token.expires_at = None;
    let item = token_to_item(&token, now).expect("encode");
    assert!(!item.contains_key("tokenExpiresAt"));
    assert_eq!(item.get("expiresAt"), Some(&n(t("2026-02-01T03:00:00Z").timestamp())));
    assert_eq!(token_from_item(&item).expect("decode"), token);

    let (update, condition, names, values) = consume_token_parts("h", now);
    assert_eq!(update, "SET #usedAt = :now");
    assert_eq!(
        condition,
        "attribute_exists(#pk) AND attribute_not_exists(#usedAt) \
         AND (attribute_not_exists(#tokenExpiresAt) OR #tokenExpiresAt > :now)"
    );
    assert_eq!(names.get("#tokenExpiresAt").map(String::as_str), Some("tokenExpiresAt"));
    assert_eq!(values, HashMap::from([(":now".to_string(), n(now.timestamp_millis()))]));

    // Accepting a callback: the conditional use, the outbox timer and the mark on the
    // still-waiting step, in one transaction.
    let outbox = Timer { exchange_id: ExchangeId::new("e"), recovery: 0, due: now, kind: TimerKind::Sla };
    let accepted = CallbackToken { hash: "abc".into(), exchange_id: ExchangeId::new("e"), ..token.clone() };
    let actions = consume_token_actions("t", &accepted, now, &outbox).expect("actions");
    let update = actions[0].update().expect("the token update first");
    assert_eq!(update.key().get("pk"), Some(&s("TOKEN#abc")));
    assert_eq!(update.condition_expression(), Some(condition.as_str()));
    let put = actions[1].put().expect("then the outbox timer");
    assert_eq!(put.item(), &timer_to_item(&outbox.exchange_id, &outbox).expect("timer item"));
    let mark = actions[2].update().expect("then the waiting step");
    assert_eq!(mark.key(), &step_key(&ExchangeId::new("e"), StepId::from_sequence(5)));
    assert_eq!(mark.update_expression(), "SET #callbackAcceptedAt = :now");
    assert_eq!(mark.condition_expression(), Some("#status = :initial"));
    assert_eq!(actions.len(), 3);
}

#[test]
fn recovery_actions() {
    let mut commit = RecoveryCommit {
        exchange_id: ExchangeId::new("e"),
        recovery: 1,
        integration_version: Some(IntegrationVersion::number(4).expect("version")),
        reset: vec![StepId::from_sequence(3), StepId::from_sequence(2), StepId::from_sequence(3)],
        clear_sub_failures: None,
        timers: Vec::new(),
        log: None,
        now: t("2026-01-02T03:04:05Z"),
    };
    let actions = recover_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 3, "duplicates reset once");
    // Timers stored with the recovery come last, as puts.
    let sla =
        Timer { exchange_id: ExchangeId::new("e"), recovery: 2, due: t("2026-01-02T04:04:05Z"), kind: TimerKind::Sla };
    commit.timers = vec![sla.clone()];
    let with_timer = recover_actions("T", &commit).expect("actions");
    assert_eq!(with_timer.len(), 4);
    assert_eq!(with_timer[3].put().expect("timer put").item(), &timer_to_item(&sla.exchange_id, &sla).expect("item"));
    commit.timers.clear();
    let ex = actions[0].update().expect("exchange update");
    assert_eq!(ex.key().get("sk"), Some(&s("EXCHANGE")));
    assert_eq!(
        ex.condition_expression(),
        Some("#status IN (:from0, :from1) AND #recoveries = :recovery AND attribute_not_exists(#deletingAt)")
    );
    assert_eq!(
        ex.update_expression(),
        "SET #status = :to, #gsi2pk = :gsi2pk, #updatedAt = :now, \
         #recoveries = if_not_exists(#recoveries, :zero) + :one, #integrationVersion = :integrationVersion \
         REMOVE #error, #completedAt"
    );
    let values = ex.expression_attribute_values();
    assert_eq!(values_of(values, ":from0"), Some(s("Failed")));
    assert_eq!(values_of(values, ":from1"), Some(s("TimedOut")));
    assert_eq!(values_of(values, ":to"), Some(s("Started")));
    assert_eq!(values_of(values, ":gsi2pk"), Some(s("STATUS#Started")));
    assert_eq!(values_of(values, ":recovery"), Some(n(1)));
    assert_eq!(values_of(values, ":integrationVersion"), Some(n(4)));

    let reset = actions[1].update().expect("reset");
    assert_eq!(reset.key().get("sk"), Some(&s("STEP#0002")));
    assert_eq!(reset.condition_expression(), Some("attribute_exists(#pk)"));
    assert_eq!(
        reset.update_expression(),
        "SET #status = :initial, #attempts = :zero, #completedAttempt = :zero, #claimedAttempt = :zero, \
         #leaseUntil = :zero REMOVE #nextRetryAt, #lastError, #startedAt, #completedAt, #payload, #callbackAcceptedAt"
    );
    assert_eq!(values_of(reset.expression_attribute_values(), ":initial"), Some(s("Initial")));
    assert_eq!(actions[2].update().expect("reset").key().get("sk"), Some(&s("STEP#0003")));

    commit.integration_version = Some(IntegrationVersion::NULL);
    let actions = recover_actions("T", &commit).expect("actions");
    let values = actions[0].update().expect("update").expression_attribute_values();
    assert_eq!(values_of(values, ":integrationVersion"), Some(AttributeValue::Null(true)));
    commit.integration_version = None;
    commit.recovery = 0;
    let actions = recover_actions("T", &commit).expect("actions");
    let ex = actions[0].update().expect("update");
    assert!(!ex.update_expression().contains("integrationVersion"));
    assert!(ex.condition_expression().is_some_and(|c| c.contains("attribute_not_exists(#recoveries)")));

    commit.reset = (0..100).map(StepId::from_sequence).collect();
    assert!(matches!(recover_actions("T", &commit), Err(PortError::Fault { .. })));
    commit.reset.pop();
    assert_eq!(recover_actions("T", &commit).expect("100 actions").len(), 100);
    commit.clear_sub_failures = Some(StepId::from_sequence(3));
    assert_eq!(recover_actions("T", &commit).expect("merged into a reset").len(), 100);
    commit.clear_sub_failures = Some(StepId::from_sequence(200));
    assert!(matches!(recover_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
}

#[test]
fn recovery_clears_sub_failures() {
    let mut commit = RecoveryCommit {
        exchange_id: ExchangeId::new("e"),
        recovery: 1,
        integration_version: None,
        reset: vec![StepId::from_sequence(3), StepId::from_sequence(2)],
        clear_sub_failures: Some(StepId::from_sequence(3)),
        timers: Vec::new(),
        log: None,
        now: t("2026-01-02T03:04:05Z"),
    };
    // Merged into the step's reset: one action per item.
    let actions = recover_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 3);
    let plain = actions[1].update().expect("reset 2");
    assert!(!plain.update_expression().contains("subFailed"), "{}", plain.update_expression());
    let merged = actions[2].update().expect("reset 3");
    assert_eq!(merged.key().get("sk"), Some(&s("STEP#0003")));
    assert_eq!(
        merged.update_expression(),
        "SET #status = :initial, #attempts = :zero, #completedAttempt = :zero, #claimedAttempt = :zero, \
         #leaseUntil = :zero, #subFailed = :zero REMOVE #nextRetryAt, #lastError, #startedAt, #completedAt, #payload, #callbackAcceptedAt"
    );
    for update in [plain, merged] {
        let expr = update.update_expression();
        assert!(!expr.contains("subTotal") && !expr.contains("subCompleted"), "{expr}");
    }

    // Not reset: an update of its own, after the resets.
    commit.clear_sub_failures = Some(StepId::from_sequence(5));
    let actions = recover_actions("T", &commit).expect("actions");
    assert_eq!(actions.len(), 4);
    let clear = actions[3].update().expect("clear");
    assert_eq!(clear.key().get("sk"), Some(&s("STEP#0005")));
    assert_eq!(clear.update_expression(), "SET #subFailed = :zero");
    assert_eq!(clear.condition_expression(), Some("attribute_exists(#pk)"));
    assert_eq!(values_of(clear.expression_attribute_values(), ":zero"), Some(n(0)));
}

#[test]
fn claim_is_a_transaction_with_the_exchange_check() {
    let id = ExchangeId::new("e");
    let (now, lease) = (t("2026-01-02T03:04:05Z"), t("2026-01-02T03:05:05Z"));
    let actions = claim_actions("T", &id, StepId::from_sequence(2), 3, 4, now, lease).expect("actions");
    assert_eq!(actions.len(), 2);
    let update = actions[0].update().expect("step update");
    assert_eq!(update.key().get("sk"), Some(&s("STEP#0002")));
    assert_eq!(update.condition_expression(), Some(claim_update_parts(3, lease, &on_step(&id, 2, 3, now)).1.as_str()));
    let check = actions[1].condition_check().expect("exchange check");
    assert_eq!(check.key().get("sk"), Some(&s("EXCHANGE")));
    assert_eq!(check.condition_expression(), "#status IN (:s0, :s1, :s2, :s3) AND #recoveries = :recovery");
    let values = check.expression_attribute_values();
    assert_eq!(values_of(values, ":recovery"), Some(n(4)));
    let statuses: Vec<_> = (0..4).filter_map(|i| values_of(values, &format!(":s{i}"))).collect();
    assert_eq!(statuses, ["New", "Started", "WaitingOnExternalSystem", "WaitingForSubExchangesToFinish"].map(s));
    assert!(claim_actions("T", &id, StepId::from_sequence(2), 0, 4, now, lease).is_err());
}

#[test]
fn index_queries() {
    let q = errors_query(&ErrorFilter::default()).expect("query");
    assert_eq!(
        (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
        (INDEX_BY_ERROR, "#gsi5pk = :gpk", None, false)
    );
    assert_eq!(q.values.get(":gpk"), Some(&s("ERRORS")));
    let filter = ErrorFilter {
        classification: Some(ErrorClassification::Business),
        integration_code: Some(IntegrationCode::parse("A").expect("code")),
        since: Some(t("2026-01-02T03:04:05Z")),
        state: Some(handoff_core::error_list::ErrorState::Resolved),
    };
    let q = errors_query(&filter).expect("query");
    assert_eq!(q.key_condition, "#gsi5pk = :gpk AND #gsi5sk >= :since");
    assert_eq!(
        q.filter.as_deref(),
        Some("#classification = :classification AND #integrationCode = :integrationCode AND #state = :state")
    );
    assert_eq!(q.values.get(":state"), Some(&s("resolved")));
    assert_eq!(q.values.get(":since"), Some(&s("2026-01-02T03:04:05.000Z")));
    assert_eq!(q.values.get(":classification"), Some(&s("business")));
    assert_eq!(q.values.get(":integrationCode"), Some(&s("A")));
    assert_eq!(q.names.get("#gsi5sk").map(String::as_str), Some("gsi5sk"));

    let q = due_query(t("2026-01-02T04:00:00Z"));
    assert_eq!(
        (q.index, q.key_condition.as_str(), q.forward),
        (INDEX_BY_DUE, "#gsi4pk = :gpk AND #gsi4sk <= :until", true)
    );
    assert_eq!(q.values.get(":until"), Some(&s("001767326400000~")));
    assert_eq!(q.values.get(":gpk"), Some(&s("TIMERS")));

    let code = IntegrationCode::parse("A").expect("code");
    let both = ExchangeFilter { integration_code: Some(code), status: Some(ExchangeStatus::Failed), parent: None };
    let q = list_query(&both);
    assert_eq!(
        (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
        (INDEX_BY_INTEGRATION, "#gsi1pk = :gpk", Some("#status = :status"), false)
    );
    assert_eq!(q.values.get(":status"), Some(&s("Failed")));
    let q = list_query(&ExchangeFilter::default());
    assert_eq!((q.index, q.filter.as_deref(), q.forward), (INDEX_BY_CREATION, None, false));

    // Sub-exchanges: in index order, the other filters on top.
    let children = ExchangeFilter { parent: Some(ExchangeId::new("p")), ..ExchangeFilter::default() };
    let q = list_query(&children);
    assert_eq!(
        (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
        (INDEX_BY_PARENT, "#gsi6pk = :gpk", None, true)
    );
    assert_eq!(q.values.get(":gpk"), Some(&s("PARENT#p")));
    let q = list_query(&ExchangeFilter { parent: Some(ExchangeId::new("p")), ..both });
    assert_eq!(
        (q.index, q.filter.as_deref(), q.forward),
        (INDEX_BY_PARENT, Some("#status = :status AND #integrationCode = :integrationCode"), true)
    );
    assert_eq!(q.values.get(":integrationCode"), Some(&s("A")));
    let key: Item = HashMap::from([
        ("pk".to_string(), s("EX#c")),
        ("sk".to_string(), s("EXCHANGE")),
        ("gsi6pk".to_string(), s("PARENT#p")),
        ("gsi6sk".to_string(), s("0004#00000001")),
    ]);
    let c = encode_cursor(INDEX_BY_PARENT, &key).expect("encode");
    assert_eq!(decode_cursor(INDEX_BY_PARENT, &c).expect("decode"), key);
    assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());

    // Error cursors carry the byError keys.
    let key: Item = HashMap::from([
        ("pk".to_string(), s("EX#a")),
        ("sk".to_string(), s("ERROR#2026-01-01T00:00:00.000Z#-#0")),
        ("gsi5pk".to_string(), s("ERRORS")),
        ("gsi5sk".to_string(), s("2026-01-01T00:00:00.000Z#a#0")),
    ]);
    let c = encode_cursor(INDEX_BY_ERROR, &key).expect("encode");
    assert_eq!(decode_cursor(INDEX_BY_ERROR, &c).expect("decode"), key);
    assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());
}

#[test]
fn recovery_clears_error_and_completion() {
    let change = ExchangeChange::SetStatus {
        from: vec![ExchangeStatus::Failed],
        to: ExchangeStatus::Started,
        error: None,
        completed_at: None,
    };
    let action =
        exchange_action("T", &ExchangeId::new("e"), &change, 1, t("2026-01-02T03:04:05Z"), None).expect("action");
    let expr = action.update().expect("update").update_expression().to_string();
    assert!(expr.ends_with("REMOVE #error, #completedAt"), "{expr}");
}

/// The preconditions a claim puts on its step.
fn on_step(id: &ExchangeId, step: u32, attempt: u32, now: DateTime<Utc>) -> Vec<Precondition> {
    running_claim(id, StepId::from_sequence(step), attempt, 0, now, now)
        .preconditions()
        .into_iter()
        .filter(|p| matches!(p.item(), ItemRef::Step(..)))
        .collect()
}

#[test]
fn claim_condition() {
    let (update, condition, names, values) = claim_update_parts(
        2,
        t("2026-01-02T03:05:05Z"),
        &on_step(&ExchangeId::new("e"), 1, 2, t("2026-01-02T03:04:05Z")),
    );
    assert_eq!(
        update,
        "SET #claimedAttempt = :attempt, #attempts = :attempt, #leaseUntil = :leaseUntil REMOVE #nextRetryAt"
    );
    assert_eq!(
        condition,
        "#status = :initial AND #completedAttempt < :attempt AND (#claimedAttempt < :attempt OR #leaseUntil < :now)"
    );
    assert_eq!(names.get("#leaseUntil").map(String::as_str), Some("leaseUntil"));
    assert_eq!(values.get(":now"), Some(&n(t("2026-01-02T03:04:05Z").timestamp_millis())));
}

#[test]
fn cancellation_reasons() {
    assert_eq!(cancellation_outcome([Some("None"), Some("ConditionalCheckFailed"), Some("None")]), Ok(()));
    assert_eq!(cancellation_outcome([Some("TransactionConflict"), None]), Err(ErrorKind::Unavailable));
    assert_eq!(cancellation_outcome([Some("ThrottlingError")]), Err(ErrorKind::Unavailable));
    assert_eq!(cancellation_outcome([Some("ValidationError")]), Err(ErrorKind::Fault));
}
