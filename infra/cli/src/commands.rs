//! Each verb: the API calls it makes and what it prints.

use crate::client::{encode, resolve_token, resolve_url, Api, CliError, CliResult};
use crate::render::{self, status_cell};
use crate::{
    Cli, ErrorCommand, EventCommand, ExchangeCommand, ExchangeFilter, Group, IntegrationCommand, MappingCommand, Output,
};
use chrono::{DateTime, Duration as Age, Utc};
use comfy_table::Cell;
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// The API's page size when the CLI pages through a listing.
const PAGE: usize = 100;
/// How many pages a filtered listing reads at most (newest first).
const MAX_PAGES: usize = 50;

pub(crate) async fn run(cli: Cli) -> CliResult<()> {
    let api = Api::new(resolve_url(cli.url), resolve_token(cli.token))?;
    let out = cli.output;
    match cli.command {
        Group::Integrations(c) => integrations(&api, out, c).await,
        Group::Exchanges(c) => exchanges(&api, out, c).await,
        Group::Errors(c) => errors(&api, out, c).await,
        Group::Events(c) => events(&api, out, c).await,
        Group::Mappings(c) => mappings(&api, out, c).await,
    }
}

// ------------------------------------------------------------------ integrations

async fn integrations(api: &Api, out: Output, command: IntegrationCommand) -> CliResult<()> {
    let now = Utc::now();
    match command {
        IntegrationCommand::List => {
            let listed = api.get("/integrations").await?;
            if out == Output::Json {
                render::json(&listed);
                return Ok(());
            }
            let mut table = render::table(&["code", "version", "enabled", "endpoint", "updated", "by"]);
            for item in items(&listed) {
                table.add_row(vec![
                    Cell::new(render::text(&item["code"])),
                    Cell::new(version_text(&item["version"])),
                    Cell::new(yes_no(&item["enabled"])),
                    status_cell(item["endpoint"]["status"].as_str().unwrap_or("")),
                    Cell::new(render::relative(&item["updatedAt"], now)),
                    Cell::new(render::text(&item["updatedBy"])),
                ]);
            }
            render::print(&table);
        }
        IntegrationCommand::Show { code } => {
            let shown = api.get(&format!("/integrations/{}", encode(&code))).await?;
            if out == Output::Json {
                render::json(&shown);
                return Ok(());
            }
            print_endpoint(&shown["code"], &shown["endpoint"], now);
            let mut table = render::table(&["version", "enabled", "revision", "updated", "by"]);
            for v in shown["versions"].as_array().into_iter().flatten() {
                table.add_row(vec![
                    version_text(&v["version"]),
                    yes_no(&v["enabled"]),
                    render::text(&v["revision"]),
                    render::relative(&v["updatedAt"], now),
                    render::text(&v["updatedBy"]),
                ]);
            }
            println!();
            render::print(&table);
        }
        IntegrationCommand::Define { file } => {
            let definition = read_document(&file)?;
            let defined = api.post("/integrations", &definition).await?;
            if out == Output::Json {
                render::json(&defined);
                return Ok(());
            }
            println!(
                "defined {} version {} (endpoint {}, schedule {})",
                render::text(&defined["code"]),
                version_text(&defined["version"]),
                render::text(&defined["endpoint"]["status"]),
                render::text(&defined["schedule"]["state"]),
            );
            if defined["endpoint"]["status"] == "Disabled" {
                println!(
                    "a new code starts Disabled: `handoff integrations enable {}` lets it run",
                    render::text(&defined["code"])
                );
            }
        }
        IntegrationCommand::Enable { code, reason } => operate(api, out, &code, "enable", reason, None).await?,
        IntegrationCommand::Disable { code, reason } => operate(api, out, &code, "disable", reason, None).await?,
        IntegrationCommand::Resume { code, reason, recover_failed } => {
            operate(api, out, &code, "resume", reason, Some(recover_failed)).await?
        }
    }
    Ok(())
}

async fn operate(
    api: &Api,
    out: Output,
    code: &str,
    command: &str,
    reason: Option<String>,
    recover_failed: Option<bool>,
) -> CliResult<()> {
    let mut body = Map::new();
    if let Some(reason) = reason {
        body.insert("reason".into(), json!(reason));
    }
    if recover_failed == Some(true) {
        body.insert("recoverFailed".into(), json!(true));
    }
    let answer = api.post(&format!("/integrations/{}/{command}", encode(code)), &Value::Object(body)).await?;
    if out == Output::Json {
        render::json(&answer);
        return Ok(());
    }
    let endpoint = &answer["endpoint"];
    let changed = if endpoint["changed"] == true { "now" } else { "already" };
    println!("{code}: {changed} {}", render::text(&endpoint["status"]));
    for r in endpoint["recovered"].as_array().into_iter().flatten() {
        match r["recovered"].as_bool() {
            Some(true) => {
                println!("  recovered {} at step {}", render::text(&r["exchangeId"]), render::text(&r["resumedAt"]))
            }
            _ => println!("  not recovered {}: {}", render::text(&r["exchangeId"]), render::text(&r["reason"])),
        }
    }
    Ok(())
}

fn print_endpoint(code: &Value, endpoint: &Value, now: DateTime<Utc>) {
    println!(
        "{}  endpoint {} since {}",
        render::text(code),
        render::text(&endpoint["status"]),
        render::relative(&endpoint["since"], now)
    );
    if let Some(reason) = endpoint["reason"].as_str() {
        println!("  reason: {reason}");
    }
    println!(
        "  on system failure: {}   queue: {}",
        render::text(&endpoint["onSystemFailure"]),
        render::text(&endpoint["queueStatus"])
    );
    if let Some(failure) = endpoint["lastFailure"].as_object() {
        println!(
            "  last failure: {} {} ({})",
            render::text(&failure["code"]),
            render::text(&failure["exchangeId"]),
            render::relative(&failure["at"], now)
        );
    }
    match &endpoint["schedule"] {
        Value::String(text) => println!("  schedule: {text}"),
        Value::Object(s) => {
            println!("  schedule: {} ({})", render::text(&s["expression"]), render::text(&s["timezone"]));
            let runs: Vec<String> =
                s["nextRuns"].as_array().into_iter().flatten().map(|r| render::relative(r, now)).collect();
            if !runs.is_empty() {
                println!("  next runs: {}", runs.join(", "));
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------ exchanges

async fn exchanges(api: &Api, out: Output, command: ExchangeCommand) -> CliResult<()> {
    match command {
        ExchangeCommand::Start { code, params, payload, version, wait } => {
            let mut request = json!({"integrationCode": code});
            let parameters: Map<String, Value> =
                parse_params(&params)?.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            request["parameters"] = Value::Object(parameters);
            if let Some(file) = payload {
                let text = read_text(&file)?;
                request["payload"] = serde_json::from_str(&text).unwrap_or(Value::String(text));
            }
            if let Some(v) = version {
                request["integrationVersion"] = json!(v);
            }
            if let Some(seconds) = wait {
                request["waitSeconds"] = json!(seconds);
            }
            let started = api.post("/exchanges", &request).await?;
            if out == Output::Json {
                render::json(&started);
            } else if started["steps"].is_array() {
                print_exchange(&started, Utc::now());
            } else {
                println!(
                    "started {} ({} v{})",
                    render::text(&started["exchangeId"]),
                    code,
                    version_text(&started["integrationVersion"])
                );
            }
        }
        ExchangeCommand::List(filter) => {
            let found = select(api, &filter, filter.status.as_deref()).await?;
            if out == Output::Json {
                render::json(&json!({"items": found}));
            } else {
                print_exchanges(&found);
            }
        }
        ExchangeCommand::Show { id } => {
            let exchange = api.get(&format!("/exchanges/{}", encode(&id))).await?;
            if out == Output::Json {
                render::json(&exchange);
            } else {
                print_exchange(&exchange, Utc::now());
            }
        }
        ExchangeCommand::Logs { id } => {
            let logs = api.get(&format!("/exchanges/{}/logs", encode(&id))).await?;
            if out == Output::Json {
                render::json(&logs);
                return Ok(());
            }
            let mut table = render::table(&["time", "step", "type", "line"]);
            for line in items(&logs) {
                table.add_row(vec![
                    render::text(&line["timestamp"]),
                    render::text(&line["stepId"]),
                    render::text(&line["type"]),
                    render::text(&line["line"]),
                ]);
            }
            render::print(&table);
        }
        ExchangeCommand::Watch { id, interval_ms } => watch(api, out, &id, interval_ms).await?,
        ExchangeCommand::Recover { id: Some(id), version, .. } => {
            let answer = recover_one(api, &id, version).await?;
            if out == Output::Json {
                render::json(&answer);
            } else {
                println!(
                    "{id}: recovering at step {} (recovery {})",
                    render::text(&answer["resumedAt"]),
                    render::text(&answer["recoveries"])
                );
            }
        }
        ExchangeCommand::Recover { id: None, version, which, yes, .. } => {
            recover_many(api, out, &which, version, yes).await?
        }
        ExchangeCommand::Retry { id, step } => {
            let answer =
                api.post(&format!("/exchanges/{}/steps/{}/retry", encode(&id), encode(&step)), &json!({})).await?;
            if out == Output::Json {
                render::json(&answer);
            } else {
                println!(
                    "{id}: step {} runs again (attempt {})",
                    render::text(&answer["stepId"]),
                    render::text(&answer["attempt"])
                );
            }
        }
    }
    Ok(())
}

async fn recover_one(api: &Api, id: &str, version: Option<u32>) -> CliResult<Value> {
    let body = match version {
        Some(v) => json!({"integrationVersion": v}),
        None => json!({}),
    };
    api.post(&format!("/exchanges/{}/recover", encode(id)), &body).await
}

/// `exchanges recover --filter`: the recoverable exchanges that match, confirmed, then one
/// recovery each, with a result per exchange and a summary.
async fn recover_many(
    api: &Api,
    out: Output,
    which: &ExchangeFilter,
    version: Option<u32>,
    yes: bool,
) -> CliResult<()> {
    let statuses: Vec<&str> = match which.status.as_deref() {
        Some(s) => vec![s],
        None => vec!["Failed", "TimedOut"],
    };
    let mut chosen = Vec::new();
    for status in statuses {
        chosen.extend(select(api, which, Some(status)).await?);
    }
    chosen.retain(|e| e["recoverable"] == true);
    chosen.truncate(which.limit);
    if chosen.is_empty() {
        println!("no recoverable exchange matches");
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!(
                "{} exchanges match; pass --yes to recover them without a prompt",
                chosen.len()
            )));
        }
        print_exchanges(&chosen);
        print!("recover these {} exchanges? [y/N] ", chosen.len());
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(CliError::Usage("not confirmed: nothing recovered".into()));
        }
    }
    let mut results = Vec::new();
    let mut table = render::table(&["exchange", "integration", "result"]);
    for exchange in &chosen {
        let id = render::text(&exchange["exchangeId"]);
        let outcome = recover_one(api, &id, version).await;
        let (recovered, said) = match &outcome {
            Ok(answer) => (true, format!("recovering at step {}", render::text(&answer["resumedAt"]))),
            Err(e) => (false, e.to_string()),
        };
        table.add_row(vec![Cell::new(&id), Cell::new(render::text(&exchange["integrationCode"])), Cell::new(&said)]);
        results.push(json!({"exchangeId": id, "recovered": recovered, "result": said}));
    }
    let refused = results.iter().filter(|r| r["recovered"] == false).count();
    if out == Output::Json {
        render::json(&json!({"items": results, "recovered": results.len() - refused, "refused": refused}));
    } else {
        render::print(&table);
        println!("recovered {}, refused {refused}", results.len() - refused);
    }
    match refused {
        0 => Ok(()),
        refused => Err(CliError::PartlyRefused { refused, total: results.len() }),
    }
}

/// The exchanges `filter` selects, newest first: the API filters by integration and
/// status; `--since` and `--param` are applied here, page by page.
async fn select(api: &Api, filter: &ExchangeFilter, status: Option<&str>) -> CliResult<Vec<Value>> {
    let since = filter.since.as_deref().map(parse_since).transpose()?;
    let params = parse_params(&filter.params)?;
    let mut query =
        vec![format!("limit={}", if since.is_none() && params.is_empty() { filter.limit.min(PAGE) } else { PAGE })];
    if let Some(code) = &filter.integration {
        query.push(format!("integrationCode={}", encode(code)));
    }
    if let Some(status) = status {
        query.push(format!("status={}", encode(status)));
    }
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/exchanges?{}", query.join("&"));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        let page = api.get(&path).await?;
        let mut older = false;
        for exchange in items(&page) {
            let created = exchange["createdAt"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if let (Some(since), Some(created)) = (since, created) {
                if created.with_timezone(&Utc) < since {
                    older = true;
                    continue;
                }
            }
            let matches = params.iter().all(|(k, v)| match &exchange["parameters"][k] {
                Value::String(s) => s == v,
                Value::Null => false,
                other => serde_json::to_string(other).is_ok_and(|text| text == *v),
            });
            if matches {
                found.push(exchange.clone());
            }
        }
        cursor = page["nextCursor"].as_str().map(str::to_string);
        if found.len() >= filter.limit || older || cursor.is_none() {
            break;
        }
    }
    found.truncate(filter.limit);
    Ok(found)
}

fn parse_since(text: &str) -> CliResult<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let invalid = || CliError::Usage(format!("--since {text}: not an RFC 3339 time or an age such as 30m, 2h, 7d"));
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| invalid())?;
    let age = match unit {
        "s" => Age::seconds(n),
        "m" => Age::minutes(n),
        "h" => Age::hours(n),
        "d" => Age::days(n),
        _ => return Err(invalid()),
    };
    Ok(Utc::now() - age)
}

fn parse_params(given: &[String]) -> CliResult<Vec<(String, String)>> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::Usage(format!("--param {p}: expected KEY=VALUE")))
        })
        .collect()
}

fn print_exchanges(found: &[Value]) {
    let now = Utc::now();
    let mut table = render::table(&["exchange", "integration", "status", "trigger", "created", "duration", "error"]);
    for e in found {
        table.add_row(vec![
            Cell::new(render::text(&e["exchangeId"])),
            Cell::new(format!("{} v{}", render::text(&e["integrationCode"]), version_text(&e["integrationVersion"]))),
            status_cell(e["status"].as_str().unwrap_or("")),
            Cell::new(render::text(&e["trigger"]["kind"])),
            Cell::new(render::relative(&e["createdAt"], now)),
            Cell::new(render::duration(&e["durationMs"])),
            Cell::new(render::text(&e["error"]["code"])),
        ]);
    }
    render::print(&table);
}

fn print_exchange(e: &Value, now: DateTime<Utc>) {
    let state = match (e["final"].as_bool(), e["recoverable"].as_bool()) {
        (Some(true), Some(true)) => " (final, recoverable)",
        (Some(true), _) => " (final)",
        _ => "",
    };
    println!(
        "{}  {} v{}  {}{state}",
        render::text(&e["exchangeId"]),
        render::text(&e["integrationCode"]),
        version_text(&e["integrationVersion"]),
        render::text(&e["status"])
    );
    let by = e["trigger"]["caller"].as_str().map(|c| format!(" by {c}")).unwrap_or_default();
    println!(
        "  {} run{by}, created {}{}",
        render::text(&e["trigger"]["kind"]),
        render::relative(&e["createdAt"], now),
        e["durationMs"].as_i64().map(|_| format!(", took {}", render::duration(&e["durationMs"]))).unwrap_or_default()
    );
    if let Some(error) = e["error"].as_object() {
        println!(
            "  error: {} {}: {}",
            render::text(&error["classification"]),
            render::text(&error["code"]),
            render::text(&error["message"])
        );
    }
    if e["recoverable"] == true {
        println!("  recover it: handoff exchanges recover {}", render::text(&e["exchangeId"]));
    }
    if let Some(held) = e["held"].as_object() {
        println!(
            "  held at step {} since {}: {}",
            render::text(&held["stepId"]),
            render::relative(&held["since"], now),
            render::text(&held["reason"])
        );
    }
    let mut table =
        render::table(&["step", "name", "sub-step", "status", "attempts", "duration", "next retry", "last error"]);
    for s in e["steps"].as_array().into_iter().flatten() {
        table.add_row(vec![
            Cell::new(render::text(&s["stepId"])),
            Cell::new(render::text(&s["integrationStep"])),
            Cell::new(render::text(&s["subStep"])),
            status_cell(s["status"].as_str().unwrap_or("")),
            Cell::new(format!("{}/{}", render::text(&s["attempts"]), render::text(&s["maxAttempts"]))),
            Cell::new(render::duration(&s["durationMs"])),
            Cell::new(render::relative(&s["nextRetryAt"], now)),
            Cell::new(shorten(&render::text(&s["lastError"]["message"]), 60)),
        ]);
    }
    println!();
    render::print(&table);
}

/// Reads the exchange until it is final: at a terminal it redraws the step list; otherwise
/// it prints a line whenever the status or a step changes.
async fn watch(api: &Api, out: Output, id: &str, interval_ms: u64) -> CliResult<()> {
    let at_terminal = std::io::stdout().is_terminal() && out == Output::Table;
    let mut last_seen = String::new();
    loop {
        let exchange = api.get(&format!("/exchanges/{}", encode(id))).await?;
        let is_final = exchange["final"] == true;
        if out == Output::Table {
            if at_terminal {
                print!("\x1b[2J\x1b[H");
                print_exchange(&exchange, Utc::now());
            } else {
                let line = progress_line(&exchange);
                if line != last_seen {
                    println!("{line}");
                    last_seen = line;
                }
            }
        }
        if is_final {
            if out == Output::Json {
                render::json(&exchange);
            }
            return match exchange["status"].as_str() {
                Some("Completed") => Ok(()),
                other => {
                    Err(CliError::EndedUnsuccessfully { id: id.to_string(), status: other.unwrap_or("?").to_string() })
                }
            };
        }
        tokio::time::sleep(Duration::from_millis(interval_ms.max(100))).await;
    }
}

/// `Started  2/4 done  0002 DeliverRest: Failed 1/3`: where an exchange stands, in one line.
fn progress_line(e: &Value) -> String {
    let steps: Vec<&Value> = e["steps"].as_array().map(|s| s.iter().collect()).unwrap_or_default();
    let done = steps.iter().filter(|s| s["status"] == "Done" || s["status"] == "Skipped").count();
    let current = steps.iter().find(|s| s["status"] != "Done" && s["status"] != "Skipped");
    let mut line = format!("{}  {done}/{} done", render::text(&e["status"]), steps.len());
    if let Some(s) = current {
        line.push_str(&format!(
            "  {} {}: {} {}/{}",
            render::text(&s["stepId"]),
            render::text(&s["subStep"]),
            render::text(&s["status"]),
            render::text(&s["attempts"]),
            render::text(&s["maxAttempts"])
        ));
    }
    line
}

// ------------------------------------------------------------------ errors, events, mappings

async fn errors(api: &Api, out: Output, command: ErrorCommand) -> CliResult<()> {
    match command {
        ErrorCommand::List { integration, classification, state, since, limit } => {
            let mut query = vec![format!("limit={}", limit.clamp(1, 100))];
            for (name, value) in
                [("integrationCode", integration), ("classification", classification), ("state", state)]
            {
                if let Some(v) = value {
                    query.push(format!("{name}={}", encode(&v)));
                }
            }
            if let Some(since) = since {
                query.push(format!("since={}", encode(&parse_since(&since)?.to_rfc3339())));
            }
            let listed = api.get(&format!("/errors?{}", query.join("&"))).await?;
            if out == Output::Json {
                render::json(&listed);
                return Ok(());
            }
            let now = Utc::now();
            let mut table =
                render::table(&["error", "integration", "class", "code", "state", "times", "at", "message"]);
            for e in items(&listed) {
                table.add_row(vec![
                    Cell::new(render::text(&e["errorId"])),
                    Cell::new(render::text(&e["integrationCode"])),
                    Cell::new(render::text(&e["classification"])),
                    Cell::new(render::text(&e["code"])),
                    status_cell(e["state"].as_str().unwrap_or("")),
                    Cell::new(render::text(&e["occurrences"])),
                    Cell::new(render::relative(&e["at"], now)),
                    Cell::new(shorten(&render::text(&e["message"]), 60)),
                ]);
            }
            render::print(&table);
        }
        ErrorCommand::Resolve { error_id, note } => {
            let resolved = api.post(&format!("/errors/{}/resolve", encode(&error_id)), &json!({"note": note})).await?;
            if out == Output::Json {
                render::json(&resolved);
            } else {
                println!("{error_id}: resolved; the error job re-processes it ({})", render::text(&resolved["action"]));
            }
        }
    }
    Ok(())
}

async fn events(api: &Api, out: Output, command: EventCommand) -> CliResult<()> {
    match command {
        EventCommand::Send { code, file, data } => {
            let document = match (file, data) {
                (Some(file), None) => read_document(&file)?,
                (None, Some(data)) => {
                    serde_json::from_str(&data).map_err(|e| CliError::Usage(format!("--data: not JSON ({e})")))?
                }
                _ => return Err(CliError::Usage("give a FILE or --data".into())),
            };
            let answer = api.post(&format!("/integrations/{}/events", encode(&code)), &document).await?;
            if out == Output::Json {
                render::json(&answer);
            } else {
                println!(
                    "{code}: {} accepted, {} discarded",
                    render::text(&answer["accepted"]),
                    render::text(&answer["discarded"])
                );
            }
        }
        EventCommand::List { code, limit } => {
            let queue =
                api.get(&format!("/integrations/{}/events?limit={}", encode(&code), limit.clamp(1, 100))).await?;
            if out == Output::Json {
                render::json(&queue);
                return Ok(());
            }
            let now = Utc::now();
            println!(
                "{code}: {} pending (oldest {}s), {} discarded",
                render::text(&queue["pending"]),
                render::text(&queue["oldestAgeSeconds"]),
                render::text(&queue["discarded"])
            );
            let mut table = render::table(&["event", "key", "type", "received", "taken by"]);
            for e in items(&queue) {
                table.add_row(vec![
                    render::text(&e["eventId"]),
                    render::text(&e["key"]),
                    render::text(&e["type"]),
                    render::relative(&e["receivedAt"], now),
                    render::text(&e["takenBy"]),
                ]);
            }
            render::print(&table);
        }
    }
    Ok(())
}

async fn mappings(api: &Api, out: Output, command: MappingCommand) -> CliResult<()> {
    let answer = match command {
        MappingCommand::Get { name } => api.get(&format!("/mappings/{}", encode(&name))).await?,
        MappingCommand::Put { name, file } => {
            api.put(&format!("/mappings/{}", encode(&name)), &read_document(&file)?).await?
        }
    };
    if out == Output::Json {
        render::json(&answer);
    } else {
        println!(
            "{} revision {} (updated {})",
            render::text(&answer["name"]),
            render::text(&answer["revision"]),
            render::relative(&answer["updatedAt"], Utc::now())
        );
        render::json(&answer["mapping"]);
    }
    Ok(())
}

// ------------------------------------------------------------------ helpers

fn items(page: &Value) -> impl Iterator<Item = &Value> {
    page["items"].as_array().into_iter().flatten()
}

fn version_text(version: &Value) -> String {
    match version {
        Value::Null => "null".to_string(),
        other => render::text(other),
    }
}

fn yes_no(value: &Value) -> String {
    if value == &Value::Bool(true) { "yes" } else { "no" }.to_string()
}

fn shorten(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

/// A file's text (`-`: stdin).
fn read_text(file: &str) -> CliResult<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("reading {file}: {e}")))
    }
}

/// A JSON or YAML document from a file (`-`: stdin). YAML is read as JSON's superset.
fn read_document(file: &str) -> CliResult<Value> {
    let text = read_text(file)?;
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        return Ok(value);
    }
    serde_yaml::from_str::<Value>(&text).map_err(|e| CliError::Usage(format!("{file}: neither JSON nor YAML ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ages_and_times_are_both_a_since() {
        let now = Utc::now();
        let two_hours = parse_since("2h").expect("age");
        assert!((now - two_hours - Age::hours(2)).num_seconds().abs() < 5);
        assert_eq!(parse_since("2026-12-01T00:00:00Z").expect("time").to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("").is_err());
    }

    #[test]
    fn params_are_key_value_pairs() {
        assert_eq!(parse_params(&["region=north".into()]).expect("ok"), vec![("region".into(), "north".into())]);
        assert!(parse_params(&["region".into()]).is_err());
        assert!(parse_params(&["=x".into()]).is_err());
        let unique: BTreeSet<_> = parse_params(&["a=1".into(), "b=2=3".into()]).expect("ok").into_iter().collect();
        assert!(unique.contains(&("b".to_string(), "2=3".to_string())));
    }

    #[test]
    fn progress_reads_in_one_line() {
        let e = json!({"status": "Started", "steps": [
            {"stepId": "0000", "subStep": "ExchangeTriggered", "status": "Done", "attempts": 1, "maxAttempts": 1},
            {"stepId": "0001", "subStep": "DeliverRest", "status": "Initial", "attempts": 1, "maxAttempts": 3}]});
        assert_eq!(progress_line(&e), "Started  1/2 done  0001 DeliverRest: Initial 1/3");
    }
}
