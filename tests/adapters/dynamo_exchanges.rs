//! The exchanges table adapter (DynamoDB): the exchange-repository contract, run on moto and
//! on the in-memory fake, and the adapter's own batching and health.

use super::*;

/// The commit that starts exchange `id` at `now`: step 0 done, `New` → `Started`.
fn started(id: &ExchangeId, now: DateTime<Utc>) -> StepCommit {
    commit(
        id,
        change(0, 1, false, StepStatus::Done, now),
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::New],
            to: ExchangeStatus::Started,
            error: None,
            completed_at: None,
        },
        now,
    )
}

async fn exchange_lifecycle_with_claims_commits_and_conflicts(repo: &dyn ExchangeRepository) {
    repo.health().await.expect("health");
    let ex = exchange("ex-life", "LIFE", at(0));
    let id = ex.exchange_id.clone();
    // More than one BatchWriteItem's worth of steps; writing twice changes nothing.
    repo.create(&ex, &steps(40)).await.expect("create");
    repo.create(&ex, &steps(40)).await.expect("create again");
    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!(detail.exchange, ex);
    assert_eq!(detail.steps, steps(40));
    assert!(detail.logs.is_empty());
    assert!(repo.get(&ExchangeId::new("missing")).await.expect("get").is_none());

    // Start: step 0 done, exchange New -> Started. Applied once, Conflict on replay.
    let start = started(&id, at(1));
    assert_eq!(repo.commit(&start).await.expect("commit"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&start).await.expect("replay"), CommitOutcome::Conflict);

    // A retry of step 1: status stays Initial, attempt 1 recorded; replaying attempt 1 conflicts.
    let mut retry = change(1, 1, false, StepStatus::Initial, at(2));
    retry.last_error = Some(StepError { code: ErrorCode::Unavailable, ..step_error_503(at(2)) });
    retry.next_retry_at = Some(at(6));
    let retry = commit(&id, retry, ExchangeChange::RequireNotFinal, at(2));
    assert_eq!(repo.commit(&retry).await.expect("retry"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&retry).await.expect("retry replay"), CommitOutcome::Conflict);
    let step1 = repo.get_step(&id, StepId::from_sequence(1)).await.expect("get step").expect("step");
    assert_eq!((step1.status, step1.attempts), (StepStatus::Initial, 1));
    assert_eq!(step1.next_retry_at, Some(at(6)));
    assert!(step1.last_error.is_some());

    // Claims of attempt 2: exclusive while the lease lives, free again after it ends.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 1, 0, at(7), at(67)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, 0, at(7), at(67)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, 0, at(8), at(68)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, 0, at(70), at(130)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    // A commit that requires a claim of another attempt conflicts; the claimed one applies.
    let wrong = commit(&id, change(1, 3, true, StepStatus::Done, at(71)), ExchangeChange::RequireNotFinal, at(71));
    assert_eq!(repo.commit(&wrong).await.expect("commit"), CommitOutcome::Conflict);
    let mut done = change(1, 2, true, StepStatus::Done, at(72));
    // A false condition skips steps 2 and 3 in the same transaction.
    done.status = StepStatus::Done;
    let mut done = commit(&id, done, ExchangeChange::RequireNotFinal, at(72));
    done.skip = vec![StepId::from_sequence(2), StepId::from_sequence(3)];
    assert_eq!(repo.commit(&done).await.expect("commit"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&done).await.expect("replay"), CommitOutcome::Conflict);
    let step1 = repo.get_step(&id, StepId::from_sequence(1)).await.expect("get").expect("step");
    assert_eq!(
        (step1.status, step1.attempts, step1.last_error.clone(), step1.next_retry_at),
        (StepStatus::Done, 2, None, None)
    );
    assert_eq!(step1.payload, Some(Payload::raw("out of 1")));
    // A finished step cannot be claimed.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 3, 0, at(200), at(260)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );

    // The exchange fails: later commits conflict, listing by status finds it.
    let error = ExchangeError {
        classification: ErrorClassification::System,
        code: ErrorCode::SystemFault,
        message: "gave up".into(),
        retryable: false,
        step_id: Some(StepId::from_sequence(4)),
        sub_step: Some(SubStep::InvokeQuery),
        at: at(80),
    };
    let fail = commit(
        &id,
        change(4, 1, false, StepStatus::Failed, at(80)),
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Started],
            to: ExchangeStatus::Failed,
            error: Some(error.clone()),
            completed_at: Some(at(80)),
        },
        at(80),
    );
    assert_eq!(repo.commit(&fail).await.expect("fail"), CommitOutcome::Applied);
    let late = commit(&id, change(5, 1, false, StepStatus::Done, at(81)), ExchangeChange::RequireNotFinal, at(81));
    assert_eq!(repo.commit(&late).await.expect("late"), CommitOutcome::Conflict);
    assert_eq!(
        repo.get_step(&id, StepId::from_sequence(5)).await.expect("get").expect("step").status,
        StepStatus::Initial
    );

    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    assert_eq!(detail.exchange.error, Some(error));
    assert_eq!(detail.exchange.completed_at, Some(at(80)));
    assert_eq!(detail.exchange.updated_at, at(80));
    let statuses: Vec<StepStatus> = detail.steps.iter().take(6).map(|s| s.status).collect();
    use StepStatus::*;
    assert_eq!(statuses, vec![Done, Done, Skipped, Skipped, Failed, Initial]);
    let lines: Vec<&str> = detail.logs.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, vec!["step 0 attempt 1", "step 1 attempt 1", "step 1 attempt 2", "step 4 attempt 1"]);

    let failed = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::Failed), parent: None };
    let page = repo.list(&failed, 10, None).await.expect("list");
    assert_eq!(page.items.iter().map(|e| e.exchange_id.as_str()).collect::<Vec<_>>(), vec!["ex-life"]);
    let started =
        ExchangeFilter { integration_code: Some(code("LIFE")), status: Some(ExchangeStatus::Started), parent: None };
    assert!(repo.list(&started, 10, None).await.expect("list").items.is_empty());
    let new = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::New), parent: None };
    assert!(repo.list(&new, 10, None).await.expect("list").items.is_empty());
}

async fn list_is_newest_first_and_paginates(repo: &dyn ExchangeRepository) {
    // 7 of integration A (every other one Failed), 2 of B.
    for i in 0..7 {
        let mut ex = exchange(&format!("a{i}"), "A", at(i * 10));
        if i % 2 == 0 {
            ex.status = ExchangeStatus::Failed;
        }
        repo.create(&ex, &steps(1)).await.expect("create");
    }
    for i in 0..2 {
        repo.create(&exchange(&format!("b{i}"), "B", at(100 + i)), &steps(1)).await.expect("create");
    }

    async fn pages(repo: &dyn ExchangeRepository, filter: &ExchangeFilter, limit: u32) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = repo.list(filter, limit, cursor.as_deref()).await.expect("list");
            out.push(page.items.iter().map(|e| e.exchange_id.to_string()).collect());
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            assert!(out.len() < 20, "runaway pagination");
        }
        out.retain(|p: &Vec<String>| !p.is_empty());
        out
    }
    let by_a = ExchangeFilter { integration_code: Some(code("A")), status: None, parent: None };
    assert_eq!(pages(repo, &by_a, 3).await, vec![vec!["a6", "a5", "a4"], vec!["a3", "a2", "a1"], vec!["a0"]]);
    let a_failed =
        ExchangeFilter { integration_code: Some(code("A")), status: Some(ExchangeStatus::Failed), parent: None };
    assert_eq!(pages(repo, &a_failed, 3).await, vec![vec!["a6", "a4", "a2"], vec!["a0"]]);
    let new = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::New), parent: None };
    assert_eq!(pages(repo, &new, 2).await, vec![vec!["b1", "b0"], vec!["a5", "a3"], vec!["a1"]]);
    let all = pages(repo, &ExchangeFilter::default(), 4).await;
    assert_eq!(all, vec![vec!["b1", "b0", "a6", "a5"], vec!["a4", "a3", "a2", "a1"], vec!["a0"]]);
    // A cursor of another filter is refused.
    let page = repo.list(&by_a, 3, None).await.expect("list");
    assert!(repo.list(&new, 3, page.next_cursor.as_deref()).await.is_err());
}

#[tokio::test]
async fn health_reports_missing_resources_as_faults() {
    let config = sdk().await;
    let repo = DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::new(&config), "no-such-table".into());
    assert!(matches!(repo.health().await, Err(handoff_ports::PortError::Fault { .. })));
    // Nothing listens on port 9: dispatch failures are Unavailable.
    let dead = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region("us-east-1")
        .test_credentials()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let repo = DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::new(&dead), "t".into());
    assert!(matches!(repo.health().await, Err(handoff_ports::PortError::Unavailable { .. })));
}

// ------------------------------------------------------------------ recoveries, errors, timers, tokens

fn failed_error(step: u32, now: DateTime<Utc>) -> ExchangeError {
    ExchangeError {
        classification: ErrorClassification::System,
        code: ErrorCode::Unavailable,
        message: "gave up".into(),
        retryable: true,
        step_id: Some(StepId::from_sequence(step)),
        sub_step: Some(SubStep::InvokeQuery),
        at: now,
    }
}

/// Fails the exchange at generation `recovery` with step `step`'s attempt 1.
async fn fail_exchange(repo: &dyn ExchangeRepository, id: &ExchangeId, step: u32, recovery: u32, now: DateTime<Utc>) {
    let mut fail = commit(
        id,
        change(step, 1, false, StepStatus::Failed, now),
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Started],
            to: ExchangeStatus::Failed,
            error: Some(failed_error(step, now)),
            completed_at: Some(now),
        },
        now,
    );
    fail.recovery = recovery;
    assert_eq!(repo.commit(&fail).await.expect("fail"), CommitOutcome::Applied);
}

async fn recovery_resets_steps_and_fences_older_generations(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-recover", "REC", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(4)).await.expect("create");
    assert_eq!(repo.get(&id).await.expect("get").expect("exists").exchange.recoveries, 0);
    let start = started(&id, at(1));
    assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    // Step 1 done, step 2 retried once (error, retry time), then claimed again.
    let done = commit(&id, change(1, 1, false, StepStatus::Done, at(2)), ExchangeChange::RequireNotFinal, at(2));
    assert_eq!(repo.commit(&done).await.expect("step 1"), CommitOutcome::Applied);
    let mut retry = change(2, 1, false, StepStatus::Initial, at(3));
    retry.last_error = Some(step_error_503(at(3)));
    retry.next_retry_at = Some(at(10));
    retry.started_at = Some(at(2));
    let retry = commit(&id, retry, ExchangeChange::RequireNotFinal, at(3));
    assert_eq!(repo.commit(&retry).await.expect("retry"), CommitOutcome::Applied);
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(2), 2, 0, at(10), at(70)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    // Attempt 2 fails too: the step keeps the start of its first attempt.
    let mut again = change(2, 2, true, StepStatus::Initial, at(11));
    again.last_error = Some(step_error_503(at(11)));
    again.next_retry_at = Some(at(40));
    again.started_at = Some(at(10));
    let again = commit(&id, again, ExchangeChange::RequireNotFinal, at(11));
    assert_eq!(repo.commit(&again).await.expect("attempt 2"), CommitOutcome::Applied);
    let step2 = repo.get(&id).await.expect("get").expect("exists").steps[2].clone();
    assert_eq!((step2.attempts, step2.started_at), (2, Some(at(2))), "the first attempt's start is kept");
    // A claim or commit for another generation is refused even while the exchange runs.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(3), 1, 1, at(10), at(70)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    fail_exchange(repo, &id, 3, 0, at(20)).await;
    // Final: nothing can be claimed any more.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(2), 3, 0, at(200), at(260)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );

    // Recover generation 0 onto version 2, resetting steps 2 and 3, logged on step 2.
    let v2 = IntegrationVersion::number(2).expect("version");
    let asked = LogLine {
        kind: LogType::System,
        line: "Recovery 1 requested by alice".into(),
        timestamp: at(30),
        step_id: StepId::from_sequence(2),
    };
    let recover = RecoveryCommit {
        exchange_id: id.clone(),
        recovery: 0,
        integration_version: Some(v2),
        reset: vec![StepId::from_sequence(2), StepId::from_sequence(3)],
        clear_sub_failures: None,
        timers: vec![Timer { exchange_id: id.clone(), recovery: 1, due: at(7200), kind: TimerKind::Sla }],
        log: Some(asked.clone()),
        now: at(30),
    };
    assert_eq!(repo.recover(&recover).await.expect("recover"), CommitOutcome::Applied);
    assert_eq!(repo.recover(&recover).await.expect("recover again"), CommitOutcome::Conflict, "same generation");
    let due = repo.due_timers(at(7200), 100).await.expect("due timers");
    assert_eq!(
        due.iter().filter(|t| t.exchange_id == id && t.kind == TimerKind::Sla).count(),
        1,
        "stored with the recovery: {due:?}"
    );
    let detail = repo.get(&id).await.expect("get").expect("exists");
    let recovered = &detail.exchange;
    assert_eq!(
        (recovered.status, recovered.recoveries, recovered.integration_version),
        (ExchangeStatus::Started, 1, v2)
    );
    assert_eq!((recovered.error.clone(), recovered.completed_at, recovered.updated_at), (None, None, at(30)));
    let fresh = |step: u32| ExchangeStep { attempts: 0, ..steps(4)[step as usize].clone() };
    assert_eq!(detail.steps[2], fresh(2), "status, attempts, error, retry time, payload, completion reset");
    assert_eq!(detail.steps[3], fresh(3));
    assert!(detail.logs.contains(&asked), "who asked is logged on the resumed step: {:?}", detail.logs);
    assert_eq!((detail.steps[1].status, detail.steps[1].attempts), (StepStatus::Done, 1), "not reset");
    let started = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::Started), parent: None };
    let listed: Vec<String> =
        repo.list(&started, 10, None).await.expect("list").items.iter().map(|e| e.exchange_id.to_string()).collect();
    assert_eq!(listed, vec!["ex-recover"], "the status index follows");

    // Handoffs of generation 0 are stale: their claims and commits change nothing.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(2), 1, 0, at(31), at(91)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    let stale = commit(&id, change(2, 1, false, StepStatus::Done, at(31)), ExchangeChange::RequireNotFinal, at(31));
    assert_eq!(repo.commit(&stale).await.expect("stale"), CommitOutcome::Conflict);
    let mut stale_exchange = StepCommit::new(
        id.clone(),
        0,
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Started],
            to: ExchangeStatus::TimedOut,
            error: None,
            completed_at: Some(at(31)),
        },
        at(31),
    );
    assert_eq!(repo.commit(&stale_exchange).await.expect("stale sla"), CommitOutcome::Conflict);
    // Generation 1 goes ahead: a claim (attempt 1 again after the reset), a commit, and an
    // exchange-only change without a step.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(2), 1, 1, at(32), at(92)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    let mut current =
        commit(&id, change(2, 1, true, StepStatus::Done, at(33)), ExchangeChange::RequireNotFinal, at(33));
    current.recovery = 1;
    assert_eq!(repo.commit(&current).await.expect("current"), CommitOutcome::Applied);
    stale_exchange.recovery = 1;
    assert_eq!(repo.commit(&stale_exchange).await.expect("sla"), CommitOutcome::Applied);
    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!((detail.exchange.status, detail.exchange.recoveries), (ExchangeStatus::TimedOut, 1));
    assert_eq!(detail.steps[2].status, StepStatus::Done);

    // TimedOut recovers too, at its own generation only; a missing step refuses the whole recovery.
    let mut again = RecoveryCommit { recovery: 1, integration_version: None, now: at(40), ..recover.clone() };
    again.reset.push(StepId::from_sequence(9));
    assert_eq!(repo.recover(&again).await.expect("missing step"), CommitOutcome::Conflict);
    assert!(repo.get_step(&id, StepId::from_sequence(9)).await.expect("get").is_none(), "no phantom step");
    again.reset.pop();
    assert_eq!(repo.recover(&again).await.expect("recover 1"), CommitOutcome::Applied);
    assert_eq!(repo.recover(&again).await.expect("recover 1 again"), CommitOutcome::Conflict);
    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!((detail.exchange.status, detail.exchange.recoveries), (ExchangeStatus::Started, 2));
    assert_eq!(detail.exchange.integration_version, v2, "kept when not given");
}

async fn commits_require_done_steps_and_store_errors_and_timers(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-extras", "EXTRA", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(3)).await.expect("create");
    // A callback for step 2 must not overtake step 1's call.
    let mut callback =
        commit(&id, change(2, 1, false, StepStatus::Done, at(1)), ExchangeChange::RequireNotFinal, at(1));
    callback.require_done = Some(StepId::from_sequence(1));
    assert_eq!(repo.commit(&callback).await.expect("early"), CommitOutcome::Conflict);
    let call = commit(&id, change(1, 1, false, StepStatus::Done, at(2)), ExchangeChange::RequireNotFinal, at(2));
    assert_eq!(repo.commit(&call).await.expect("call"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&callback).await.expect("callback"), CommitOutcome::Applied);

    // An exchange-only commit with an error and a timer; get() shows neither.
    let mut only = StepCommit::new(id.clone(), 0, ExchangeChange::RequireNotFinal, at(3));
    only.errors = vec![error_record(&id, "EXTRA", None, ErrorClassification::Business, at(3))];
    only.timers = vec![Timer { exchange_id: id.clone(), recovery: 0, due: at(100), kind: TimerKind::Sla }];
    assert_eq!(repo.commit(&only).await.expect("exchange only"), CommitOutcome::Applied);
    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!(detail.steps.len(), 3);
    assert_eq!(listed_records(repo).await, only.errors);
    assert_eq!(repo.due_timers(at(100), 10).await.expect("timers"), only.timers);
    // A refused commit stores neither.
    let mut refused = only.clone();
    refused.recovery = 5;
    refused.errors[0].at = at(4);
    refused.timers[0].due = at(50);
    assert_eq!(repo.commit(&refused).await.expect("refused"), CommitOutcome::Conflict);
    assert_eq!(listed_records(repo).await, only.errors);
    assert_eq!(repo.due_timers(at(100), 10).await.expect("timers"), only.timers);
}

fn step_error_503(when: DateTime<Utc>) -> StepError {
    StepError {
        classification: ErrorClassification::System,
        code: ErrorCode::Unavailable,
        message: "503".into(),
        at: when,
    }
}

/// The failures the error list shows, newest first.
async fn listed_records(repo: &dyn ExchangeRepository) -> Vec<ErrorRecord> {
    let page = repo.errors(&ErrorFilter::default(), 100, None).await.expect("errors");
    page.items.into_iter().map(|e| e.record).collect()
}

fn error_record(
    id: &ExchangeId,
    integration: &str,
    step: Option<u32>,
    classification: ErrorClassification,
    when: DateTime<Utc>,
) -> ErrorRecord {
    let retryable = classification == ErrorClassification::System;
    ErrorRecord {
        exchange_id: id.clone(),
        integration_code: code(integration),
        step_id: step.map(StepId::from_sequence),
        sub_step: step.map(|_| SubStep::InvokeQuery),
        classification,
        code: if retryable { ErrorCode::Unavailable } else { ErrorCode::InvalidRecord },
        message: format!("{classification:?} at {when}"),
        retryable,
        exchange_failed: step.is_none(),
        recovery: 0,
        at: when,
    }
}

async fn errors_are_newest_first_and_filtered(repo: &dyn ExchangeRepository) {
    // Two exchanges of two integrations: step 1 fails at 10 s (+10 s for the second) and
    // again 30 s later; the second time the exchange as a whole fails too.
    let mut entries: Vec<StoredError> = Vec::new();
    for (i, (name, integration)) in [("ex-e1", "ERR_A"), ("ex-e2", "ERR_B")].into_iter().enumerate() {
        let ex = exchange(name, integration, at(0));
        let id = ex.exchange_id.clone();
        repo.create(&ex, &steps(2)).await.expect("create");
        for round in 0..2_i64 {
            let when = at(10 + 30 * round + 10 * i as i64);
            let mut c = StepCommit::new(id.clone(), 0, ExchangeChange::RequireNotFinal, when);
            c.record_error(error_record(&id, integration, Some(1), ErrorClassification::System, when));
            if round == 1 {
                c.record_error(error_record(&id, integration, None, ErrorClassification::Business, when));
            }
            assert_eq!(repo.commit(&c).await.expect("commit"), CommitOutcome::Applied);
            for record in c.errors {
                match entries.iter().position(|e| e.error_id == ErrorId::of(&record)) {
                    Some(i) => {
                        let earlier = entries.remove(i);
                        entries.push(earlier.recurred(record));
                    }
                    None => entries.push(StoredError::first(record)),
                }
            }
        }
    }
    // One entry per failing step, counted; newest (last failure) first, then by id.
    entries.sort_by(|a, b| (b.record.at, &b.error_id).cmp(&(a.record.at, &a.error_id)));
    let page = repo.errors(&ErrorFilter::default(), 100, None).await.expect("errors");
    assert_eq!(page.items, entries);
    assert_eq!(page.items.iter().map(|e| e.occurrences).collect::<Vec<_>>(), vec![2, 1, 2, 1]);
    assert_eq!(page.next_cursor, None);

    // Pages of 1, following cursors.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = repo.errors(&ErrorFilter::default(), 1, cursor.as_deref()).await.expect("page");
        assert!(page.items.len() <= 1);
        paged.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, entries);

    let business = ErrorFilter { classification: Some(ErrorClassification::Business), ..ErrorFilter::default() };
    let page = repo.errors(&business, 1, None).await.expect("business");
    let of_business = |e: &&StoredError| e.record.classification == ErrorClassification::Business;
    assert_eq!(page.items, entries.iter().filter(of_business).take(1).cloned().collect::<Vec<_>>());
    let rest = repo.errors(&business, 10, page.next_cursor.as_deref()).await.expect("business rest");
    assert_eq!(rest.items, entries.iter().filter(of_business).skip(1).cloned().collect::<Vec<_>>());

    // `since` is inclusive and reads the last failure.
    let since = ErrorFilter { since: Some(at(50)), ..ErrorFilter::default() };
    let page = repo.errors(&since, 100, None).await.expect("since");
    assert_eq!(page.items, entries.iter().filter(|e| e.record.at >= at(50)).cloned().collect::<Vec<_>>());
    assert_eq!(page.items.len(), 2);
    let narrow = ErrorFilter {
        classification: Some(ErrorClassification::System),
        integration_code: Some(code("ERR_A")),
        since: Some(at(11)),
        state: Some(ErrorState::Open),
    };
    let page = repo.errors(&narrow, 100, None).await.expect("narrow");
    let listed: Vec<(String, DateTime<Utc>)> =
        page.items.iter().map(|e| (e.error_id.to_string(), e.record.at)).collect();
    assert_eq!(listed, vec![("ex-e1.1".to_string(), at(40))]);
    assert!(repo.errors(&ErrorFilter::default(), 10, Some("garbage!")).await.is_err());
}

/// An entry is resolved once, while open; its re-processing is recorded once per
/// resolution; a new failure of its step opens it again with its history.
async fn error_entries_are_resolved_once_and_reopen_when_the_step_fails_again(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-r1", "ERR_R", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(2)).await.expect("create");
    let mut c = StepCommit::new(id.clone(), 0, ExchangeChange::RequireNotFinal, at(5));
    c.record_error(error_record(&id, "ERR_R", Some(1), ErrorClassification::Business, at(5)));
    assert_eq!(repo.commit(&c).await.expect("commit"), CommitOutcome::Applied);
    let error_id = ErrorId::of(&c.errors[0]);
    let unknown = ErrorId::parse("ex-nobody.1").expect("id");
    assert_eq!(repo.error(&unknown).await.expect("read"), None);
    let open = repo.error(&error_id).await.expect("read").expect("listed");
    assert_eq!((open.state, open.occurrences, open.resolution.clone()), (ErrorState::Open, 1, None));

    let resolution = Resolution { by: "alice".into(), note: "fixed the postcode".into(), at: at(10) };
    assert!(!repo.resolve_error(&unknown, &resolution).await.expect("unknown"), "nothing to resolve");
    let reprocessing = Reprocessing { resolution_at: at(10), at: at(20), outcome: "recovered".into() };
    assert!(!repo.record_reprocessing(&error_id, &reprocessing).await.expect("open"), "not resolved yet");
    assert!(repo.resolve_error(&error_id, &resolution).await.expect("resolve"));
    let second = Resolution { by: "bob".into(), note: "me too".into(), at: at(11) };
    assert!(!repo.resolve_error(&error_id, &second).await.expect("again"), "resolved once");
    let resolved = repo.error(&error_id).await.expect("read").expect("listed");
    assert_eq!((resolved.state, resolved.resolution.as_ref()), (ErrorState::Resolved, Some(&resolution)));
    let state = |state| ErrorFilter { state: Some(state), ..ErrorFilter::default() };
    let listed = repo.errors(&state(ErrorState::Resolved), 100, None).await.expect("resolved");
    assert!(listed.items.iter().any(|e| e.error_id == error_id));
    let listed = repo.errors(&state(ErrorState::Open), 100, None).await.expect("open");
    assert!(listed.items.iter().all(|e| e.error_id != error_id));

    let stale = Reprocessing { resolution_at: at(9), ..reprocessing.clone() };
    assert!(!repo.record_reprocessing(&error_id, &stale).await.expect("stale"), "only for the current resolution");
    assert!(repo.record_reprocessing(&error_id, &reprocessing).await.expect("record"));
    assert!(!repo.record_reprocessing(&error_id, &reprocessing).await.expect("twice"), "once per resolution");
    let done = repo.error(&error_id).await.expect("read").expect("listed");
    assert_eq!(done.reprocessing.as_ref(), Some(&reprocessing));
    assert_eq!(done.pending_resolution(), None);

    // The step fails again (a later generation): open again, counted, history kept.
    let mut again = StepCommit::new(id.clone(), 0, ExchangeChange::RequireNotFinal, at(30));
    again.record_error(ErrorRecord {
        message: "still 422".into(),
        ..error_record(&id, "ERR_R", Some(1), ErrorClassification::Business, at(30))
    });
    assert_eq!(repo.commit(&again).await.expect("commit"), CommitOutcome::Applied);
    let reopened = repo.error(&error_id).await.expect("read").expect("listed");
    assert_eq!(reopened, done.recurred(again.errors[0].clone()));
    assert_eq!(
        (reopened.state, reopened.occurrences, reopened.record.message.as_str()),
        (ErrorState::Open, 2, "still 422")
    );
    assert!(repo.resolve_error(&error_id, &second).await.expect("resolve the re-opened entry"));
}

async fn due_timers_are_taken_once(repo: &dyn ExchangeRepository) {
    let timer = |id: &ExchangeId, due: DateTime<Utc>, kind: TimerKind| Timer {
        exchange_id: id.clone(),
        recovery: 0,
        due,
        kind,
    };
    let mut armed = Vec::new();
    for name in ["ex-t1", "ex-t2"] {
        let ex = exchange(name, "TIMERS", at(0));
        let id = ex.exchange_id.clone();
        repo.create(&ex, &steps(3)).await.expect("create");
        let retry = HandoffMessage {
            exchange_id: id.clone(),
            integration_code: code("TIMERS"),
            integration_version: IntegrationVersion::NULL,
            step_id: StepId::from_sequence(2),
            sub_step: SubStep::DeliverRest,
            attempt: 2,
            input: Some(Payload::raw("{\"big\":12345678901234567}")),
            parameters: serde_json::json!({"deep": [[{"a": null}]]}),
            not_before: Some(at(3600)),
            recovery: 0,
            parent: None,
            requested_by: None,
            reexecution: false,
        };
        let offset = if name == "ex-t1" { 0 } else { 1 };
        let mut c = StepCommit::new(id.clone(), 0, ExchangeChange::RequireNotFinal, at(1));
        c.timers = vec![
            timer(&id, at(600 + offset), TimerKind::Sla),
            timer(&id, at(60 + offset), TimerKind::StepTimeout { step_id: StepId::from_sequence(1) }),
            timer(&id, at(3600 + offset), TimerKind::Handoff { message: Box::new(retry) }),
        ];
        assert_eq!(repo.commit(&c).await.expect("commit"), CommitOutcome::Applied);
        armed.extend(c.timers);
    }
    armed.sort_by_key(|t| t.due);
    assert!(repo.due_timers(at(59), 10).await.expect("none due").is_empty());
    assert_eq!(repo.due_timers(at(600), 10).await.expect("due"), armed[..3].to_vec(), "oldest first, bound included");
    assert_eq!(repo.due_timers(at(10_000), 10).await.expect("all"), armed);
    assert_eq!(repo.due_timers(at(10_000), 2).await.expect("limited"), armed[..2].to_vec());

    // One sweeper wins.
    assert!(repo.take_timer(&armed[0]).await.expect("take"));
    assert!(!repo.take_timer(&armed[0]).await.expect("take again"));
    assert_eq!(repo.due_timers(at(10_000), 10).await.expect("after take"), armed[1..].to_vec());
    // Re-arming replaces the timer (and puts it back on the index); the old one can no longer be taken.
    let rearmed = Timer { due: at(700), ..armed[1].clone() };
    let mut c = StepCommit::new(rearmed.exchange_id.clone(), 0, ExchangeChange::RequireNotFinal, at(2));
    c.timers = vec![rearmed.clone()];
    assert_eq!(repo.commit(&c).await.expect("re-arm"), CommitOutcome::Applied);
    assert!(!repo.take_timer(&armed[1]).await.expect("stale take"));
    let due = repo.due_timers(at(700), 10).await.expect("re-armed");
    assert!(due.contains(&rearmed) && !due.contains(&armed[1]), "{due:?}");
    assert!(repo.take_timer(&rearmed).await.expect("take re-armed"));
    // A timer that was never stored cannot be taken (and is not created).
    let unknown = timer(&ExchangeId::new("ex-none"), at(5), TimerKind::Sla);
    assert!(!repo.take_timer(&unknown).await.expect("unknown"));
    assert!(!repo.due_timers(at(10_000), 10).await.expect("all").contains(&unknown));
}

async fn callback_tokens_are_used_once(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-token", "TOKENS", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(6)).await.expect("create");
    assert_eq!(repo.commit(&started(&id, at(0))).await.expect("start"), CommitOutcome::Applied);
    let token = |hash: &str, step: u32, expires_at: Option<DateTime<Utc>>| CallbackToken {
        hash: hash.into(),
        exchange_id: id.clone(),
        integration_code: code("TOKENS"),
        integration_version: IntegrationVersion::number(3).expect("version"),
        step_id: StepId::from_sequence(step),
        sub_step: SubStep::InvokeQuery,
        recovery: 1,
        parameters: serde_json::json!({"n": 12345678901234_i64, "deep": [[{"a": null}]]}),
        expires_at,
        parent: None,
    };
    let open = token("h-open", 4, None);
    let timed = token("h-timed", 5, Some(at(100)));
    let late = token("h-late", 3, None);
    let unknown = token("h-unknown", 2, None);
    repo.put_token(&open).await.expect("put");
    repo.put_token(&timed).await.expect("put timed");
    repo.put_token(&late).await.expect("put late");
    assert!(matches!(repo.put_token(&open).await, Err(PortError::Fault { .. })), "a hash is stored once");

    let outbox = |hash: &str| {
        let message = HandoffMessage {
            exchange_id: id.clone(),
            integration_code: code("TOKENS"),
            integration_version: IntegrationVersion::number(3).expect("version"),
            step_id: StepId::from_sequence(4),
            sub_step: SubStep::ReceiveNotification,
            attempt: 1,
            input: Some(Payload::raw(format!("{{\"token\": \"{hash}\"}}"))),
            parameters: serde_json::json!({}),
            not_before: None,
            recovery: 1,
            parent: None,
            requested_by: None,
            reexecution: false,
        };
        Timer {
            exchange_id: id.clone(),
            recovery: 1,
            due: at(60),
            kind: TimerKind::Handoff { message: Box::new(message) },
        }
    };

    assert_eq!(repo.usable_token("h-open", at(1)).await.expect("read"), Some(open.clone()));
    assert!(repo.consume_token(&open, at(1), &outbox("h-open")).await.expect("consume"));
    assert_eq!(repo.usable_token("h-open", at(2)).await.expect("read used"), None);
    assert!(!repo.consume_token(&open, at(2), &outbox("again")).await.expect("consume again"), "used once");
    // The wait's timeout no longer fails a step whose callback was accepted.
    let timeout = |step: u32, recovery: u32, now: DateTime<Utc>| {
        let mut c = commit(&id, change(step, 1, false, StepStatus::Failed, now), ExchangeChange::RequireNotFinal, now);
        c.recovery = recovery;
        c.unless_callback_accepted = true;
        c
    };
    assert_eq!(repo.commit(&timeout(4, 0, at(3))).await.expect("timeout"), CommitOutcome::Conflict);
    assert_eq!(
        repo.get_step(&id, StepId::from_sequence(4)).await.expect("get").map(|s| s.status),
        Some(StepStatus::Initial)
    );
    // A timeout that came first wins: the callback is refused and stores nothing.
    assert_eq!(repo.commit(&timeout(3, 0, at(3))).await.expect("timeout first"), CommitOutcome::Applied);
    assert!(!repo.consume_token(&late, at(4), &outbox("h-late")).await.expect("after the timeout"));
    assert!(repo.usable_token("h-late", at(4)).await.expect("read").is_some(), "not used up by the refusal");
    // The outbox entry of the accepted callback is due; the refused one was never stored.
    let due = repo.due_timers(at(60), 10).await.expect("due timers");
    assert_eq!(due, vec![outbox("h-open")]);
    assert!(repo.take_timer(&due[0]).await.expect("take"));

    // Expired tokens are refused, before expiry they work.
    assert_eq!(repo.usable_token("h-timed", at(100)).await.expect("read at expiry"), None);
    assert!(!repo.consume_token(&timed, at(100), &outbox("h-timed")).await.expect("at expiry"));
    assert_eq!(repo.usable_token("h-timed", at(99)).await.expect("read before expiry"), Some(timed.clone()));
    assert!(repo.consume_token(&timed, at(99), &outbox("h-timed")).await.expect("before expiry"));

    assert_eq!(repo.usable_token("h-unknown", at(1)).await.expect("unknown"), None);
    assert!(!repo.consume_token(&unknown, at(1), &outbox("h-unknown")).await.expect("consume unknown"));
    assert_eq!(repo.usable_token("h-unknown", at(1)).await.expect("still unknown"), None, "no item created");

    // A recovery's reset clears the mark: the new wait's timeout fails the step again.
    fail_exchange(repo, &id, 1, 0, at(200)).await;
    assert_eq!(repo.recover(&plain_recovery(&id, 4, at(201))).await.expect("recover"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&timeout(4, 1, at(202))).await.expect("new wait's timeout"), CommitOutcome::Applied);
}

/// Counts the batch operations a DynamoDB client executes (each `send`, not HTTP retries).
#[derive(Debug, Clone, Default)]
struct BatchCounter {
    writes: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
}

impl BatchCounter {
    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

impl aws_sdk_dynamodb::config::Intercept for BatchCounter {
    fn name(&self) -> &'static str {
        "BatchCounter"
    }

    fn read_before_execution(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let input = context.input();
        if input.downcast_ref::<aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput>().is_some() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        if input.downcast_ref::<aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput>().is_some() {
            self.gets.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A repository on a fresh table whose client counts its batch operations.
async fn counted_exchange_repo() -> (DynamoExchangeRepository, BatchCounter) {
    let config = sdk().await;
    let table = exchanges_table().await;
    let counter = BatchCounter::default();
    let counted = aws_sdk_dynamodb::config::Builder::from(&config).interceptor(counter.clone()).build();
    (DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::from_conf(counted), table), counter)
}

fn child(id: &str, integration: &str, parent: &ExchangeId, step: u32, index: u32, created: DateTime<Utc>) -> Exchange {
    Exchange {
        parent: Some(ParentLink { exchange_id: parent.clone(), step_id: StepId::from_sequence(step), index, depth: 1 }),
        ..exchange(id, integration, created)
    }
}

/// A sub-exchange ends (from `New` or `Started`), counting itself on `parent`'s step `step`.
fn finish(id: &ExchangeId, parent: &ExchangeId, step: u32, completed: bool, now: DateTime<Utc>) -> StepCommit {
    let (to, error) = if completed {
        (ExchangeStatus::Completed, None)
    } else {
        (ExchangeStatus::Failed, Some(failed_error(1, now)))
    };
    let mut commit = StepCommit::new(
        id.clone(),
        0,
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::New, ExchangeStatus::Started],
            to,
            error,
            completed_at: Some(now),
        },
        now,
    );
    commit.result = completed.then(|| Payload::raw(format!("result of {id}")));
    commit.tally = Some(ParentTally { parent: parent.clone(), step_id: StepId::from_sequence(step), completed });
    commit
}

async fn counts(repo: &dyn ExchangeRepository, id: &ExchangeId, step: u32) -> Option<SubExchangeCounts> {
    repo.get_step(id, StepId::from_sequence(step)).await.expect("get step").expect("step exists").sub_exchanges
}

fn sub(total: u32, completed: u32, failed: u32) -> Option<SubExchangeCounts> {
    Some(SubExchangeCounts { total, completed, failed })
}

async fn sub_exchanges_count_once_on_the_parent_step_and_store_results(repo: &dyn ExchangeRepository) {
    let parent = exchange("ex-parent", "PARENT", at(0));
    let pid = parent.exchange_id.clone();
    repo.create(&parent, &steps(3)).await.expect("create parent");
    assert_eq!(counts(repo, &pid, 1).await, None, "not a subflow step yet");
    repo.set_sub_exchange_total(&pid, StepId::from_sequence(1), 3).await.expect("total");
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 0, 0));
    assert!(matches!(
        repo.set_sub_exchange_total(&pid, StepId::from_sequence(9), 3).await,
        Err(PortError::Fault { .. })
    ));
    assert!(repo.get_step(&pid, StepId::from_sequence(9)).await.expect("get").is_none(), "no phantom step");

    let children: Vec<(Exchange, Vec<ExchangeStep>)> =
        (0..3).map(|i| (child(&format!("ex-child-{i}"), "CHILD", &pid, 1, i, at(1)), steps(2))).collect();
    repo.create_many(&children).await.expect("create children");
    let ids: Vec<ExchangeId> = children.iter().map(|(e, _)| e.exchange_id.clone()).collect();
    for id in &ids {
        let start = started(id, at(2));
        assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    }

    // A result stored without a status change (the check becomes a conditional update).
    let mut partial =
        commit(&ids[0], change(1, 1, false, StepStatus::Done, at(3)), ExchangeChange::RequireNotFinal, at(3));
    partial.result = Some(Payload::raw("partial"));
    assert_eq!(repo.commit(&partial).await.expect("partial"), CommitOutcome::Applied);
    let detail = repo.get(&ids[0]).await.expect("get").expect("exists");
    assert_eq!(
        (detail.exchange.status, detail.exchange.result),
        (ExchangeStatus::Started, Some(Payload::raw("partial")))
    );
    assert_eq!(repo.commit(&partial).await.expect("replay"), CommitOutcome::Conflict);

    // Child 0 completes: counted once, its result stored; the replay changes nothing.
    let done = finish(&ids[0], &pid, 1, true, at(4));
    assert_eq!(repo.commit(&done).await.expect("complete"), CommitOutcome::Applied);
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 1, 0));
    assert_eq!(repo.commit(&done).await.expect("replay"), CommitOutcome::Conflict);
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 1, 0), "a duplicate does not count");
    let completed = repo.get(&ids[0]).await.expect("get").expect("exists").exchange;
    assert_eq!(completed.status, ExchangeStatus::Completed);
    assert_eq!(completed.result, Some(Payload::raw("result of ex-child-0")));
    assert_eq!(completed.parent.as_ref().map(|p| p.index), Some(0));

    // Child 1 fails; a conflicting second ending (a timeout racing it) does not count.
    assert_eq!(repo.commit(&finish(&ids[1], &pid, 1, false, at(5))).await.expect("fail"), CommitOutcome::Applied);
    let mut timeout = finish(&ids[1], &pid, 1, false, at(6));
    timeout.exchange = ExchangeChange::SetStatus {
        from: vec![ExchangeStatus::New, ExchangeStatus::Started],
        to: ExchangeStatus::TimedOut,
        error: None,
        completed_at: Some(at(6)),
    };
    assert_eq!(repo.commit(&timeout).await.expect("timeout"), CommitOutcome::Conflict);
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 1, 1));
    let failed = repo.get(&ids[1]).await.expect("get").expect("exists").exchange;
    assert_eq!((failed.status, failed.result), (ExchangeStatus::Failed, None));

    // A tally on a missing parent step refuses the whole commit: the child stays running.
    assert_eq!(repo.commit(&finish(&ids[2], &pid, 9, true, at(7))).await.expect("no step"), CommitOutcome::Conflict);
    assert!(repo.get_step(&pid, StepId::from_sequence(9)).await.expect("get").is_none(), "no phantom step");
    assert_eq!(repo.get(&ids[2]).await.expect("get").expect("exists").exchange.status, ExchangeStatus::Started);
    assert_eq!(repo.commit(&finish(&ids[2], &pid, 1, true, at(8))).await.expect("complete"), CommitOutcome::Applied);
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 2, 1));
    assert!(counts(repo, &pid, 1).await.is_some_and(|c| c.all_final()));

    // Setting the total again, claims and commits of the step keep the counts.
    repo.set_sub_exchange_total(&pid, StepId::from_sequence(1), 3).await.expect("total again");
    assert_eq!(counts(repo, &pid, 1).await, sub(3, 2, 1));
    let start = started(&pid, at(9));
    assert_eq!(repo.commit(&start).await.expect("start parent"), CommitOutcome::Applied);
    assert_eq!(
        repo.claim(&pid, StepId::from_sequence(1), 1, 0, at(10), at(70)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    let collect = commit(&pid, change(1, 1, true, StepStatus::Done, at(11)), ExchangeChange::RequireNotFinal, at(11));
    assert_eq!(repo.commit(&collect).await.expect("collect"), CommitOutcome::Applied);
    let step = repo.get_step(&pid, StepId::from_sequence(1)).await.expect("get").expect("exists");
    assert_eq!((step.status, step.sub_exchanges), (StepStatus::Done, sub(3, 2, 1)));
    let detail = repo.get(&pid).await.expect("get").expect("exists");
    assert_eq!(detail.steps[1].sub_exchanges, sub(3, 2, 1), "get reads the counts too");
    assert_eq!(detail.exchange.parent, None);
}

async fn recovery_clears_sub_failures_and_keeps_completions(repo: &dyn ExchangeRepository) {
    let parent = exchange("ex-redrive", "PARENT", at(0));
    let pid = parent.exchange_id.clone();
    repo.create(&parent, &steps(3)).await.expect("create parent");
    let start = started(&pid, at(1));
    assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    repo.set_sub_exchange_total(&pid, StepId::from_sequence(1), 5).await.expect("total");
    let children: Vec<(Exchange, Vec<ExchangeStep>)> =
        (0..5).map(|i| (child(&format!("ex-redrive-{i}"), "CHILD", &pid, 1, i, at(2)), steps(2))).collect();
    repo.create_many(&children).await.expect("create children");
    let ids: Vec<ExchangeId> = children.iter().map(|(e, _)| e.exchange_id.clone()).collect();
    for (i, id) in ids.iter().enumerate().take(4) {
        let outcome = repo.commit(&finish(id, &pid, 1, i < 2, at(3))).await.expect("finish");
        assert_eq!(outcome, CommitOutcome::Applied);
    }
    assert_eq!(counts(repo, &pid, 1).await, sub(5, 2, 2));

    // The parent fails on its subflow step: the step's own failure keeps the counts.
    fail_exchange(repo, &pid, 1, 0, at(4)).await;
    let step = repo.get_step(&pid, StepId::from_sequence(1)).await.expect("get").expect("exists");
    assert_eq!((step.status, step.sub_exchanges), (StepStatus::Failed, sub(5, 2, 2)));

    // Re-drive: the step is reset and its failures cleared in one update (a missing step to
    // clear refuses the whole recovery).
    let mut recover = RecoveryCommit {
        log: None,
        exchange_id: pid.clone(),
        recovery: 0,
        integration_version: None,
        reset: vec![StepId::from_sequence(1)],
        clear_sub_failures: Some(StepId::from_sequence(9)),
        timers: Vec::new(),
        now: at(5),
    };
    assert_eq!(repo.recover(&recover).await.expect("missing step"), CommitOutcome::Conflict);
    assert!(repo.get_step(&pid, StepId::from_sequence(9)).await.expect("get").is_none(), "no phantom step");
    assert_eq!(counts(repo, &pid, 1).await, sub(5, 2, 2), "nothing written");
    recover.clear_sub_failures = Some(StepId::from_sequence(1));
    assert_eq!(repo.recover(&recover).await.expect("recover"), CommitOutcome::Applied);
    let step = repo.get_step(&pid, StepId::from_sequence(1)).await.expect("get").expect("exists");
    assert_eq!((step.status, step.attempts, step.sub_exchanges), (StepStatus::Initial, 0, sub(5, 2, 0)));

    // The last child fails; the parent fails elsewhere and is recovered clearing step 1's
    // failures without resetting it (an update of its own).
    assert_eq!(repo.commit(&finish(&ids[4], &pid, 1, false, at(6))).await.expect("fail"), CommitOutcome::Applied);
    assert_eq!(counts(repo, &pid, 1).await, sub(5, 2, 1));
    fail_exchange(repo, &pid, 2, 1, at(7)).await;
    let again = RecoveryCommit { recovery: 1, reset: vec![StepId::from_sequence(2)], now: at(8), ..recover };
    assert_eq!(repo.recover(&again).await.expect("recover again"), CommitOutcome::Applied);
    let detail = repo.get(&pid).await.expect("get").expect("exists");
    assert_eq!((detail.exchange.status, detail.exchange.recoveries), (ExchangeStatus::Started, 2));
    assert_eq!(detail.steps[1].sub_exchanges, sub(5, 2, 0));
    assert_eq!(detail.steps[2].status, StepStatus::Initial);
}

#[tokio::test]
async fn create_many_packs_batches_and_statuses_find_them() {
    let (repo, counter) = counted_exchange_repo().await;
    let pid = ExchangeId::new("ex-many-parent");
    let many: Vec<(Exchange, Vec<ExchangeStep>)> =
        (0..60).map(|i| (child(&format!("ex-many-{i:02}"), "MANY", &pid, 2, i, at(i64::from(i))), steps(5))).collect();
    repo.create_many(&[]).await.expect("nothing");
    assert_eq!(counter.writes(), 0);
    repo.create_many(&many).await.expect("create many");
    assert_eq!(counter.writes(), 360_usize.div_ceil(25), "items of several exchanges share a batch");
    for i in [0, 17, 59] {
        let detail = repo.get(&many[i].0.exchange_id).await.expect("get").expect("exists");
        assert_eq!((&detail.exchange, &detail.steps), (&many[i].0, &many[i].1));
    }
    // Written again (duplicates included): nothing changes.
    let twice: Vec<_> = many.iter().take(3).chain(many.iter().take(3)).cloned().collect();
    repo.create_many(&twice).await.expect("create again");
    assert_eq!(repo.get(&many[1].0.exchange_id).await.expect("get").expect("exists").exchange, many[1].0);

    // Statuses: every id found (in the order asked), missing ones skipped, 100 keys a request.
    let start = started(&many[5].0.exchange_id, at(100));
    assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    let mut ask = Vec::new();
    for (i, (ex, _)) in many.iter().enumerate() {
        ask.push(ex.exchange_id.clone());
        if i < 50 {
            ask.push(ExchangeId::new(format!("ex-missing-{i}")));
        }
    }
    ask.push(many[0].0.exchange_id.clone());
    let gets = counter.gets();
    let found = repo.statuses(&ask).await.expect("statuses");
    assert_eq!(counter.gets() - gets, 2, "110 distinct keys");
    let expected: Vec<(ExchangeId, ExchangeStatus)> = many
        .iter()
        .enumerate()
        .map(|(i, (ex, _))| {
            (ex.exchange_id.clone(), if i == 5 { ExchangeStatus::Started } else { ExchangeStatus::New })
        })
        .collect();
    assert_eq!(found, expected);
    assert!(repo.statuses(&[]).await.expect("none").is_empty());
    assert!(repo.statuses(&[ExchangeId::new("ex-missing-0")]).await.expect("missing").is_empty());
}

async fn list_pages(repo: &dyn ExchangeRepository, filter: &ExchangeFilter, limit: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = repo.list(filter, limit, cursor.as_deref()).await.expect("list");
        out.push(page.items.iter().map(|e| e.exchange_id.to_string()).collect());
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(out.len() < 30, "runaway pagination");
    }
    out.retain(|p: &Vec<String>| !p.is_empty());
    out
}

async fn list_by_parent_is_in_index_order_and_paginates(repo: &dyn ExchangeRepository) {
    let (p, q) = (ExchangeId::new("ex-p"), ExchangeId::new("ex-q"));
    let mut all = Vec::new();
    // Step 4's children are created newest first: the index order is not the time order.
    for i in 0..7_u32 {
        let mut ex = child(&format!("p4-{i}"), if i % 2 == 1 { "CB" } else { "CA" }, &p, 4, i, at(100 - i64::from(i)));
        if i % 3 == 0 {
            ex.status = ExchangeStatus::Failed;
        }
        all.push((ex, steps(1)));
    }
    for i in 0..2 {
        all.push((child(&format!("p2-{i}"), "CA", &p, 2, i, at(200)), steps(1)));
        all.push((child(&format!("q-{i}"), "CA", &q, 4, i, at(0)), steps(1)));
    }
    all.push((exchange("ex-p", "PARENT", at(0)), steps(5)));
    repo.create_many(&all).await.expect("create");

    let children = ExchangeFilter { parent: Some(p.clone()), ..ExchangeFilter::default() };
    assert_eq!(
        list_pages(repo, &children, 3).await,
        vec![vec!["p2-0", "p2-1", "p4-0"], vec!["p4-1", "p4-2", "p4-3"], vec!["p4-4", "p4-5", "p4-6"]]
    );
    assert_eq!(list_pages(repo, &children, 100).await.concat().len(), 9);
    let failed = ExchangeFilter { status: Some(ExchangeStatus::Failed), ..children.clone() };
    assert_eq!(list_pages(repo, &failed, 2).await, vec![vec!["p4-0", "p4-3"], vec!["p4-6"]]);
    let cb = ExchangeFilter { integration_code: Some(code("CB")), ..children.clone() };
    assert_eq!(list_pages(repo, &cb, 2).await, vec![vec!["p4-1", "p4-3"], vec!["p4-5"]]);
    let q_children = ExchangeFilter { parent: Some(q), ..ExchangeFilter::default() };
    assert_eq!(list_pages(repo, &q_children, 10).await, vec![vec!["q-0", "q-1"]]);
    let none = ExchangeFilter { parent: Some(ExchangeId::new("ex-none")), ..ExchangeFilter::default() };
    let page = repo.list(&none, 10, None).await.expect("list");
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    // The parent itself is no sub-exchange; the cursor of one filter is refused by another.
    let page = repo.list(&children, 3, None).await.expect("list");
    assert!(page.items.iter().all(|e| e.parent.as_ref().is_some_and(|l| l.exchange_id == p)));
    assert!(repo.list(&ExchangeFilter::default(), 3, page.next_cursor.as_deref()).await.is_err());
}

async fn conflicts_name_the_preconditions_that_failed(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-why", "WHY", at(0));
    let id = ex.exchange_id.clone();
    let step = StepId::from_sequence;
    repo.create(&ex, &steps(4)).await.expect("create");
    // A callback ahead of its call: the step it requires done is not.
    let mut early = commit(&id, change(2, 1, false, StepStatus::Done, at(1)), ExchangeChange::RequireNotFinal, at(1));
    early.require_done = Some(step(1));
    let conflict = repo.try_commit(&early).await.expect("commit").expect_err("step 1 is not done");
    assert_eq!(conflict.failed, vec![Precondition::StepDone { exchange: id.clone(), step: step(1) }]);
    assert!(!conflict.is_stale());
    // A live claim of the attempt: the step's preconditions are named (DynamoDB names items).
    let claim = |now: i64, requires: ExchangeChange| ClaimRequest {
        exchange_id: id.clone(),
        step: step(3),
        attempt: 1,
        recovery: 0,
        requires,
        now: at(now),
        lease_until: at(now + 60),
    };
    assert_eq!(repo.try_claim(&claim(2, ExchangeChange::RequireNotFinal)).await.expect("claim"), Ok(()));
    let conflict =
        repo.try_claim(&claim(3, ExchangeChange::RequireNotFinal)).await.expect("claim").expect_err("claimed");
    assert_eq!(
        conflict.failed,
        vec![
            Precondition::StepOpen { exchange: id.clone(), step: step(3), attempt: 1 },
            Precondition::Claimable { exchange: id.clone(), step: step(3), attempt: 1, now: at(3) },
        ]
    );
    // Once the exchange is final, what is still in flight finds it stale.
    let failed = ExchangeChange::SetStatus {
        from: ExchangeStatus::not_final(),
        to: ExchangeStatus::Failed,
        error: None,
        completed_at: None,
    };
    let fail = commit(&id, change(1, 1, false, StepStatus::Failed, at(4)), failed, at(4));
    assert_eq!(repo.try_commit(&fail).await.expect("commit"), Ok(()));
    let late = commit(&id, change(2, 1, false, StepStatus::Done, at(5)), ExchangeChange::RequireNotFinal, at(5));
    let conflict = repo.try_commit(&late).await.expect("commit").expect_err("final");
    assert_eq!(conflict.failed, vec![Precondition::ExchangeNotFinal { exchange: id.clone(), recovery: 0 }]);
    assert!(conflict.is_stale());
}

async fn a_failed_step_of_a_completed_exchange_is_reset_only_for_a_reexecution(repo: &dyn ExchangeRepository) {
    let ex = exchange("ex-again", "AGAIN", at(0));
    let id = ex.exchange_id.clone();
    let step = StepId::from_sequence;
    repo.create(&ex, &steps(4)).await.expect("create");
    let mut failed = change(2, 3, false, StepStatus::Failed, at(1));
    failed.payload = None;
    assert_eq!(repo.try_commit(&commit(&id, failed, ExchangeChange::RequireNotFinal, at(1))).await.expect("c"), Ok(()));
    let log = |n: i64| LogLine {
        kind: LogType::System,
        line: "Re-executed by ops".into(),
        timestamp: at(n),
        step_id: step(2),
    };
    let again = ReexecutionCommit { exchange_id: id.clone(), recovery: 0, step: step(2), log: log(2), now: at(2) };
    // Not Completed yet: refused, naming the exchange.
    let conflict = repo.try_reexecute(&again).await.expect("write").expect_err("running");
    assert_eq!(
        conflict.failed,
        vec![Precondition::ExchangeIn { exchange: id.clone(), statuses: vec![ExchangeStatus::Completed], recovery: 0 }]
    );
    let complete = ExchangeChange::SetStatus {
        from: ExchangeStatus::not_final(),
        to: ExchangeStatus::Completed,
        error: None,
        completed_at: Some(at(3)),
    };
    assert_eq!(
        repo.try_commit(&commit(&id, change(3, 1, false, StepStatus::Done, at(3)), complete, at(3))).await.expect("c"),
        Ok(())
    );
    let done_step = ReexecutionCommit { step: step(3), ..again.clone() };
    let conflict = repo.try_reexecute(&done_step).await.expect("write").expect_err("not failed");
    assert_eq!(conflict.failed, vec![Precondition::StepFailed { exchange: id.clone(), step: step(3) }]);
    assert_eq!(repo.try_reexecute(&again).await.expect("write"), Ok(()));
    let detail = repo.get(&id).await.expect("read").expect("exists");
    let reset = &detail.steps[2];
    assert_eq!((reset.status, reset.attempts, reset.last_error.is_none()), (StepStatus::Initial, 0, true));
    assert!(detail.logs.iter().any(|l| l.line == "Re-executed by ops"), "{:?}", detail.logs);
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed, "the exchange stays Completed");
    // Its claim requires the exchange Completed; a running exchange's claim is refused.
    let claim = |requires| ClaimRequest {
        exchange_id: id.clone(),
        step: step(2),
        attempt: 1,
        recovery: 0,
        requires,
        now: at(4),
        lease_until: at(64),
    };
    let stale = repo.try_claim(&claim(ExchangeChange::RequireNotFinal)).await.expect("claim").expect_err("final");
    assert!(stale.is_stale());
    let completed = ExchangeChange::RequireIn(vec![ExchangeStatus::Completed]);
    assert_eq!(repo.try_claim(&claim(completed.clone())).await.expect("claim"), Ok(()));
    let done = commit(&id, change(2, 1, true, StepStatus::Done, at(5)), completed, at(5));
    assert_eq!(repo.try_commit(&done).await.expect("commit"), Ok(()));
    assert_eq!(repo.get(&id).await.expect("read").expect("exists").steps[2].status, StepStatus::Done);
    assert!(repo.try_reexecute(&again).await.expect("write").is_err(), "done now: nothing to re-execute");
}

/// Recovering `id` from generation 0 at step `step`, nothing else.
fn plain_recovery(id: &ExchangeId, step: u32, now: DateTime<Utc>) -> RecoveryCommit {
    RecoveryCommit {
        exchange_id: id.clone(),
        recovery: 0,
        integration_version: None,
        reset: vec![StepId::from_sequence(step)],
        clear_sub_failures: None,
        timers: vec![],
        log: None,
        now,
    }
}

/// Retention: a finished exchange goes with its steps, errors and timers; one recovered
/// since (another generation) stays; deleting twice finds nothing.
async fn finished_exchanges_are_deleted_with_everything_under_them(repo: &dyn ExchangeRepository) {
    let kept = exchange("ex-kept", "RET", at(0));
    repo.create(&kept, &steps(2)).await.expect("create");
    let ex = exchange("ex-gone", "RET", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(30)).await.expect("create");
    let mut start = started(&id, at(1));
    start.errors = vec![error_record(&id, "RET", Some(0), ErrorClassification::Business, at(1))];
    start.timers = vec![Timer { exchange_id: id.clone(), recovery: 0, due: at(100), kind: TimerKind::Sla }];
    assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    // Running: not deletable.
    assert_eq!(repo.delete_finished(&id, 0).await.expect("delete running"), CommitOutcome::Conflict);
    fail_exchange(repo, &id, 1, 0, at(2)).await;
    // Recovered (generation 1) and failed again: the generation-0 retention no longer applies.
    let recover = plain_recovery(&id, 1, at(3));
    assert_eq!(repo.recover(&recover).await.expect("recover"), CommitOutcome::Applied);
    fail_exchange(repo, &id, 1, 1, at(4)).await;
    assert_eq!(repo.delete_finished(&id, 0).await.expect("stale retention"), CommitOutcome::Conflict);
    assert!(repo.get(&id).await.expect("get").is_some());

    assert_eq!(repo.delete_finished(&id, 1).await.expect("delete"), CommitOutcome::Applied);
    assert!(repo.get(&id).await.expect("get").is_none());
    assert!(repo.get_step(&id, StepId::from_sequence(29)).await.expect("get step").is_none());
    let errors = repo.errors(&ErrorFilter::default(), 100, None).await.expect("errors").items;
    assert!(errors.iter().all(|e| e.error_id.exchange_id != id), "{errors:?}");
    assert!(repo.due_timers(at(1000), 100).await.expect("timers").iter().all(|t| t.exchange_id != id));
    assert_eq!(repo.delete_finished(&id, 1).await.expect("delete again"), CommitOutcome::Conflict);
    assert_eq!(
        repo.recover(&RecoveryCommit { recovery: 1, ..recover }).await.expect("recover"),
        CommitOutcome::Conflict
    );
    // Other exchanges are untouched.
    assert_eq!(repo.get(&kept.exchange_id).await.expect("get").expect("kept").steps.len(), 2);
}

/// The exchange-repository contract: each case runs against the DynamoDB adapter on moto
/// and against the in-memory fake the use-case tests rely on, so the two cannot drift.
macro_rules! exchange_contract {
    ($($case:ident),* $(,)?) => {
        mod exchange_contract_on_moto {
            $(#[tokio::test]
            async fn $case() {
                super::$case(&super::exchange_repo().await).await
            })*
        }
        mod exchange_contract_in_memory {
            $(#[tokio::test]
            async fn $case() {
                super::$case(&handoff_ports::memory::MemoryExchangeRepository::new()).await
            })*
        }
    };
}

exchange_contract!(
    conflicts_name_the_preconditions_that_failed,
    exchange_lifecycle_with_claims_commits_and_conflicts,
    list_is_newest_first_and_paginates,
    recovery_resets_steps_and_fences_older_generations,
    commits_require_done_steps_and_store_errors_and_timers,
    errors_are_newest_first_and_filtered,
    error_entries_are_resolved_once_and_reopen_when_the_step_fails_again,
    due_timers_are_taken_once,
    callback_tokens_are_used_once,
    sub_exchanges_count_once_on_the_parent_step_and_store_results,
    recovery_clears_sub_failures_and_keeps_completions,
    list_by_parent_is_in_index_order_and_paginates,
    finished_exchanges_are_deleted_with_everything_under_them,
    a_failed_step_of_a_completed_exchange_is_reset_only_for_a_reexecution,
);

/// A deletion interrupted after its first write (the exchange marked): no recovery revives
/// the half-deleted exchange, and the deletion repeated finishes it.
#[tokio::test]
async fn an_interrupted_deletion_blocks_recovery_and_finishes_when_repeated() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = exchanges_table().await;
    let repo = DynamoExchangeRepository::new(client.clone(), table.clone());
    let ex = exchange("ex-half", "RET", at(0));
    let id = ex.exchange_id.clone();
    repo.create(&ex, &steps(3)).await.expect("create");
    let start = started(&id, at(1));
    assert_eq!(repo.commit(&start).await.expect("start"), CommitOutcome::Applied);
    fail_exchange(&repo, &id, 1, 0, at(2)).await;
    // What the first write of a deletion does, and then the crash.
    client
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("EX#{id}")))
        .key("sk", AttributeValue::S("EXCHANGE".into()))
        .update_expression("SET deletingAt = :now")
        .expression_attribute_values(":now", AttributeValue::S(at(3).to_rfc3339()))
        .send()
        .await
        .expect("mark");
    let recover = plain_recovery(&id, 1, at(4));
    assert_eq!(repo.recover(&recover).await.expect("recover"), CommitOutcome::Conflict);
    assert_eq!(repo.delete_finished(&id, 0).await.expect("delete"), CommitOutcome::Applied);
    assert!(repo.get(&id).await.expect("get").is_none());
    assert!(repo.get_step(&id, StepId::from_sequence(2)).await.expect("get step").is_none());
}
