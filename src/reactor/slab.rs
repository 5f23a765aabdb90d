//! A reactor's subscribers by [`SubscriberId`]: a slot vector whose freed slots are reused
//! under a new generation, so an id kept past its subscriber's close (a timer entry, a backend
//! completion, an async-event message) finds nothing instead of the slot's next occupant.

use crate::transport::subscriber::SubscriberId;

/// The one index a slab never hands out, left for the reactor's own tokens.
pub const RESERVED_INDEX: u32 = u32::MAX;

#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Indexes of empty slots, most recently freed last (reused first, while cache-warm).
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u16,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores what `make` builds from its id; `None` once every index but
    /// [`RESERVED_INDEX`] is taken.
    pub fn insert_with(&mut self, make: impl FnOnce(SubscriberId) -> T) -> Option<SubscriberId> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i != RESERVED_INDEX)?;
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                index
            }
        };
        let slot = self.slots.get_mut(usize::try_from(index).ok()?)?;
        let id = SubscriberId {
            index,
            generation: slot.generation,
        };
        slot.value = Some(make(id));
        self.len += 1;
        Some(id)
    }

    /// The value `id` names, if it is still there.
    pub fn get_mut(&mut self, id: SubscriberId) -> Option<&mut T> {
        let slot = self.slots.get_mut(usize::try_from(id.index).ok()?)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// Takes the value `id` names out; its slot is reused under the next generation.
    pub fn remove(&mut self, id: SubscriberId) -> Option<T> {
        let slot = self.slots.get_mut(usize::try_from(id.index).ok()?)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value with its id, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (SubscriberId, &T)> {
        self.slots.iter().zip(0u32..).filter_map(|(slot, index)| {
            let id = SubscriberId {
                index,
                generation: slot.generation,
            };
            Some((id, slot.value.as_ref()?))
        })
    }

    /// The ids of the values `pick` chooses.
    pub fn ids_where(&self, mut pick: impl FnMut(&T) -> bool) -> Vec<SubscriberId> {
        self.slots
            .iter()
            .zip(0u32..)
            .filter_map(|(slot, index)| {
                let value = slot.value.as_ref()?;
                pick(value).then_some(SubscriberId {
                    index,
                    generation: slot.generation,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_is_reused_under_a_new_generation() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| "a").expect("room");
        let b = slab.insert_with(|_| "b").expect("room");
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(slab.remove(a), Some("a"));
        let c = slab.insert_with(|_| "c").expect("room");
        assert_eq!(c.index, a.index);
        assert_ne!(c.generation, a.generation);
        assert_eq!(slab.ids_where(|_| true), vec![c, b]);
    }

    #[test]
    fn stale_ids_find_nothing() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| 1).expect("room");
        slab.remove(a);
        let b = slab.insert_with(|_| 2).expect("room");
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.remove(a), None, "a stale id removes nothing");
        assert_eq!(slab.get_mut(b), Some(&mut 2));
        let unknown = SubscriberId {
            index: 9,
            generation: 0,
        };
        assert_eq!(slab.get_mut(unknown), None);
        assert_eq!(slab.remove(b), Some(2));
        assert!(slab.is_empty());
    }

    #[test]
    fn the_value_is_built_knowing_its_id() {
        let mut slab = Slab::default();
        let id = slab.insert_with(|id| id).expect("room");
        assert_eq!(slab.get_mut(id).copied(), Some(id));
    }

    #[test]
    fn generations_wrap_and_ids_where_names_live_values() {
        let mut slab = Slab::default();
        let mut id = slab.insert_with(|_| 0u32).expect("room");
        for _ in 0..=u32::from(u16::MAX) {
            slab.remove(id);
            id = slab.insert_with(|_| 0).expect("room");
        }
        assert_eq!(id.index, 0);
        assert_eq!(id.generation, 0, "65536 reuses wrap the generation");
        let odd = slab.insert_with(|_| 1).expect("room");
        assert_eq!(slab.ids_where(|v| *v == 1), vec![odd]);
    }
}
