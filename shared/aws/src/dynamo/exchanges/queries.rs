//! Index queries (which index a listing reads, its key and filter conditions) and cursors.

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Cursor {
    /// The index the key belongs to.
    i: String,
    /// The last evaluated key (strings only).
    k: BTreeMap<String, String>,
}

pub(crate) fn encode_cursor(index: &str, key: &Item) -> PortResult<String> {
    let mut k = BTreeMap::new();
    for (name, value) in key {
        let value = value.as_s().map_err(|_| error::fault(SERVICE, format!("key attribute {name} is not a string")))?;
        k.insert(name.clone(), value.clone());
    }
    let json = serde_json::to_vec(&Cursor { i: index.to_string(), k })
        .map_err(|e| error::fault(SERVICE, format!("cannot encode cursor: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub(crate) fn decode_cursor(index: &str, cursor: &str) -> PortResult<Item> {
    let invalid = || PortError::InvalidCursor("invalid cursor".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.i != index {
        return Err(PortError::InvalidCursor("the cursor belongs to a different filter".into()));
    }
    let expected = ["pk", "sk", index_keys(index).0, index_keys(index).1];
    if cursor.k.len() != expected.len() || !expected.iter().all(|name| cursor.k.contains_key(*name)) {
        return Err(invalid());
    }
    Ok(cursor.k.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect())
}

pub(super) fn index_keys(index: &str) -> (&'static str, &'static str) {
    match index {
        INDEX_BY_INTEGRATION => ("gsi1pk", "gsi1sk"),
        INDEX_BY_STATUS => ("gsi2pk", "gsi2sk"),
        INDEX_BY_DUE => ("gsi4pk", "gsi4sk"),
        INDEX_BY_ERROR => ("gsi5pk", "gsi5sk"),
        INDEX_BY_PARENT => ("gsi6pk", "gsi6sk"),
        _ => ("gsi3pk", "gsi3sk"),
    }
}

/// A Query on one index: the key condition, an optional filter and their placeholders.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexQuery {
    pub(super) index: &'static str,
    pub(super) key_condition: String,
    pub(super) filter: Option<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
    /// Ascending sort key order (`ScanIndexForward`).
    pub(super) forward: bool,
}

impl IndexQuery {
    /// `<index pk> = partition`, plus whatever the caller adds.
    pub(super) fn on(index: &'static str, partition: String, forward: bool) -> (Self, Expr) {
        let mut e = Expr::default();
        let pk = e.name(index_keys(index).0);
        let value = e.value("gpk", s(partition));
        let query = Self {
            index,
            key_condition: format!("{pk} = {value}"),
            filter: None,
            names: HashMap::new(),
            values: HashMap::new(),
            forward,
        };
        (query, e)
    }
    pub(super) fn finish(mut self, e: Expr) -> Self {
        self.names = e.names;
        self.values = e.values;
        self
    }
}

/// The query of [`ExchangeRepository::list`]: newest first, except sub-exchanges, which
/// come in creation order (their index order).
pub(crate) fn list_query(filter: &ExchangeFilter) -> IndexQuery {
    let (index, partition, status) = list_plan(filter);
    let (mut query, mut e) = IndexQuery::on(index, partition, index == INDEX_BY_PARENT);
    let mut conditions = Vec::new();
    if let Some(status) = status {
        let name = e.name("status");
        let value = e.value("status", s(status.name()));
        conditions.push(format!("{name} = {value}"));
    }
    if index == INDEX_BY_PARENT {
        if let Some(code) = &filter.integration_code {
            let name = e.name("integrationCode");
            let value = e.value("integrationCode", s(code.to_string()));
            conditions.push(format!("{name} = {value}"));
        }
    }
    if !conditions.is_empty() {
        query.filter = Some(conditions.join(" AND "));
    }
    query.finish(e)
}

/// The query of [`ExchangeRepository::errors`].
pub(crate) fn errors_query(filter: &ErrorFilter) -> PortResult<IndexQuery> {
    let (mut query, mut e) = IndexQuery::on(INDEX_BY_ERROR, ERRORS_GSI_PK.to_string(), false);
    if let Some(since) = filter.since {
        let sk = e.name(index_keys(INDEX_BY_ERROR).1);
        let value = e.value("since", s(error_since_key(since)));
        query.key_condition.push_str(&format!(" AND {sk} >= {value}"));
    }
    let mut conditions = Vec::new();
    if let Some(classification) = &filter.classification {
        let name = e.name("classification");
        let value = e.value("classification", to_av(classification)?);
        conditions.push(format!("{name} = {value}"));
    }
    if let Some(code) = &filter.integration_code {
        let name = e.name("integrationCode");
        let value = e.value("integrationCode", s(code.to_string()));
        conditions.push(format!("{name} = {value}"));
    }
    if let Some(state) = filter.state {
        let name = e.name("state");
        let value = e.value("state", s(state.name()));
        conditions.push(format!("{name} = {value}"));
    }
    if !conditions.is_empty() {
        query.filter = Some(conditions.join(" AND "));
    }
    Ok(query.finish(e))
}

/// The query of [`ExchangeRepository::due_timers`]: oldest first, up to `until`.
pub(crate) fn due_query(until: DateTime<Utc>) -> IndexQuery {
    let (mut query, mut e) = IndexQuery::on(INDEX_BY_DUE, TIMERS_GSI_PK.to_string(), true);
    let sk = e.name(index_keys(INDEX_BY_DUE).1);
    let value = e.value("until", s(timers_until_key(until)));
    query.key_condition.push_str(&format!(" AND {sk} <= {value}"));
    query.finish(e)
}

/// The index, its partition key value and the status to filter on, for a filter (on
/// `byParent`, the integration code is filtered on too).
pub(crate) fn list_plan(filter: &ExchangeFilter) -> (&'static str, String, Option<ExchangeStatus>) {
    if let Some(parent) = &filter.parent {
        return (INDEX_BY_PARENT, parent_gsi_pk(parent), filter.status);
    }
    match (&filter.integration_code, filter.status) {
        (Some(code), status) => (INDEX_BY_INTEGRATION, integration_gsi_pk(code), status),
        (None, Some(status)) => (INDEX_BY_STATUS, status_gsi_pk(status), None),
        (None, None) => (INDEX_BY_CREATION, CREATION_GSI_PK.to_string(), None),
    }
}

/// The items with each key (`pk`, `sk`) once: at its first place, with its last content.
pub(crate) fn dedup_by_key(items: Vec<Item>) -> Vec<Item> {
    let mut at: HashMap<(String, String), usize> = HashMap::with_capacity(items.len());
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        let key = (
            attr_str(&item, "pk").unwrap_or_default().to_string(),
            attr_str(&item, "sk").unwrap_or_default().to_string(),
        );
        match at.get(&key) {
            Some(&i) => out[i] = item,
            None => {
                at.insert(key, out.len());
                out.push(item);
            }
        }
    }
    out
}

/// The items of `create` / `create_many`: each exchange's steps, then the exchange itself.
pub(crate) fn creation_items<'a>(
    exchanges: impl IntoIterator<Item = (&'a Exchange, &'a [ExchangeStep])>,
) -> PortResult<Vec<Item>> {
    let mut items = Vec::new();
    for (exchange, steps) in exchanges {
        for step in steps {
            items.push(step_to_item(&exchange.exchange_id, step)?);
        }
        items.push(exchange_to_item(exchange)?);
    }
    Ok(items)
}
