//! A small min-cost flow solver (successive shortest paths, Bellman–Ford in queue form), the
//! engine under the balance planner: bytes flow from (category, instance) groups to the
//! instances that end up holding them, and the costs say what is preferred.
//!
//! Costs may be negative on arcs out of the source's side of an acyclic network (the planner's
//! "reward" for filling an instance up to its lower bound); since the network it builds has
//! no cycle, the residual graph never holds a negative cycle and each shortest path is exact.

use std::collections::VecDeque;

/// Arc costs and distances (per unit of flow).
pub type Cost = i64;

/// A directed network with capacities and per-unit costs.
#[derive(Debug, Clone, Default)]
pub struct Network {
    to: Vec<usize>,
    cap: Vec<i64>,
    cost: Vec<Cost>,
    out: Vec<Vec<usize>>,
}

/// Handle of an arc, to read its flow after solving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arc(usize);

impl Network {
    /// A network of `nodes` nodes and no arcs.
    pub fn new(nodes: usize) -> Self {
        Self {
            out: vec![Vec::new(); nodes],
            ..Self::default()
        }
    }

    /// Adds a node; returns its index.
    pub fn node(&mut self) -> usize {
        self.out.push(Vec::new());
        self.out.len() - 1
    }

    /// Adds an arc `from → to` carrying up to `cap` units at `cost` each.
    pub fn arc(&mut self, from: usize, to: usize, cap: i64, cost: Cost) -> Arc {
        let id = self.to.len();
        self.to.push(to);
        self.cap.push(cap.max(0));
        self.cost.push(cost);
        self.out[from].push(id);
        self.to.push(from);
        self.cap.push(0);
        self.cost.push(-cost);
        self.out[to].push(id + 1);
        Arc(id)
    }

    /// Flow on `arc` (after [`Network::solve`]).
    pub fn flow(&self, arc: Arc) -> i64 {
        self.cap[arc.0 + 1]
    }

    /// Sends up to `limit` units from `source` to `sink` at the least total cost; returns the
    /// units sent.
    pub fn solve(&mut self, source: usize, sink: usize, limit: i64) -> i64 {
        let n = self.out.len();
        let mut sent = 0i64;
        while sent < limit {
            // Shortest path by cost in the residual network.
            let mut dist = vec![Cost::MAX; n];
            let mut via = vec![usize::MAX; n];
            let mut queued = vec![false; n];
            let mut queue = VecDeque::new();
            dist[source] = 0;
            queue.push_back(source);
            queued[source] = true;
            while let Some(u) = queue.pop_front() {
                queued[u] = false;
                for &e in &self.out[u] {
                    if self.cap[e] == 0 {
                        continue;
                    }
                    let v = self.to[e];
                    let d = dist[u].saturating_add(self.cost[e]);
                    if d < dist[v] {
                        dist[v] = d;
                        via[v] = e;
                        if !queued[v] {
                            queued[v] = true;
                            queue.push_back(v);
                        }
                    }
                }
            }
            if dist[sink] == Cost::MAX {
                break;
            }
            // The bottleneck along it.
            let mut push = limit - sent;
            let mut v = sink;
            while v != source {
                let e = via[v];
                push = push.min(self.cap[e]);
                v = self.to[e ^ 1];
            }
            let mut v = sink;
            while v != source {
                let e = via[v];
                self.cap[e] -= push;
                self.cap[e ^ 1] += push;
                v = self.to[e ^ 1];
            }
            sent += push;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_route_is_taken_first() {
        // s → a → t costs 1, s → b → t costs 3; a carries only 4.
        let mut g = Network::new(4);
        let (s, a, b, t) = (0, 1, 2, 3);
        let sa = g.arc(s, a, 4, 0);
        let sb = g.arc(s, b, 10, 2);
        g.arc(a, t, 10, 1);
        g.arc(b, t, 10, 1);
        assert_eq!(g.solve(s, t, 6), 6);
        assert_eq!((g.flow(sa), g.flow(sb)), (4, 2));
    }

    #[test]
    fn flow_is_rerouted_through_reverse_arcs() {
        // The classic case where the first shortest path must be partly undone.
        let mut g = Network::new(4);
        let (s, a, b, t) = (0, 1, 2, 3);
        g.arc(s, a, 1, 1);
        g.arc(s, b, 1, 5);
        let ab = g.arc(a, b, 1, 1);
        g.arc(a, t, 1, 5);
        g.arc(b, t, 1, 1);
        assert_eq!(g.solve(s, t, 2), 2);
        // Cost 1+5 + 5+1 = 12 with a → b unused, not 1+1+1 then a stuck.
        assert_eq!(g.flow(ab), 0);
    }

    #[test]
    fn negative_rewards_are_collected_up_to_their_capacity() {
        let mut g = Network::new(3);
        let (s, x, t) = (0, 1, 2);
        g.arc(s, x, 10, 0);
        let reward = g.arc(x, t, 3, -100);
        let rest = g.arc(x, t, i64::MAX / 4, 0);
        assert_eq!(g.solve(s, t, 10), 10);
        assert_eq!((g.flow(reward), g.flow(rest)), (3, 7));
    }
}
