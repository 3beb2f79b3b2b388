//! Reading the sub-exchanges of a parent: all of them in index order, and the failed ones a
//! recovery of the parent re-drives.

use handoff_core::exchange::Exchange;
use handoff_core::ids::{ExchangeId, StepId};
use handoff_ports::{ExchangeFilter, ExchangeReads, PortError};

/// Every sub-exchange of a parent step, in index order.
pub async fn children(exchanges: &dyn ExchangeReads, parent: &ExchangeId) -> Result<Vec<Exchange>, PortError> {
    let filter = ExchangeFilter { parent: Some(parent.clone()), ..ExchangeFilter::default() };
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = exchanges.list(&filter, 100, cursor.as_deref()).await?;
        all.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    all.sort_by_key(|e| e.parent.as_ref().map_or(0, |p| p.index));
    Ok(all)
}

/// The failed or timed-out sub-exchanges of a parent step (what recovering the parent re-drives).
pub async fn failed_children(
    exchanges: &dyn ExchangeReads,
    parent: &ExchangeId,
    step: StepId,
) -> Result<Vec<ExchangeId>, PortError> {
    Ok(children(exchanges, parent)
        .await?
        .into_iter()
        .filter(|c| c.parent.as_ref().is_some_and(|p| p.step_id == step) && c.status.is_recoverable())
        .map(|c| c.exchange_id)
        .collect())
}
