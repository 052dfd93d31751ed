//! Group membership: which local members each group has. One map type for
//! model groups (members are channels) and custom groups (members are
//! receivers). The layer is told `listen` when a group gains its first
//! local member and `unlisten` when it loses its last, while the map's
//! lock is held, so it hears them in exactly the order membership changed
//! (the ordering rule, see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard};

use crate::layer::ChannelLayer;

/// The local members of each group, by member id.
pub(crate) struct Membership<M> {
    groups: RwLock<HashMap<String, HashMap<u64, M>>>,
}

impl<M> Default for Membership<M> {
    fn default() -> Self {
        Membership { groups: RwLock::default() }
    }
}

impl<M> Membership<M> {
    /// Adds member `id` to `group`; its first local member makes `layer` listen.
    pub(crate) fn join(&self, layer: &dyn ChannelLayer, group: &str, id: u64, member: M) {
        let mut groups = self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let members = groups.entry(group.to_owned()).or_default();
        members.insert(id, member);
        if members.len() == 1 {
            layer.listen(group);
        }
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
    pub(crate) fn members(&self) -> RwLockReadGuard<'_, HashMap<String, HashMap<u64, M>>> {
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
