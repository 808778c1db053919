//! Applying a reloaded `cluster {}` block: the routes and the allowed peers
//! change live; everything else about the cluster is fixed at start-up (the
//! caller refuses those changes before getting here).

use super::{warn_open, Cluster, ClusterOptions};
use std::sync::Arc;

impl Cluster {
    /// Dials routes that were added, stops dialing (and closes the links of)
    /// routes that were removed, and installs the new peer allow-list,
    /// closing links to nodes it no longer allows. Returns what changed, for
    /// the log.
    pub fn reload(self: &Arc<Self>, new: &ClusterOptions) -> Result<Vec<String>, String> {
        let mut changes = Vec::new();
        let (added, removed) = {
            let mut routes = self.routes.lock();
            let added: Vec<String> = new
                .routes
                .iter()
                .filter(|r| !routes.contains(r))
                .cloned()
                .collect();
            let removed: Vec<String> = routes
                .iter()
                .filter(|r| !new.routes.contains(r))
                .cloned()
                .collect();
            *routes = new.routes.clone();
            (added, removed)
        };
        for url in &removed {
            if let Some(link) = self.route_links.lock().remove(url) {
                link.close("route removed");
            }
        }
        for url in &added {
            self.spawn_dialer(url.clone(), None);
        }
        if !added.is_empty() || !removed.is_empty() {
            changes.push(format!(
                "cluster routes (added {added:?}, removed {removed:?})"
            ));
        }
        let mut peers = new.peers.clone();
        peers.sort();
        let mut old = self.current_peers.lock();
        if *old != peers {
            self.endpoint
                .set_allowed_peers(&peers)
                .map_err(|e| e.to_string())?;
            let refused: Vec<_> = self
                .by_node
                .lock()
                .values()
                .filter(|l| !self.endpoint.allows_peer(&l.node_id))
                .cloned()
                .collect();
            for link in refused {
                tracing::info!(
                    "Closing route to {} ({}): no longer among the allowed peers",
                    link.server_name,
                    link.node_id
                );
                link.quic.close("peer no longer allowed");
            }
            if peers.is_empty() {
                if let Some(bound) = self.local_addr() {
                    warn_open(bound);
                }
            }
            changes.push(format!(
                "cluster authorization peers ({} keys)",
                peers.len()
            ));
            *old = peers;
        }
        Ok(changes)
    }
}
