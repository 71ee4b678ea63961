//! The bounded set of query names that get their own rows: the top names by queries.
//!
//! How: a map name → (queries, admission sequence) plus a min-heap holding exactly one entry
//! per name. Heap entries are lazy: an entry's count may be older (lower) than the name's
//! count, never higher. To evict, the minimum is popped; if its count is stale it is pushed
//! back with the current count and the next minimum is tried, so an entry is only re-pushed
//! after its name was queried again. Eviction therefore costs O(log n) amortised over the
//! queries, never a scan of all names. Ties go to the earliest admitted name.
//!
//! Limits: counts are totals since admission (a name evicted and admitted again starts at 1),
//! so a name that was heavy long ago keeps its place until enough newer names outgrow it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// What [`Names::count`] did with a query's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The name has (or now has) its own rows; `evicted` left the set to make room.
    Admitted { evicted: Option<String> },
    /// No room at all (a set of size 0): the query counts under `other`.
    Refused,
}

/// At most `max` names, the least-queried evicted first.
#[derive(Debug)]
pub struct Names {
    max: usize,
    /// Queries per name.
    entries: HashMap<String, u64>,
    /// `(queries when pushed, seq, name)`, smallest first; one entry per name.
    heap: BinaryHeap<Reverse<(u64, u64, String)>>,
    next_seq: u64,
    /// Heap pushes and pops so far (the work eviction did; tests bound it).
    steps: u64,
}

impl Names {
    pub fn new(max: usize) -> Self {
        Names { max, entries: HashMap::new(), heap: BinaryHeap::new(), next_seq: 0, steps: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Heap operations done so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Counts one query for `name`, admitting it (and evicting the least-queried name) if new.
    pub fn count(&mut self, name: &str) -> Admission {
        if let Some(queries) = self.entries.get_mut(name) {
            *queries += 1;
            return Admission::Admitted { evicted: None };
        }
        if self.max == 0 {
            return Admission::Refused;
        }
        let evicted = if self.entries.len() >= self.max { self.evict() } else { None };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(name.to_string(), 1);
        self.heap.push(Reverse((1, seq, name.to_string())));
        self.steps += 1;
        Admission::Admitted { evicted }
    }

    /// Removes and returns the least-queried name.
    fn evict(&mut self) -> Option<String> {
        while let Some(Reverse((queries, seq, name))) = self.heap.pop() {
            self.steps += 1;
            let Some(&now) = self.entries.get(&name) else { continue };
            if now == queries {
                self.entries.remove(&name);
                return Some(name);
            }
            // Stale: queried since it was pushed. Back in with its current count.
            self.heap.push(Reverse((now, seq, name)));
            self.steps += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_queried_name_oldest_first_on_ties() {
        let mut n = Names::new(3);
        for name in ["a", "a", "a", "b", "b", "c"] {
            n.count(name);
        }
        assert_eq!(n.count("d"), Admission::Admitted { evicted: Some("c".into()) });
        // `d` (1 query) is now the least queried; `b` gains two and stays.
        n.count("b");
        assert_eq!(n.count("e"), Admission::Admitted { evicted: Some("d".into()) });
        n.count("e");
        n.count("e");
        assert_eq!(
            n.count("f"),
            Admission::Admitted { evicted: Some("a".into()) },
            "a, b, e: 3 each; a oldest"
        );
        assert!(n.contains("b") && n.contains("e") && n.contains("f") && n.len() == 3);
        assert_eq!(Names::new(0).count("x"), Admission::Refused);
    }

    #[test]
    fn a_flood_of_new_names_costs_a_bounded_number_of_steps_each() {
        const MAX: usize = 10_000;
        let mut n = Names::new(MAX);
        // A full set of names queried unevenly (each re-queried name makes one entry stale).
        for i in 0..MAX {
            for _ in 0..=(i % 5) {
                n.count(&format!("steady{i}"));
            }
        }
        let queries_so_far = n.steps();
        const FLOOD: u64 = 200_000;
        for i in 0..FLOOD {
            n.count(&format!("flood{i}"));
        }
        let flood_steps = n.steps() - queries_so_far;
        // A scan would cost MAX per new name; here: a push, a pop, and re-pushes of stale entries
        // (at most one per earlier query).
        assert!(flood_steps <= 3 * FLOOD + 3 * MAX as u64, "{flood_steps} steps for {FLOOD} new names");
        assert_eq!(n.len(), MAX);
        assert_eq!(n.heap.len(), MAX, "one heap entry per name");
    }
}
