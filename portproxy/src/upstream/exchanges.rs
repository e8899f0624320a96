//! What the daemon's exchanges with the CGN share while a data path runs: the sockets kept
//! between them (`SocketPool`) and one turn per mapping.
//!
//! Why turns: the keeper (re-creating after a CGN reboot) and the servers, the API and the
//! forwards (mapping, renewing, deleting) may ask the CGN about the same mapping at once. A
//! MAP still being sent again (`client::exchange` resends unanswered requests) can reach
//! the CGN after a client's delete, which then holds the port for a mapping the table, the
//! firewall and the client believe gone. So an exchange about a mapping waits for the one
//! before it to end (answered or given up), and reads the table only once it has its turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use super::SocketPool;
use crate::mapping::Key;
use crate::sockets::Sender;

/// Turns kept before the unused ones are swept (they are removed when their last holder
/// ends; only a waiter cancelled with its task, say on a rebuild, leaves one behind).
const SWEEP_ABOVE: usize = 256;

#[derive(Debug)]
pub struct Exchanges {
    pub sockets: Arc<SocketPool>,
    /// Per mapping: its lock, while someone holds it or waits for it.
    turns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// `key`'s turn: no other exchange about that mapping until it is dropped.
pub struct Turn<'a> {
    exchanges: &'a Exchanges,
    key: Key,
    held: Option<OwnedMutexGuard<()>>,
}

impl Exchanges {
    /// Exchanges whose sockets send as `sender`.
    pub fn new(sender: Sender) -> Exchanges {
        Exchanges {
            sockets: Arc::new(SocketPool::new(sender)),
            turns: Mutex::default(),
        }
    }

    /// Waits for `key`'s turn (in the order asked).
    pub async fn turn(&self, key: Key) -> Turn<'_> {
        let lock = {
            let mut turns = self.turns.lock().unwrap();
            if turns.len() > SWEEP_ABOVE {
                turns.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            turns.entry(key).or_default().clone()
        };
        Turn {
            exchanges: self,
            key,
            held: Some(lock.lock_owned().await),
        }
    }

    /// Whether someone waits for `key`'s turn while another has it.
    #[cfg(test)]
    pub fn waited_for(&self, key: &Key) -> bool {
        let turns = self.turns.lock().unwrap();
        // The map's, the holder's and a waiter's.
        turns
            .get(key)
            .is_some_and(|lock| Arc::strong_count(lock) > 2)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Under the map's lock, so nobody takes a clone between the count and the removal.
        let mut turns = self.exchanges.turns.lock().unwrap();
        drop(self.held.take());
        if turns
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::proto::Transport;

    fn key(port: u16) -> Key {
        Key {
            host: Ipv4Addr::new(192, 168, 1, 2),
            proto: Transport::Tcp,
            internal_port: port,
        }
    }

    #[tokio::test]
    async fn one_turn_per_mapping_and_none_kept_unused() {
        let exchanges = Arc::new(Exchanges::new(Sender::Myself));
        let first = exchanges.turn(key(1)).await;
        // Another mapping's turn is not held up.
        drop(exchanges.turn(key(2)).await);
        let waiting = {
            let exchanges = exchanges.clone();
            tokio::spawn(async move { drop(exchanges.turn(key(1)).await) })
        };
        for _ in 0..500 {
            if exchanges.waited_for(&key(1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(exchanges.waited_for(&key(1)));
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap();
        assert!(exchanges.turns.lock().unwrap().is_empty());
    }
}
