//! Every task one socket relay spawns, so that stopping it releases every socket.
//!
//! The relays spawn short-lived tasks (one per client tuple, search or HTTP
//! connection) that hold the relay, and with it the bound LAN sockets, for as
//! long as they run. If a rebuild only stopped the long-running tasks, those
//! stragglers would keep the old sockets bound and the new relay would find
//! its own port "in use". `Tasks::stop` cancels and joins them all.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the relay stops, whichever comes first.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Cancels every task and waits until all of them (and what they hold) are gone.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn stop_drops_what_every_task_holds() {
        let tasks = Tasks::default();
        let held = Arc::new(());
        for _ in 0..3 {
            let held = held.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(held);
            });
        }
        assert_eq!(Arc::strong_count(&held), 4);
        tokio::time::timeout(Duration::from_secs(5), tasks.stop())
            .await
            .expect("stop returns once every task is cancelled");
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
