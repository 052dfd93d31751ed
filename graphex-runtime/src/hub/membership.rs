//! Group membership: which local members each group has. One map type for
//! model groups (members are channels) and custom groups (members are
//! receivers). The layer is told `listen` when a group gains its first
//! local member and `unlisten` when it loses its last, while the map's
//! lock is held, so it hears them in exactly the order membership changed
//! (the ordering rule, see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::layer::ChannelLayer;

/// The local members of each group, by member id. A group's name is one
/// shared `Arc<str>` while it has members ([`Membership::join`] gives it
/// out), so that what is dispatched to it and the subscriptions on it can
/// be matched by pointer.
pub(crate) struct Membership<M> {
    groups: RwLock<HashMap<Arc<str>, HashMap<u64, M>>>,
}

impl<M> Default for Membership<M> {
    fn default() -> Self {
        Membership { groups: RwLock::default() }
    }
}

impl<M> Membership<M> {
    /// Adds member `id` to `group`; its first local member makes `layer`
    /// listen. Returns the group's shared name.
    pub(crate) fn join(&self, layer: &dyn ChannelLayer, group: &str, id: u64, member: M) -> Arc<str> {
        let mut groups = self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = match groups.get_key_value(group) {
            Some((name, _)) => name.clone(),
            None => Arc::from(group),
        };
        let members = groups.entry(name.clone()).or_default();
        members.insert(id, member);
        if members.len() == 1 {
            layer.listen(group);
        }
        name
    }

    /// Removes member `id` from `group`; its last local member leaving makes `layer` unlisten.
    pub(crate) fn leave(&self, layer: &dyn ChannelLayer, group: &str, id: u64) {
        let mut groups = self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(members) = groups.get_mut(group) else { return };
        members.remove(&id);
        if members.is_empty() {
            groups.remove(group);
            layer.unlisten(group);
        }
    }

    /// The members of `group`, read-locked while the caller fans out (never across `.await`).
    pub(crate) fn members(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, HashMap<u64, M>>> {
        self.groups.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of groups with local members.
    pub(crate) fn group_count(&self) -> usize {
        self.members().len()
    }

    /// Number of local members of `group`.
    pub(crate) fn group_size(&self, group: &str) -> usize {
        self.members().get(group).map_or(0, HashMap::len)
    }
}
