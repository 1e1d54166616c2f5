//! The full GETs planned on a key's line ([`super::line::Lines::plan`]): one per PpioInstance
//! at most, handed out in the order they come due.
//!
//! A plan is kept small (every PpioInstance that the key's walks keep current has one, so at
//! 10,000 PpioInstances this is 10,000 plans): the PpioInstance as one `namespace/name` text,
//! its instance id and its due time. The order is a heap; a plan dropped or replaced leaves its
//! entry there, skipped when it comes up, and such entries are cleared once they outnumber the
//! live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use super::wakes::Wake;

#[derive(Default)]
pub(super) struct Plans {
    by_object: HashMap<Arc<str>, Plan>,
    /// (due, plan number, PpioInstance); the number tells a live entry from a stale one and
    /// keeps plans due at the same instant in the order they were made.
    order: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    next: u64,
}

struct Plan {
    instance_id: Box<str>,
    due: Instant,
    number: u64,
}

/// A plan that came due: the PpioInstance and the instance id to GET.
pub(super) struct Due {
    pub object: Wake,
    pub instance_id: String,
}

impl Plans {
    /// Plans the GET of `instance_id` for `object` at `due`, in place of the one it had;
    /// whether that changed anything.
    pub fn plan(&mut self, object: &Wake, instance_id: &str, due: Instant) -> bool {
        let key = key_of(object);
        if self
            .by_object
            .get(key.as_str())
            .is_some_and(|p| p.due == due && *p.instance_id == *instance_id)
        {
            return false;
        }
        let key: Arc<str> = key.into();
        let number = self.next;
        self.next += 1;
        self.order.push(Reverse((due, number, key.clone())));
        self.by_object.insert(
            key,
            Plan {
                instance_id: instance_id.into(),
                due,
                number,
            },
        );
        self.compact();
        true
    }

    /// When the first plan is due (maybe one dropped since: then a little early).
    pub fn first_due(&self) -> Option<Instant> {
        self.order.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Drops the plan of `object`, if any.
    pub fn unplan(&mut self, object: &Wake) {
        if !self.by_object.is_empty() {
            self.by_object.remove(key_of(object).as_str());
        }
    }

    /// The next plan due at `now`, taken out; else when the next one is due (`None`: none).
    pub fn take_due(&mut self, now: Instant) -> Result<Due, Option<Instant>> {
        while let Some(Reverse((due, number, key))) = self.order.peek() {
            let live = self.by_object.get(key).is_some_and(|p| p.number == *number);
            if live && *due > now {
                return Err(Some(*due));
            }
            let Some(Reverse((_, _, key))) = self.order.pop() else {
                break;
            };
            if !live {
                continue;
            }
            if let Some(plan) = self.by_object.remove(&key) {
                return Ok(Due {
                    object: wake_of(&key),
                    instance_id: plan.instance_id.into(),
                });
            }
        }
        Err(None)
    }

    pub fn clear(&mut self) {
        self.by_object.clear();
        self.order.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }

    /// Gives back the room of plans that went (a key whose PpioInstances left it).
    pub fn shrink(&mut self) {
        if self.by_object.capacity() > 64 && self.by_object.capacity() > 4 * self.by_object.len() {
            self.by_object.shrink_to_fit();
        }
        self.compact();
    }

    /// Clears the stale entries of the order once they outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.by_object.len() + 64 {
            return;
        }
        let by_object = &self.by_object;
        self.order.retain(|Reverse((_, number, key))| {
            by_object.get(key).is_some_and(|p| p.number == *number)
        });
        self.order.shrink_to_fit();
    }
}

/// A PpioInstance as a plan keeps it: `namespace/name` (neither holds a `/`).
fn key_of(object: &Wake) -> String {
    format!(
        "{}/{}",
        object.namespace.as_deref().unwrap_or_default(),
        object.name
    )
}

fn wake_of(key: &str) -> Wake {
    match key.split_once('/') {
        Some(("", name)) => Wake::new(name),
        Some((namespace, name)) => Wake::new(name).within(namespace),
        None => Wake::new(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(name: &str) -> Wake {
        Wake::new(name).within("ns")
    }

    fn due_names(plans: &mut Plans, now: Instant) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(due) = plans.take_due(now) {
            assert_eq!(due.object.namespace.as_deref(), Some("ns"));
            assert_eq!(due.instance_id, format!("id-{}", due.object.name));
            names.push(due.object.name);
        }
        names
    }

    #[test]
    fn plans_come_due_in_order_once_each_and_a_replaced_or_dropped_one_never() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut plans = Plans::default();
        for (name, s) in [("c", 30), ("a", 10), ("b", 20), ("d", 20), ("e", 5)] {
            plans.plan(&object(name), &format!("id-{name}"), at(s));
        }
        // Replaced by a later one, and dropped.
        plans.plan(&object("a"), "id-a", at(40));
        plans.unplan(&object("e"));
        assert_eq!(plans.take_due(at(0)).err(), Some(Some(at(20))));
        assert_eq!(due_names(&mut plans, at(25)), ["b", "d"]);
        assert_eq!(due_names(&mut plans, at(100)), ["c", "a"]);
        assert!(plans.is_empty());
        assert_eq!(plans.take_due(at(100)).err(), Some(None));
        // The same plan made again changes nothing.
        plans.plan(&object("f"), "id-f", at(200));
        plans.plan(&object("f"), "id-f", at(200));
        assert_eq!(plans.order.len(), 1);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let t0 = Instant::now();
        let mut plans = Plans::default();
        for round in 0..1000u64 {
            for name in ["a", "b"] {
                plans.plan(&object(name), "id", t0 + Duration::from_secs(round));
            }
        }
        assert!(plans.order.len() <= 2 * 2 + 64 + 1, "{}", plans.order.len());
    }
}
