//! Batch webhooks, sent at least once. A finished batch's delivery stays due in the
//! record until its outcome is recorded; a worker takes it there before sending, and
//! a delivery whose worker died is taken again after `webhook_retake`. So a batch
//! finished by `renderq cancel`, or by a worker killed mid-delivery, is still sent.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;

/// Due deliveries taken per look.
const TAKE: i64 = 64;

/// Looks for due deliveries every `reconcile_every`, and at once when this worker
/// finished a batch. On `stop`, looks once more (the last completions may have
/// finished a batch) and returns when its deliveries are done; the caller bounds
/// that wait by the shutdown deadline.
pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let mut sending = JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(s.cfg.reconcile_every) => {}
            _ = s.webhooks_due.notified() => {}
            Some(_) = sending.join_next(), if !sending.is_empty() => continue,
            _ = stop.cancelled() => break,
        }
        take_and_send(&s, &mut sending).await;
    }
    take_and_send(&s, &mut sending).await;
    while sending.join_next().await.is_some() {}
}

async fn take_and_send(s: &Arc<Shared>, sending: &mut JoinSet<()>) {
    let due = match s
        .record
        .take_webhooks(s.dispatch.queue(), s.cfg.webhook_retake, TAKE)
        .await
    {
        Ok(due) => due,
        Err(e) => {
            warn!("looking for due webhooks failed: {e}");
            return;
        }
    };
    let settings = Arc::new(s.cfg.webhooks.clone());
    for batch in due {
        sending.spawn(crate::webhook::deliver(
            s.record.clone(),
            batch,
            s.cfg.webhook_backoff,
            settings.clone(),
        ));
    }
}
