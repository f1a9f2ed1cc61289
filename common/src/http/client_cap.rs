//! At most so many connections at once from one client (nginx's `limit_conn` keyed on the
//! client's address, HAProxy's `src_conn_cur`). Without it one address may hold every slot
//! of a listener's connection cap, and the cap then turns everyone else away.
//!
//! A client is an IPv4 address or an IPv6 /64: a host is given a whole /64, so counting
//! single IPv6 addresses would let it open a connection from each. Peers that speak for many
//! clients (the load balancers trusted to name theirs) are exempt. One [`ClientCap`] may be
//! shared by several listeners, so a client's connections are counted across all of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A shared count of open connections per client, and the most each may hold.
#[derive(Clone)]
pub struct ClientCap {
    table: Arc<Table>,
}

struct Table {
    max: u32,
    exempt: Box<dyn Fn(IpAddr) -> bool + Send + Sync>,
    /// Open connections per client; a client with none has no entry.
    open: Mutex<HashMap<ClientKey, u32>>,
}

/// Whom a connection is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    /// The address's first 64 bits.
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A client already holds as many connections as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAtLimit {
    /// The limit it is at.
    pub max: u32,
}

impl std::fmt::Display for ClientAtLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client has {} connections open already", self.max)
    }
}

impl std::error::Error for ClientAtLimit {}

/// One connection's place in its client's count, given back when dropped.
pub struct ClientSlot {
    table: Arc<Table>,
    key: ClientKey,
}

impl ClientCap {
    /// At most `max` connections (at least 1) per client; clients for which `exempt` holds
    /// (balancers, given their own address) are not counted.
    pub fn new(max: u32, exempt: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self {
            table: Arc::new(Table {
                max: max.max(1),
                exempt: Box::new(exempt),
                open: Mutex::default(),
            }),
        }
    }

    /// A place for one more connection from `client`: `Ok(None)` when the client is exempt,
    /// an error when it holds its limit already.
    pub fn admit(&self, client: IpAddr) -> Result<Option<ClientSlot>, ClientAtLimit> {
        let table = &self.table;
        if (table.exempt)(client.to_canonical()) {
            return Ok(None);
        }
        let key = ClientKey::of(client);
        let mut open = table.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= table.max {
            return Err(ClientAtLimit { max: table.max });
        }
        *count += 1;
        Ok(Some(ClientSlot {
            table: table.clone(),
            key,
        }))
    }

    /// Whether `client` holds its limit now (an exempt one never does): a look before work
    /// that would be wasted on a client [`ClientCap::admit`] would then refuse.
    pub fn is_full(&self, client: IpAddr) -> bool {
        let table = &self.table;
        !(table.exempt)(client.to_canonical())
            && table
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ClientKey::of(client))
                .is_some_and(|count| *count >= table.max)
    }

    /// Clients holding at least one counted connection now, and those holding the limit
    /// (one pass over the count, under its lock: for a scrape, not a request).
    pub fn census(&self) -> (usize, usize) {
        let open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        let at_cap = open.values().filter(|n| **n >= self.table.max).count();
        (open.len(), at_cap)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for ClientCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCap")
            .field("max", &self.table.max)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSlot")
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_client_holds_at_most_its_limit_and_gets_places_back() {
        let cap = ClientCap::new(2, |_| false);
        let a = cap.admit(ip("192.0.2.1")).expect("first").expect("counted");
        let b = cap
            .admit(ip("192.0.2.1"))
            .expect("second")
            .expect("counted");
        assert_eq!(
            cap.admit(ip("192.0.2.1")).unwrap_err(),
            ClientAtLimit { max: 2 }
        );
        assert!(cap.is_full(ip("192.0.2.1")));
        // Another client is counted apart.
        let other = cap
            .admit(ip("192.0.2.2"))
            .expect("another")
            .expect("counted");
        assert!(!cap.is_full(ip("192.0.2.2")));
        assert_eq!(cap.census().0, 2);
        assert_eq!(cap.census(), (2, 1));
        drop(a);
        assert!(!cap.is_full(ip("192.0.2.1")));
        let c = cap.admit(ip("192.0.2.1")).expect("a place given back");
        drop((b, c, other));
        // Clients with nothing open leave no entry behind.
        assert_eq!(cap.census().0, 0);
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64_and_mapped_ipv4_is_plain() {
        let cap = ClientCap::new(1, |_| false);
        let _held = cap.admit(ip("2001:db8:1:2::1")).expect("first");
        assert!(cap.admit(ip("2001:db8:1:2:ffff::9")).is_err(), "same /64");
        assert!(cap.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _v4 = cap.admit(ip("198.51.100.7")).expect("v4");
        assert!(
            cap.admit(ip("::ffff:198.51.100.7")).is_err(),
            "the same client mapped"
        );
    }

    #[test]
    fn exempt_peers_are_not_counted() {
        let balancer = ip("10.0.0.1");
        let cap = ClientCap::new(1, move |peer| peer == balancer);
        for _ in 0..5 {
            assert!(cap.admit(ip("::ffff:10.0.0.1")).expect("exempt").is_none());
        }
        assert!(!cap.is_full(balancer));
        assert_eq!(cap.census().0, 0);
    }
}
