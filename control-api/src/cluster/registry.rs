//! The cluster's Redis side: one key per live node (`PREFIX:node:ID`), holding its
//! [`NodeInfo`] as JSON, and one key per room (`PREFIX:room:NAME`) holding the id of the node
//! that hosts it; both expire unless their node renews them, so a node that dies leaves the
//! registry, and frees its rooms, on its own within the time to live. Claims are atomic (a
//! server-side script), so two nodes never both host a room. This module owns the key layout
//! and every Redis command the cluster sends; it keeps no state beyond the connection.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::NodeInfo;

/// Nodes listed at most: entries past it are ignored (a registry is tens of nodes; this bounds
/// what a polluted Redis can make a node hold).
pub const MAX_NODES: usize = 1000;

/// Longest registry entry read, in bytes; longer ones are ignored.
const MAX_ENTRY: usize = 16 * 1024;

/// SCAN rounds at most per listing (each asks for 200 keys).
const MAX_SCAN_ROUNDS: usize = 100;

/// Claims a room for a node, or renews its claim, unless another node holds it; returns the
/// node that holds it. KEYS[1]: the room's key; ARGV: the node id, the time to live in ms.
const CLAIM_ROOM: &str = "local owner = redis.call('GET', KEYS[1]) \
    if not owner then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return ARGV[1] end \
    if owner == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
    return owner";

/// Gives a room up if this node holds it. KEYS[1]: the room's key; ARGV[1]: the node id.
const RELEASE_ROOM: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) end return 0";

/// The registry in one Redis database.
#[derive(Clone)]
pub struct Registry {
    connection: ConnectionManager,
    prefix: String,
}

/// What one listing found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The live nodes, this one included once it has announced itself, sorted by id.
    pub nodes: Vec<NodeInfo>,
    /// Entries under the registry's prefix that were not a node (malformed, too long).
    pub ignored: usize,
}

impl Registry {
    /// A registry at `url` (`redis://[user:password@]host:port[/db]`) under `prefix`. Does not
    /// connect: the first command does, and every later one reconnects if Redis went away.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!("--redis-url {url:?} is not a Redis URL ({e}); use redis://HOST:PORT")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
        })
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// Claims `room` for node `id` (or renews its claim) for `ttl`, unless another node holds
    /// it: returns the node that holds it now.
    pub async fn claim_room(
        &self,
        room: &str,
        id: &str,
        ttl: Duration,
    ) -> redis::RedisResult<String> {
        redis::cmd("EVAL")
            .arg(CLAIM_ROOM)
            .arg(1)
            .arg(self.room_key(room))
            .arg(id)
            .arg(millis(ttl))
            .query_async(&mut self.connection.clone())
            .await
    }

    /// Renews node `id`'s claims on `rooms` (claiming those nobody holds, as after Redis
    /// restarted empty), in one round trip; returns the rooms another node holds.
    pub async fn renew_rooms(
        &self,
        rooms: &[String],
        id: &str,
        ttl: Duration,
    ) -> redis::RedisResult<Vec<(String, String)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("EVAL")
                .arg(CLAIM_ROOM)
                .arg(1)
                .arg(self.room_key(room))
                .arg(id)
                .arg(millis(ttl));
        }
        let owners: Vec<String> = pipe.query_async(&mut self.connection.clone()).await?;
        Ok(rooms
            .iter()
            .zip(owners)
            .filter(|(_, owner)| owner != id)
            .map(|(room, owner)| (room.clone(), owner))
            .collect())
    }

    /// Gives up node `id`'s claims on `rooms` (they closed here).
    pub async fn release_rooms(&self, rooms: &[String], id: &str) -> redis::RedisResult<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("EVAL")
                .arg(RELEASE_ROOM)
                .arg(1)
                .arg(self.room_key(room))
                .arg(id)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone()).await
    }

    /// Node `id`'s entry, if it is live and well-formed.
    pub async fn node(&self, id: &str) -> redis::RedisResult<Option<NodeInfo>> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.node_key(id))
            .query_async(&mut self.connection.clone())
            .await?;
        let key = self.node_key(id);
        Ok(parse_entries(&[key], &[value], &self.prefix).nodes.pop())
    }

    /// Writes this node's entry, to expire after `ttl` unless written again.
    pub async fn announce(&self, node: &NodeInfo, ttl: Duration) -> redis::RedisResult<()> {
        let json = serde_json::to_string(node).unwrap_or_default();
        redis::cmd("SET")
            .arg(self.node_key(&node.id))
            .arg(json)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut self.connection.clone())
            .await
    }

    /// Removes this node's entry (it is leaving).
    pub async fn withdraw(&self, id: &str) -> redis::RedisResult<()> {
        redis::cmd("DEL")
            .arg(self.node_key(id))
            .query_async::<()>(&mut self.connection.clone())
            .await
    }

    /// The live nodes: every entry under the prefix that parses, at most [`MAX_NODES`].
    pub async fn list(&self) -> redis::RedisResult<Listing> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}:node:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..MAX_SCAN_ROUNDS {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut connection)
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= MAX_NODES {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        keys.truncate(MAX_NODES);
        if keys.is_empty() {
            return Ok(Listing::default());
        }
        // Entries may expire between SCAN and MGET: those come back as nil.
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
        Ok(parse_entries(&keys, &values, &self.prefix))
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The nodes among `values` (read for `keys`): an entry counts when it parses and its id is
/// the one its key names.
pub fn parse_entries(keys: &[String], values: &[Option<Vec<u8>>], prefix: &str) -> Listing {
    let mut listing = Listing::default();
    let key_prefix = format!("{prefix}:node:");
    for (key, value) in keys.iter().zip(values) {
        let Some(value) = value else { continue };
        let node = (value.len() <= MAX_ENTRY)
            .then(|| serde_json::from_slice::<NodeInfo>(value).ok())
            .flatten()
            .filter(|node| key.strip_prefix(&key_prefix) == Some(node.id.as_str()))
            .filter(NodeInfo::is_plausible);
        match node {
            Some(node) => listing.nodes.push(node),
            None => listing.ignored += 1,
        }
    }
    listing.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    listing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeLoad;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            url: format!("http://{id}.example:7880"),
            relay_addr: None,
            version: "0".to_string(),
            started_at: 1,
            draining: false,
            load: NodeLoad::default(),
        }
    }

    #[test]
    fn entries_that_do_not_parse_or_lie_about_their_id_are_ignored() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|k| format!("sfu:node:{k}"))
            .collect();
        let good = serde_json::to_vec(&node("a")).unwrap();
        let wrong_id = serde_json::to_vec(&node("someone-else")).unwrap();
        let mut huge = node("d");
        huge.url = "x".repeat(MAX_ENTRY);
        let values = vec![
            Some(good),
            Some(b"{not json".to_vec()),
            Some(wrong_id),
            Some(serde_json::to_vec(&huge).unwrap()),
            None,
        ];
        let listing = parse_entries(&keys, &values, "sfu");
        assert_eq!(listing.nodes, vec![node("a")]);
        assert_eq!(listing.ignored, 3, "the expired one is not counted");
    }
}
