//! Conditional writes: the core's preconditions compiled into condition expressions, and the
//! transactions of claims, commits, recoveries and token use, each action with the
//! preconditions it encodes.

use super::*;
pub(super) fn build_fault(e: impl std::fmt::Display) -> PortError {
    error::fault(SERVICE, format!("cannot build request: {e}"))
}

pub(super) fn status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Initial => "Initial",
        StepStatus::Skipped => "Skipped",
        StepStatus::Failed => "Failed",
        StepStatus::Done => "Done",
    }
}

/// Compiles the preconditions a write requires of its item into its condition expression:
/// one fragment per [`Precondition`], joined with `AND`. The one place that turns the core's
/// stated preconditions into DynamoDB conditions.
pub(crate) fn condition(e: &mut Expr, required: &[Precondition]) -> String {
    required.iter().map(|p| compile(e, p)).collect::<Vec<_>>().join(" AND ")
}

pub(super) fn compile(e: &mut Expr, precondition: &Precondition) -> String {
    use Precondition as P;
    match precondition {
        P::ExchangeNotFinal { recovery, .. } => {
            format!("{} AND {}", e.status_in("s", &ExchangeStatus::not_final()), recovery_condition(e, *recovery))
        }
        P::ExchangeIn { statuses, recovery, .. } => {
            // An exchange being deleted (its retention ran out) is in no status any more:
            // a recovery must not revive what is half gone.
            let deleting = e.name(DELETING_AT);
            format!(
                "{} AND {} AND attribute_not_exists({deleting})",
                e.status_in("from", statuses),
                recovery_condition(e, *recovery)
            )
        }
        P::StepOpen { attempt, .. } => {
            let status = e.name("status");
            let completed = e.name("completedAttempt");
            let initial = e.value("initial", s(status_name(StepStatus::Initial)));
            let attempt = e.value("attempt", n(attempt));
            format!("{status} = {initial} AND {completed} < {attempt}")
        }
        P::ClaimedBy { attempt, .. } => {
            let claimed = e.name("claimedAttempt");
            format!("{claimed} = {}", e.value("attempt", n(attempt)))
        }
        P::Claimable { attempt, now, .. } => {
            let claimed = e.name("claimedAttempt");
            let lease = e.name("leaseUntil");
            let attempt = e.value("attempt", n(attempt));
            let now = e.value("now", n(now.timestamp_millis()));
            format!("({claimed} < {attempt} OR {lease} < {now})")
        }
        P::StepInitial { .. } => {
            let status = e.name("status");
            format!("{status} = {}", e.value("initial", s(status_name(StepStatus::Initial))))
        }
        P::StepDone { .. } => {
            let status = e.name("status");
            format!("{status} = {}", e.value("done", s(status_name(StepStatus::Done))))
        }
        P::StepFailed { .. } => {
            let status = e.name("status");
            format!("{status} = {}", e.value("failed", s(status_name(StepStatus::Failed))))
        }
        P::StepExists { .. } => format!("attribute_exists({})", e.name("pk")),
        P::NoCallbackAccepted { .. } => format!("attribute_not_exists({})", e.name(CALLBACK_ACCEPTED_AT)),
        P::TokenUsable { now, .. } => {
            let pk = e.name("pk");
            let used = e.name("usedAt");
            let expires = e.name("tokenExpiresAt");
            let now = e.value("now", n(now.timestamp_millis()));
            format!(
                "attribute_exists({pk}) AND attribute_not_exists({used}) \
                 AND (attribute_not_exists({expires}) OR {expires} > {now})"
            )
        }
    }
}

/// A single-item conditional update as its parts: update expression, condition, names, values.
pub(crate) type UpdateParts = (String, String, HashMap<String, String>, HashMap<String, AttributeValue>);

/// A commit that cannot be one transaction is a terminal fault.
fn shape_fault(e: handoff_core::commit::CommitShapeError) -> PortError {
    error::fault(SERVICE, e.to_string())
}

/// One action of a transaction and the preconditions its condition encodes (what a
/// cancellation of it means).
pub(crate) type Action = (TransactWriteItem, Vec<Precondition>);

#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(super) fn items(actions: Vec<Action>) -> Vec<TransactWriteItem> {
    actions.into_iter().map(|(item, _)| item).collect()
}

/// The conditional update of the committed step, under its own preconditions.
#[cfg(test)]
pub(crate) fn step_update(table: &str, exchange_id: &ExchangeId, change: &StepChange) -> PortResult<Update> {
    step_update_when(table, exchange_id, change, &change.preconditions(exchange_id))
}

/// The conditional update of the committed step under `required` (its item's preconditions).
fn step_update_when(
    table: &str,
    exchange_id: &ExchangeId,
    change: &StepChange,
    required: &[Precondition],
) -> PortResult<Update> {
    if change.attempt == 0 {
        return Err(error::fault(SERVICE, "attempt numbers start at 1"));
    }
    let mut e = Expr::default();
    e.set("status", "status", s(status_name(change.status)));
    e.set("attempts", "attempt", n(change.attempt));
    let completed = e.name("completedAttempt");
    e.set.push(format!("{completed} = :attempt"));
    e.set("maxAttempts", "maxAttempts", n(change.max_attempts));
    if let Some(payload) = &change.payload {
        e.set("payload", "payload", to_av(payload)?);
    }
    match &change.last_error {
        Some(err) => e.set("lastError", "lastError", to_av(err)?),
        None => e.remove("lastError"),
    }
    match &change.next_retry_at {
        Some(at) => e.set("nextRetryAt", "nextRetryAt", to_av(at)?),
        None => e.remove("nextRetryAt"),
    }
    if let Some(at) = &change.started_at {
        // The step's start is its first attempt's: later attempts keep it.
        let started = e.name("startedAt");
        e.value("startedAt", to_av(at)?);
        e.set.push(format!("{started} = if_not_exists({started}, :startedAt)"));
    }
    if let Some(at) = &change.completed_at {
        e.set("completedAt", "completedAt", to_av(at)?);
    }
    let logs = e.name("logs");
    e.value("empty", AttributeValue::L(Vec::new()));
    e.value("logs", to_av(&change.logs)?);
    e.set.push(format!("{logs} = list_append(if_not_exists({logs}, :empty), :logs)"));

    let condition = condition(&mut e, required);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, change.step_id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// Marks a still-`Initial` step `Skipped`.
pub(crate) fn skip_update(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set("status", "skipped", s("Skipped"));
    let condition = condition(&mut e, &[Precondition::StepInitial { exchange: exchange_id.clone(), step }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// `recoveries = :recovery`; an item without `recoveries` (written before recoveries
/// existed) is at generation 0.
pub(super) fn recovery_condition(e: &mut Expr, recovery: u32) -> String {
    let name = e.name("recoveries");
    let value = e.value("recovery", n(recovery));
    if recovery == 0 {
        format!("(attribute_not_exists({name}) OR {name} = {value})")
    } else {
        format!("{name} = {value}")
    }
}

/// The check of the exchange item alone: `required` (its status and generation).
pub(super) fn exchange_check(
    table: &str,
    exchange_id: &ExchangeId,
    required: &[Precondition],
) -> PortResult<TransactWriteItem> {
    let mut e = Expr::default();
    let condition = condition(&mut e, required);
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(exchange_key(exchange_id)))
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// The action on the exchange item (always requiring generation `recovery`), storing
/// `result` on it if given: a condition check, or a conditional update.
pub(crate) fn exchange_action(
    table: &str,
    exchange_id: &ExchangeId,
    change: &ExchangeChange,
    recovery: u32,
    now: DateTime<Utc>,
    result: Option<&Payload>,
) -> PortResult<TransactWriteItem> {
    match change {
        ExchangeChange::RequireNotFinal | ExchangeChange::RequireIn(_) => {
            let required = [change.precondition(exchange_id, recovery)];
            let Some(result) = result else { return exchange_check(table, exchange_id, &required) };
            // Same condition as the check, but writing the result.
            let mut e = Expr::default();
            let condition = condition(&mut e, &[change.precondition(exchange_id, recovery)]);
            e.set("result", "result", to_av(result)?);
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(exchange_key(exchange_id)))
                .update_expression(e.update_expression())
                .condition_expression(condition)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .build()
                .map_err(build_fault)?;
            Ok(TransactWriteItem::builder().update(update).build())
        }
        ExchangeChange::SetStatus { from, to, error, completed_at } => {
            if from.is_empty() {
                return Err(error::fault(SERVICE, "SetStatus needs at least one status to move from"));
            }
            let mut e = Expr::default();
            let condition = condition(&mut e, &[change.precondition(exchange_id, recovery)]);
            e.set("status", "to", s(to.name()));
            e.set("gsi2pk", "gsi2pk", s(status_gsi_pk(*to)));
            e.set("updatedAt", "now", to_av(&now)?);
            match error {
                Some(err) => e.set("error", "error", to_av(err)?),
                // A running exchange carries no error of an earlier run (recovery).
                None if !to.is_final() => e.remove("error"),
                None => {}
            }
            match completed_at {
                Some(at) => e.set("completedAt", "completedAt", to_av(at)?),
                None if !to.is_final() => e.remove("completedAt"),
                None => {}
            }
            if let Some(result) = result {
                e.set("result", "result", to_av(result)?);
            }
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(exchange_key(exchange_id)))
                .update_expression(e.update_expression())
                .condition_expression(condition)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .build()
                .map_err(build_fault)?;
            Ok(TransactWriteItem::builder().update(update).build())
        }
    }
}

/// Checks that a step is `Done`.
pub(crate) fn done_check(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<TransactWriteItem> {
    let mut e = Expr::default();
    let condition = condition(&mut e, &[Precondition::StepDone { exchange: exchange_id.clone(), step }]);
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// Counts one more final sub-exchange on the parent's step (which must exist).
pub(crate) fn tally_update(table: &str, tally: &ParentTally) -> PortResult<Update> {
    let mut e = Expr::default();
    let counter = if tally.completed { SUB_COMPLETED } else { SUB_FAILED };
    e.add(counter, "one", n(1));
    let condition =
        condition(&mut e, &[Precondition::StepExists { exchange: tally.parent.clone(), step: tally.step_id }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(&tally.parent, tally.step_id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

pub(super) fn put_action(table: &str, item: Item) -> PortResult<TransactWriteItem> {
    let put = Put::builder().table_name(table).set_item(Some(item)).build().map_err(build_fault)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// All actions of one commit, in order: the step, the skips, the `require_done` check, the
/// error puts, the timer puts, the exchange (with the result), the parent tally.
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn commit_actions(table: &str, commit: &StepCommit) -> PortResult<Vec<TransactWriteItem>> {
    commit_plan(table, commit).map(items)
}

/// [`commit_actions`] with the preconditions each action encodes.
pub(crate) fn commit_plan(table: &str, commit: &StepCommit) -> PortResult<Vec<Action>> {
    let id = &commit.exchange_id;
    commit.check_shape().map_err(shape_fault)?;
    let skips = commit.skipped_steps();
    let mut actions: Vec<Action> = Vec::with_capacity(commit.write_count());
    if let Some(change) = &commit.step {
        let required = commit.step_preconditions();
        let update = TransactWriteItem::builder().update(step_update_when(table, id, change, &required)?).build();
        actions.push((update, required));
    }
    for step in skips {
        let update = TransactWriteItem::builder().update(skip_update(table, id, step)?).build();
        actions.push((update, vec![Precondition::StepInitial { exchange: id.clone(), step }]));
    }
    if let Some(step) = commit.require_done {
        actions.push((done_check(table, id, step)?, vec![Precondition::StepDone { exchange: id.clone(), step }]));
    }
    for record in &commit.errors {
        actions.push((TransactWriteItem::builder().update(error_upsert(table, record)?).build(), Vec::new()));
    }
    for timer in &commit.timers {
        actions.push((put_action(table, timer_to_item(id, timer)?)?, Vec::new()));
    }
    let exchange = exchange_action(table, id, &commit.exchange, commit.recovery, commit.now, commit.result.as_ref())?;
    actions.push((exchange, vec![commit.exchange.precondition(id, commit.recovery)]));
    if let Some(tally) = &commit.tally {
        let update = TransactWriteItem::builder().update(tally_update(table, tally)?).build();
        actions.push((update, vec![Precondition::StepExists { exchange: tally.parent.clone(), step: tally.step_id }]));
    }
    Ok(actions)
}

/// The claim: the conditional step update, then the exchange check.
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn claim_actions(
    table: &str,
    id: &ExchangeId,
    step: StepId,
    attempt: u32,
    recovery: u32,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> PortResult<Vec<TransactWriteItem>> {
    claim_plan(table, &running_claim(id, step, attempt, recovery, now, lease_until)).map(items)
}

/// The claim of a running exchange's step (as the tests state it).
#[cfg(test)]
pub(crate) fn running_claim(
    id: &ExchangeId,
    step: StepId,
    attempt: u32,
    recovery: u32,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> ClaimRequest {
    ClaimRequest {
        exchange_id: id.clone(),
        step,
        attempt,
        recovery,
        requires: ExchangeChange::RequireNotFinal,
        now,
        lease_until,
    }
}

/// [`claim_actions`] with the preconditions each action encodes.
pub(crate) fn claim_plan(table: &str, request: &ClaimRequest) -> PortResult<Vec<Action>> {
    let (id, step, attempt) = (&request.exchange_id, request.step, request.attempt);
    if attempt == 0 {
        return Err(error::fault(SERVICE, "attempt numbers start at 1"));
    }
    let (on_step, on_exchange): (Vec<Precondition>, Vec<Precondition>) =
        request.preconditions().into_iter().partition(|p| p.item() == ItemRef::Step(id.clone(), step));
    let claim =
        conditional_update(table, step_key(id, step), claim_update_parts(attempt, request.lease_until, &on_step))?;
    Ok(vec![(claim, on_step), (exchange_check(table, id, &on_exchange)?, on_exchange)])
}

/// A re-execution: the check that the exchange is still Completed at its generation, and
/// the reset of the failed step (conditional on its failure), with who asked logged.
pub(crate) fn reexecute_plan(table: &str, commit: &ReexecutionCommit) -> PortResult<Vec<Action>> {
    let id = &commit.exchange_id;
    let (on_step, on_exchange): (Vec<Precondition>, Vec<Precondition>) =
        commit.preconditions().into_iter().partition(|p| p.item() == ItemRef::Step(id.clone(), commit.step));
    let reset = reset_update_when(table, id, commit.step, false, Some(&commit.log), &on_step)?;
    Ok(vec![
        (exchange_check(table, id, &on_exchange)?, on_exchange),
        (TransactWriteItem::builder().update(reset).build(), on_step),
    ])
}

/// A transaction's update of `key` from its expression parts (update, condition, names, values).
pub(super) fn conditional_update(
    table: &str,
    key: Item,
    (update, condition, names, values): UpdateParts,
) -> PortResult<TransactWriteItem> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key))
        .update_expression(update)
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// A recovery: the exchange update, then one reset per step (the step whose sub-exchange
/// failures are cleared within its reset, or on its own after the resets).
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn recover_actions(table: &str, commit: &RecoveryCommit) -> PortResult<Vec<TransactWriteItem>> {
    recover_plan(table, commit).map(items)
}

/// [`recover_actions`] with the preconditions each action encodes.
pub(crate) fn recover_plan(table: &str, commit: &RecoveryCommit) -> PortResult<Vec<Action>> {
    let id = &commit.exchange_id;
    commit.check_shape().map_err(shape_fault)?;
    let reset = commit.reset_steps();
    let clear_alone = commit.clear_alone();
    let recoverable = Precondition::ExchangeIn {
        exchange: id.clone(),
        statuses: ExchangeEvent::RecoveryRequested.applies_in(),
        recovery: commit.recovery,
    };
    let mut e = Expr::default();
    let condition = condition(&mut e, std::slice::from_ref(&recoverable));
    e.set("status", "to", s(ExchangeStatus::Started.name()));
    e.set("gsi2pk", "gsi2pk", s(status_gsi_pk(ExchangeStatus::Started)));
    e.set("updatedAt", "now", to_av(&commit.now)?);
    let recoveries = e.name("recoveries");
    e.value("zero", n(0));
    e.value("one", n(1));
    e.set.push(format!("{recoveries} = if_not_exists({recoveries}, :zero) + :one"));
    if let Some(version) = &commit.integration_version {
        e.set("integrationVersion", "integrationVersion", to_av(version)?);
    }
    e.remove("error");
    e.remove("completedAt");
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(exchange_key(id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    let exists = |step: StepId| vec![Precondition::StepExists { exchange: id.clone(), step }];
    let mut actions: Vec<Action> = Vec::with_capacity(commit.write_count());
    actions.push((TransactWriteItem::builder().update(update).build(), vec![recoverable]));
    for step in reset {
        let clear = commit.clear_sub_failures == Some(step);
        let log = commit.log.as_ref().filter(|line| line.step_id == step);
        let update = TransactWriteItem::builder().update(reset_update(table, id, step, clear, log)?).build();
        actions.push((update, exists(step)));
    }
    if let Some(step) = clear_alone {
        let update = TransactWriteItem::builder().update(clear_sub_failures_update(table, id, step)?).build();
        actions.push((update, exists(step)));
    }
    for timer in &commit.timers {
        actions.push((put_action(table, timer_to_item(id, timer)?)?, Vec::new()));
    }
    Ok(actions)
}

/// A step back to `Initial` with no attempts, claims, errors, retry time or output; with
/// `clear_sub_failures`, its failed sub-exchanges count zero again. The sub-exchange total
/// and completions stay.
pub(crate) fn reset_update(
    table: &str,
    exchange_id: &ExchangeId,
    step: StepId,
    clear_sub_failures: bool,
    log: Option<&LogLine>,
) -> PortResult<Update> {
    // Never create a step that does not exist.
    let exists = [Precondition::StepExists { exchange: exchange_id.clone(), step }];
    reset_update_when(table, exchange_id, step, clear_sub_failures, log, &exists)
}

/// [`reset_update`] under the step's preconditions `required`.
fn reset_update_when(
    table: &str,
    exchange_id: &ExchangeId,
    step: StepId,
    clear_sub_failures: bool,
    log: Option<&LogLine>,
    required: &[Precondition],
) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set("status", "initial", s(status_name(StepStatus::Initial)));
    e.value("zero", n(0));
    let mut zeroed = vec!["attempts", "completedAttempt", "claimedAttempt", "leaseUntil"];
    if clear_sub_failures {
        zeroed.push(SUB_FAILED);
    }
    for attribute in zeroed {
        let name = e.name(attribute);
        e.set.push(format!("{name} = :zero"));
    }
    for attribute in ["nextRetryAt", "lastError", "startedAt", "completedAt", "payload", CALLBACK_ACCEPTED_AT] {
        e.remove(attribute);
    }
    if let Some(line) = log {
        let logs = e.name("logs");
        e.value("empty", AttributeValue::L(Vec::new()));
        e.value("logs", to_av(&vec![line])?);
        e.set.push(format!("{logs} = list_append(if_not_exists({logs}, :empty), :logs)"));
    }
    let condition = condition(&mut e, required);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// A step's failed sub-exchanges count zero again (the step must exist).
pub(crate) fn clear_sub_failures_update(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set(SUB_FAILED, "zero", n(0));
    let condition = condition(&mut e, &[Precondition::StepExists { exchange: exchange_id.clone(), step }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// The preconditions of the actions whose conditions failed (`codes` are the cancellation
/// reasons, one per action in order).
pub(crate) fn conflict_of(codes: &[Option<&str>], required: Vec<Vec<Precondition>>) -> Conflict {
    let failed = codes
        .iter()
        .zip(required)
        .filter(|(code, _)| **code == Some("ConditionalCheckFailed"))
        .flat_map(|(_, required)| required)
        .collect();
    Conflict { failed }
}

/// What a cancelled transaction means.
pub(crate) fn cancellation_outcome<'a>(reasons: impl IntoIterator<Item = Option<&'a str>>) -> Result<(), ErrorKind> {
    let codes: Vec<&str> = reasons.into_iter().map(|c| c.unwrap_or("None")).collect();
    if codes.contains(&"ValidationError") {
        return Err(ErrorKind::Fault);
    }
    if codes.contains(&"ConditionalCheckFailed") {
        return Ok(());
    }
    Err(ErrorKind::Unavailable)
}

/// The claim update: see [`ExchangeRepository::claim`].
pub(crate) fn claim_update_parts(attempt: u32, lease_until: DateTime<Utc>, required: &[Precondition]) -> UpdateParts {
    let mut e = Expr::default();
    e.set("claimedAttempt", "attempt", n(attempt));
    let attempts = e.name("attempts");
    e.set.push(format!("{attempts} = :attempt"));
    e.set("leaseUntil", "leaseUntil", n(lease_until.timestamp_millis()));
    // A claimed attempt is running, not waiting: a stale `nextRetryAt` would tell a
    // duplicate message that this attempt already failed.
    e.remove("nextRetryAt");
    let condition = condition(&mut e, required);
    (e.update_expression(), condition, e.names, e.values)
}

/// The sub-exchange total of a step: see [`ExchangeRepository::set_sub_exchange_total`]. The
/// counts start at zero but are kept if there are some already (a re-run of the step, or
/// sub-exchanges that ended before it got here): only `ADD`s and a recovery change them.
pub(crate) fn sub_total_parts(exchange_id: &ExchangeId, step: StepId, total: u32) -> UpdateParts {
    let mut e = Expr::default();
    e.set(SUB_TOTAL, "total", n(total));
    e.value("zero", n(0));
    for counter in [SUB_COMPLETED, SUB_FAILED] {
        let name = e.name(counter);
        e.set.push(format!("{name} = if_not_exists({name}, :zero)"));
    }
    // Never create a step that does not exist.
    let condition = condition(&mut e, &[Precondition::StepExists { exchange: exchange_id.clone(), step }]);
    (e.update_expression(), condition, e.names, e.values)
}

/// The token consumption, its outbox timer and the mark on the waiting step, one
/// transaction: see [`ExchangeRepository::consume_token`].
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn consume_token_actions(
    table: &str,
    token: &CallbackToken,
    now: DateTime<Utc>,
    outbox: &Timer,
) -> PortResult<Vec<TransactWriteItem>> {
    consume_token_plan(table, token, now, outbox).map(items)
}

/// [`consume_token_actions`] with the preconditions each action encodes.
pub(crate) fn consume_token_plan(
    table: &str,
    token: &CallbackToken,
    now: DateTime<Utc>,
    outbox: &Timer,
) -> PortResult<Vec<Action>> {
    let usable = Precondition::TokenUsable { hash: token.hash.clone(), now };
    let waiting = Precondition::StepInitial { exchange: token.exchange_id.clone(), step: token.step_id };
    let mut e = Expr::default();
    e.set(CALLBACK_ACCEPTED_AT, "now", n(now.timestamp_millis()));
    let condition = condition(&mut e, std::slice::from_ref(&waiting));
    let mark = (e.update_expression(), condition, e.names, e.values);
    Ok(vec![
        (conditional_update(table, token_key(&token.hash), consume_token_parts(&token.hash, now))?, vec![usable]),
        (put_action(table, timer_to_item(&outbox.exchange_id, outbox)?)?, Vec::new()),
        // The waiting step, still waiting (its timeout has not failed it), is marked: its
        // timeout can no longer fail it.
        (conditional_update(table, step_key(&token.exchange_id, token.step_id), mark)?, vec![waiting]),
    ])
}

/// The token consumption: see [`ExchangeRepository::consume_token`].
pub(crate) fn consume_token_parts(hash: &str, now: DateTime<Utc>) -> UpdateParts {
    let mut e = Expr::default();
    e.set("usedAt", "now", n(now.timestamp_millis()));
    let condition = condition(&mut e, &[Precondition::TokenUsable { hash: hash.to_string(), now }]);
    (e.update_expression(), condition, e.names, e.values)
}

/// The first write of a deletion (update expression, condition, names, values): marks the
/// exchange `deletingAt` if [`handoff_core::commit::deletion_preconditions`] hold. From then
/// on no recovery applies; the rest of its items go next.
pub(crate) fn deletion_mark_parts(
    exchange_id: &ExchangeId,
    recovery: u32,
    now: DateTime<Utc>,
) -> PortResult<UpdateParts> {
    let mut e = Expr::default();
    let condition = condition(&mut e, &handoff_core::commit::deletion_preconditions(exchange_id, recovery));
    e.set(DELETING_AT, "now", to_av(&now)?);
    Ok((e.update_expression(), condition, e.names, e.values))
}
