//! The copy: counting what is left, moving keys in budgeted batches (tombstones and urgent
//! keys first), checkpointed range scans, the sweep of what batches left behind, pacing, and
//! the cleanup once the table no longer routes by the sources.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::cache_policy::rebalance_step;
use crate::redis::keys::{
    GENTLE_SCAN_COUNT, RESERVED_PREFIX, RangeScan, SCAN_COUNT, ScanCheckpoint, in_ranges,
    range_holding,
};
use crate::redis::protocol::heartbeat::{self, HEARTBEAT_EVERY};
use crate::redis::protocol::names;
use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::SlotRange;

use super::batch::{BATCHES_IN_FLIGHT, BatchOutcome, Batcher, GENTLE_BATCH_KEYS, Share};
use super::control::{COUNT_EVERY_MIN, URGENT_EVERY, count_every};
use super::pacing::Adjustment;
use super::{Error, Instance, Job};

/// How often the copy saves its scan position: an attempt that replaces a failed one rescans
/// from there (keys already moved are found absent), so saving after every batch (a round
/// trip that held the copy up each time) buys nothing.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How long the pacing waits for an instance's latency reports.
const LATENCY_READ_TIMEOUT: Duration = Duration::from_millis(250);

/// Scan pages read ahead of the batches.
const PAGES_AHEAD: usize = 2;

/// Scans the `wanted` ranges (each of a category) on `source` from `checkpoint` in a task of
/// its own, so that the next page is there when a batch slot frees: each page's keys and the
/// position after it; the channel closes at the end of the scan (or when the copy stops
/// listening).
fn scan_ahead(
    resolver: Resolver,
    wanted: Vec<(CategoryId, SlotRange)>,
    checkpoint: ScanCheckpoint,
    mut source: Instance,
    page_size: Arc<AtomicUsize>,
) -> mpsc::Receiver<Result<(Vec<Bytes>, ScanCheckpoint), Error>> {
    let (tx, rx) = mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        let mut scan = RangeScan::resume_wanted(&resolver, &wanted, checkpoint);
        loop {
            scan.set_count(page_size.load(Ordering::Relaxed));
            let page = match scan.next_batch(&mut source.conn).await {
                Ok(Some(keys)) => Ok((
                    keys.into_iter().map(Bytes::from).collect(),
                    scan.checkpoint(),
                )),
                Ok(None) => return,
                Err(e) => Err(source.err(&e)),
            };
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// A source and a target of the plan's moves: the copy walks the source once for all the
/// moves between the two.
struct Pair {
    from: String,
    to: String,
    /// The category and range of each of the pair's moves.
    wanted: Vec<(CategoryId, SlotRange)>,
}

impl Job {
    /// Keys left to move in every range (for progress). One walk of each source's keyspace
    /// (`SCAN` unfiltered, the keys classified here), not one per move and key prefix: a drain
    /// of the shop's five categories walked the source seven times, back to back, while
    /// every command of the moving ranges already went through the guard there.
    pub(super) async fn count(&mut self) -> Result<u64, Error> {
        let resolver = self.resolver.clone();
        let mut total = 0;
        for from in self.sources() {
            let moves = self.moves_from(&from);
            let mut roster = self.start_roster(&from).await;
            let mut cursor = 0u64;
            loop {
                let started = Instant::now();
                let source = self.instance(&from)?;
                let (next, keys) =
                    crate::redis::keys::scan_page(&mut source.conn, cursor, b"*", SCAN_COUNT)
                        .await
                        .map_err(|e| source.err(&e))?;
                total += keys
                    .iter()
                    .filter(|k| move_of(&resolver, &moves, k).is_some())
                    .count() as u64;
                if let Some(roster) = &mut roster {
                    // Every key, not only the moving ranges': what the roster lacks, the
                    // source does not hold, whatever category a sidecar finds it in. A key in
                    // transit (an earlier attempt's tombstone) counts as held: the guard
                    // answers `BUSY` for it until it is restored.
                    for k in &keys {
                        match names::key_of_tomb(k) {
                            Some(key) => roster.insert(key),
                            None if !k.starts_with(RESERVED_PREFIX) => roster.insert(k),
                            None => {}
                        }
                    }
                }
                if next == 0 {
                    if let Some(roster) = &roster {
                        self.keep_roster(&from, roster).await?;
                    }
                    break;
                }
                cursor = next;
                self.yield_to_traffic(started.elapsed()).await?;
                // The sources import already: a command the guard sent to a target marked its
                // slot groups moving, and a script of theirs waits for them (`groups.rs`).
                if self.urgent_read.elapsed() >= URGENT_EVERY {
                    self.urgent().await?;
                }
            }
        }
        Ok(total)
    }

    /// Whether some sidecar has sent the moving instances traffic during this Job
    /// (`pacing: Adaptive`): the Job's scans then go gently.
    pub(super) fn beside_traffic(&self) -> bool {
        self.pacing
            .as_ref()
            .is_some_and(super::pacing::Pacing::beside_traffic)
    }

    /// Whether the copy's move scripts go gently (small, one at a time: `batch.rs`): while
    /// some sidecar sends the moving instances traffic (`pacing: Adaptive`). Unlike
    /// [`Job::beside_traffic`], not for the rest of the Job once one did: small scripts cap a
    /// copy at 16 keys per round trip to a source.
    fn copies_gently(&self) -> bool {
        self.pacing
            .as_ref()
            .is_some_and(super::pacing::Pacing::hears_traffic)
    }

    /// How much of the moving instances the copy's scripts may hold now (`batch.rs`).
    fn script_share(&self) -> Share {
        if self.copies_gently() {
            Share::Gentle
        } else if self
            .pacing
            .as_ref()
            .is_some_and(super::pacing::Pacing::known_quiet)
        {
            Share::Idle
        } else {
            Share::Bulk
        }
    }

    /// Keys each `SCAN` page of the copy asks for: fewer once some sidecar has sent the moving
    /// instances traffic during this Job (`pacing: Adaptive`), so that a page holds a source
    /// for about a tenth of a millisecond, not one (a command that arrives meanwhile waits
    /// behind it; a paced copy needs few keys per second anyway). The walks outside the copy
    /// keep [`SCAN_COUNT`]: the count and the sweeps yield after each page instead, and ten
    /// times the round trips would make a sweep's pass, and the tombstone walk that clients
    /// wait on, ten times longer where round trips are slow.
    pub(super) fn scan_count(&self) -> usize {
        if self.beside_traffic() {
            GENTLE_SCAN_COUNT
        } else {
            SCAN_COUNT
        }
    }

    /// After a scan page outside the copy (the count, the sweeps' range scans) that took
    /// `took`: once some sidecar has sent the moving instances traffic during this Job
    /// (`pacing: Adaptive`), waits as long again, so that these scans hold a source at most
    /// half the time; they are not paced otherwise. The keys sidecars ask for move meanwhile,
    /// every [`URGENT_EVERY`], as while the copy is paused (a client waits on them).
    async fn yield_to_traffic(&mut self, took: Duration) -> Result<(), Error> {
        if !self.beside_traffic() {
            return Ok(());
        }
        let until = Instant::now() + took;
        loop {
            if self.urgent_read.elapsed() >= URGENT_EVERY {
                self.urgent().await?;
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(URGENT_EVERY)).await;
        }
    }

    /// The scan checkpoint of the moves from `from` to `to` (one walk of the source copies
    /// them all), named after the two instances (not the moves' positions: the operator
    /// removes the moves of a plan whose source or target became unreachable, all of a pair's
    /// at once, and the other pairs go on with their checkpoints). A checkpoint that skipped
    /// keys of a move would delay them, never lose them: the sweep rescans every range until
    /// nothing of it is left on its source.
    fn checkpoint_key(&self, from: &str, to: &str) -> String {
        format!(
            "redisfleet:checkpoint:{}/{}:{}:{from}:{to}",
            self.config.namespace, self.config.policy, self.config.plan_id,
        )
    }

    /// The sources and targets of the moves, each pair once, in the order of their first
    /// move.
    fn pairs(&self) -> Vec<Pair> {
        let mut pairs: Vec<Pair> = Vec::new();
        for s in &self.steps {
            let wanted = (s.category, s.range);
            match pairs.iter_mut().find(|p| p.from == s.from && p.to == s.to) {
                Some(pair) => pair.wanted.push(wanted),
                None => pairs.push(Pair {
                    from: s.from.clone(),
                    to: s.to.clone(),
                    wanted: vec![wanted],
                }),
            }
        }
        pairs
    }

    pub(super) async fn copy(&mut self) -> Result<(), Error> {
        // Keys earlier attempts left in transit, and keys sidecars wait for, come first.
        self.leftovers().await?;
        self.read_control_first().await?;
        let resolver = self.resolver.clone();
        // One walk of a source per target (one per prefix when the pair moves ranges of a
        // single category): a drain of the shop's nine categories walked it eleven times
        // (once per category prefix), each walk visiting every key left there.
        for Pair { from, to, wanted } in self.pairs() {
            let key = self.checkpoint_key(&from, &to);
            let source = self.instance(&from)?;
            let saved: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            let checkpoint = saved
                .as_deref()
                .and_then(parse_checkpoint)
                .unwrap_or_default();
            if checkpoint != ScanCheckpoint::default() {
                info!(%from, %to, ?checkpoint, "resuming from the checkpoint");
            }
            let batcher = self.batcher(&from, &to, true)?;
            let source = self.instance(&from)?.clone();
            let page_size = Arc::new(AtomicUsize::new(self.scan_count()));
            let mut scanned = scan_ahead(
                resolver.clone(),
                wanted,
                checkpoint,
                source,
                page_size.clone(),
            );
            // Batches in flight, in scan order: the source takes the next ones while the
            // target restores earlier ones. A scan position is checkpointed once every batch
            // before it has landed.
            let mut in_flight = futures::stream::FuturesOrdered::new();
            // Batches scanned but not sent yet, each with the scan position to checkpoint
            // once it has landed (the last batch of a scan step).
            let mut pending: VecDeque<(Vec<Bytes>, Option<ScanCheckpoint>)> = VecDeque::new();
            let mut scanned_all = false;
            // The newest position every batch before has landed at, not saved yet.
            let mut landed: Option<ScanCheckpoint> = None;
            let mut saved = Instant::now();
            // Keys sidecars wait for move even while the oldest batch has not landed.
            let mut urgent_tick = tokio::time::interval(URGENT_EVERY);
            urgent_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                self.pace_by_latency(true).await?;
                if self.copying_owed && self.report_beside(rebalance_step::COPYING)? {
                    self.copying_owed = false;
                }
                page_size.store(self.scan_count(), Ordering::Relaxed);
                // Slot groups a script waits for move with no batch in flight: a batch could
                // rename a key of theirs while the walk for them passes (it would find neither
                // name), and a key in transit could land after the group counts as moved.
                if !self.groups_asked.is_empty() && in_flight.is_empty() {
                    self.move_asked_groups().await?;
                }
                let groups_asked = !self.groups_asked.is_empty();
                // When the rate lets the next batch go, if it holds it back now.
                let mut due: Option<Instant> = None;
                while in_flight.len() < BATCHES_IN_FLIGHT && !pending.is_empty() && !groups_asked {
                    if self.pause_requested().await? {
                        if !in_flight.is_empty() {
                            // Pause with no key in transit: land what is in flight first.
                            break;
                        }
                        self.hold().await?;
                    }
                    if let Some(wait) = self.pace() {
                        // Land (and report) what is in flight, and move the keys sidecars
                        // ask for, while the rate holds the next batch back.
                        due = Some(Instant::now() + wait);
                        break;
                    }
                    let Some((chunk, at)) = pending.pop_front() else {
                        break;
                    };
                    let chunk = self.in_transit.claim(&chunk);
                    if chunk.is_empty() {
                        // Every key is another batch's already: only the position moves.
                        in_flight.push_back(tokio::spawn(futures::future::ready(Ok((
                            BatchOutcome::default(),
                            at,
                        )))));
                        continue;
                    }
                    self.launched += chunk.len() as u64;
                    let mut batcher = batcher.clone();
                    // Traffic may have come, or gone, since the step began.
                    batcher.share = self.script_share();
                    // A task of its own: a batch holds keys in transit, so it runs to the end
                    // while the Job paces, checkpoints or reports.
                    in_flight.push_back(tokio::spawn(async move {
                        batcher.move_batch(chunk).await.map(|o| (o, at))
                    }));
                }
                // The next scan page is taken once the pages before are all sent, so that
                // positions land in scan order.
                // (An empty page takes a place in flight too, so the scan never runs ahead of
                // the batches by more than their number.)
                let wants_page = pending.is_empty()
                    && !scanned_all
                    && in_flight.len() < BATCHES_IN_FLIGHT
                    && !groups_asked;
                if in_flight.is_empty() && pending.is_empty() && !wants_page {
                    break;
                }
                let paced = tokio::time::Instant::from_std(due.unwrap_or_else(Instant::now));
                tokio::select! {
                    () = tokio::time::sleep_until(paced), if due.is_some() => {}
                    _ = urgent_tick.tick() => {
                        if self.urgent_read.elapsed() >= URGENT_EVERY {
                            self.urgent_keys().await?;
                            self.ask_groups().await?;
                        }
                    }
                    page = scanned.recv(), if wants_page => match page {
                        None => scanned_all = true,
                        Some(Err(e)) => return Err(e),
                        Some(Ok((keys, position))) if keys.is_empty() => {
                            // Nothing of the range in this stretch: only the position moves.
                            in_flight.push_back(tokio::spawn(futures::future::ready(Ok((
                                BatchOutcome::default(),
                                Some(position),
                            )))));
                        }
                        Some(Ok((keys, position))) => {
                            let chunks: Vec<Vec<Bytes>> =
                                keys.chunks(self.chunk_size()).map(<[_]>::to_vec).collect();
                            let last = chunks.len().saturating_sub(1);
                            for (n, chunk) in chunks.into_iter().enumerate() {
                                pending.push_back((chunk, (n == last).then_some(position)));
                            }
                        }
                    },
                    Some(done) = futures::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {
                        let (outcome, position) = done.map_err(|e| {
                            Error::Internal(format!("a batch of the copy failed: {e}"))
                        })??;
                        self.moved += self.settle(&from, &to, outcome).await?;
                        if position.is_some() {
                            landed = position;
                        }
                        if saved.elapsed() >= CHECKPOINT_EVERY
                            && let Some(cp) = landed.take()
                        {
                            self.save_checkpoint(&from, &key, cp).await?;
                            saved = Instant::now();
                        }
                        // Beside the copy: an API server that takes its time delays the
                        // status, not the keys sidecars wait for.
                        if self.count_due() && self.report_beside(rebalance_step::COPYING)? {
                            self.first_count = false;
                        }
                    }
                }
            }
            if let Some(cp) = landed {
                self.save_checkpoint(&from, &key, cp).await?;
            }
        }
        Ok(())
    }

    /// Saves where the scan of a move stands (every batch before it landed).
    async fn save_checkpoint(
        &mut self,
        from: &str,
        key: &str,
        cp: ScanCheckpoint,
    ) -> Result<(), Error> {
        let source = self.instance(from)?;
        redis::cmd("SET")
            .arg(key)
            .arg(format!("{}:{}", cp.pattern, cp.cursor))
            .arg("EX")
            .arg(86_400)
            .query_async(&mut source.conn)
            .await
            .map_err(|e| source.err(&e))
    }

    /// Moves the keys sidecars asked for (a command touched moved and unmoved keys at once),
    /// and the slot groups they asked for whole (a script waits on them: `groups.rs`).
    /// The keys and the slot groups sidecars asked for. Call with no batch of the copy in
    /// flight (see [`Job::move_asked_groups`]).
    pub(super) async fn urgent(&mut self) -> Result<(), Error> {
        self.urgent_keys().await?;
        self.ask_groups().await?;
        self.move_asked_groups().await
    }

    /// Moves the keys sidecars asked for, except those a batch of the copy has under way
    /// (they land in a moment, and the sidecar asks again if it must).
    pub(super) async fn urgent_keys(&mut self) -> Result<(), Error> {
        self.urgent_read = Instant::now();
        let resolver = self.resolver.clone();
        let list = names::urgent(&self.mover.policy);
        for from in self.sources() {
            let source = self.instance(&from)?;
            let popped: Option<Vec<Vec<u8>>> = redis::cmd("LPOP")
                .arg(&list)
                .arg(512)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            let Some(popped) = popped else { continue };
            let work: Vec<(String, Vec<Bytes>)> = self
                .steps
                .iter()
                .filter(|s| s.from == from)
                .map(|s| {
                    let keys = popped
                        .iter()
                        .filter(|k| in_ranges(&resolver, s.category, &[s.range], k))
                        .map(|k| Bytes::copy_from_slice(k))
                        .collect();
                    (s.to.clone(), keys)
                })
                .collect();
            for (to, keys) in work {
                self.move_keys(&from, &to, &keys).await?;
            }
        }
        Ok(())
    }

    /// Moves the keys of the ranges still in transit (tombstones of an earlier attempt) and
    /// the urgent ones; how many there were. One walk of each source for its tombstones, the
    /// keys sorted into its moves here.
    async fn leftovers(&mut self) -> Result<usize, Error> {
        let resolver = self.resolver.clone();
        let pattern = crate::redis::keys::prefix_pattern(names::TOMB_PREFIX);
        let mut found = 0;
        for from in self.sources() {
            let moves = self.moves_from(&from);
            let mut keys: Vec<Vec<Bytes>> = vec![Vec::new(); moves.len()];
            let mut cursor = 0u64;
            // Not yielded like the other scans outside the copy: the keys it finds are in
            // transit, and their clients get `-REDISFLEET-BUSY` until they move.
            loop {
                let source = self.instance(&from)?;
                let (next, batch) =
                    crate::redis::keys::scan_page(&mut source.conn, cursor, &pattern, SCAN_COUNT)
                        .await
                        .map_err(|e| source.err(&e))?;
                for tomb in batch {
                    let Some(key) = names::key_of_tomb(&tomb) else {
                        continue;
                    };
                    if let Some(m) = move_of(&resolver, &moves, key) {
                        keys[m].push(Bytes::copy_from_slice(key));
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            for ((_, _, to), keys) in moves.iter().zip(keys) {
                found += keys.len();
                self.move_keys(&from, to, &keys).await?;
            }
        }
        self.urgent().await?;
        Ok(found)
    }

    /// The moves out of `from`: category, range and target of each.
    pub(super) fn moves_from(&self, from: &str) -> Vec<(CategoryId, SlotRange, String)> {
        self.steps
            .iter()
            .filter(|s| s.from == from)
            .map(|s| (s.category, s.range, s.to.clone()))
            .collect()
    }

    /// The moves' sources, each once, in order.
    pub(super) fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self.steps.iter().map(|s| s.from.clone()).collect();
        sources.sort();
        sources.dedup();
        sources
    }

    /// Rescans every range until nothing of it is left on the sources: no key (new keys only
    /// appear there if every key of their command was there, or by a script of a slot group
    /// the move had not touched) and no tombstone. Every group counts as moving from its
    /// start (no script creates a key on a source from then on), and as moved once a pass
    /// found nothing.
    pub(super) async fn sweep(&mut self) -> Result<(), Error> {
        self.close_groups().await?;
        self.sweep_passes().await?;
        self.groups_moved().await
    }

    async fn sweep_passes(&mut self) -> Result<(), Error> {
        let resolver = self.resolver.clone();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut found = self.leftovers().await?;
            // One walk of each source for all its moves (one per prefix when they are ranges of a
            // single category), the keys sorted into them here.
            for from in self.sources() {
                let moves = self.moves_from(&from);
                let wanted: Vec<(CategoryId, SlotRange)> =
                    moves.iter().map(|(c, r, _)| (*c, *r)).collect();
                let mut keys: Vec<Vec<Bytes>> = vec![Vec::new(); moves.len()];
                let mut scan =
                    RangeScan::resume_wanted(&resolver, &wanted, ScanCheckpoint::default());
                loop {
                    let started = Instant::now();
                    let source = self.instance(&from)?;
                    let Some(batch) = scan
                        .next_batch(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?
                    else {
                        break;
                    };
                    for key in batch {
                        if let Some(m) = move_of(&resolver, &moves, &key) {
                            keys[m].push(Bytes::from(key));
                        }
                    }
                    if !scan.is_done() {
                        self.yield_to_traffic(started.elapsed()).await?;
                    }
                    // Once the copy is over every script of a moving range waits for its
                    // groups (`groups.rs`): they move as the copy would move them.
                    if self.urgent_read.elapsed() >= URGENT_EVERY {
                        self.urgent().await?;
                    }
                }
                for ((_, _, to), keys) in moves.iter().zip(keys) {
                    found += keys.len();
                    self.move_keys(&from, to, &keys).await?;
                }
            }
            if found == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "{found} keys still to move after the sweep"
                )));
            }
        }
    }

    /// Once every live sidecar routes by the final table `last`, fences the sources to it,
    /// removes the importing markers (no sidecar uses the guard any more), the plan's slot
    /// group states and rosters, and what older plans left (`garbage.rs`); removes the
    /// checkpoints.
    pub(super) async fn cleanup(&mut self, last: u64) -> Result<(), Error> {
        if self.converge(last).await? {
            self.fence(last, false).await?;
            self.import(false, false).await?;
            self.remove_group_states().await?;
            self.remove_rosters().await?;
            self.remove_older_plans_keys().await?;
        } else {
            warn!(
                version = last,
                "sidecars still route by the migrating table: the importing markers, the plan's slot group states and rosters stay (they are harmless; a later plan's cleanup removes them)"
            );
        }
        for Pair { from, to, .. } in self.pairs() {
            let key = self.checkpoint_key(&from, &to);
            let source = self.instance(&from)?;
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
        }
        Ok(())
    }

    /// The copy starts or resumes: its first count, and the first note that it slowed, go
    /// soon ([`Job::count_due`]).
    pub(super) fn count_afresh(&mut self) {
        self.first_count = true;
        self.slowed_sent = false;
    }

    /// Whether the copy reports its count now: [`count_every`] after its last report, or — a
    /// second after it at least — when it first slowed for the sidecars' latency since it
    /// started or resumed, or first for another sidecar or instance (a slowdown may pass
    /// before the next count; later ones, as the pacing goes up and down, go with the count).
    fn count_due(&self) -> bool {
        let since = self.last_report.elapsed();
        since >= COUNT_EVERY_MIN
            && ((self.slowed && !self.slowed_sent)
                || since
                    >= count_every(
                        self.first_count,
                        self.moved,
                        self.total,
                        self.started.elapsed(),
                    ))
    }

    /// Keeps the copy at or below its rate (`keysPerSecond`, or slower as the pacing says):
    /// how long the next batch must wait until it fits, counting every key the copy sent
    /// before it (urgent keys, which clients wait for, are not paced).
    fn pace(&self) -> Option<Duration> {
        self.clock.wait(self.launched, Instant::now())
    }

    /// Keys per batch of the scan: `batchSize` ([`GENTLE_BATCH_KEYS`] while the scripts are
    /// gentle), but no more than a tenth of a second of the copy's rate, so that a slow copy
    /// moves a few keys often rather than a burst now and then (a key in transit makes its
    /// clients wait).
    fn chunk_size(&self) -> usize {
        let tenth = (self.clock.rate() / 10.0) as usize;
        let most = if self.copies_gently() {
            self.batch_size.min(GENTLE_BATCH_KEYS)
        } else {
            self.batch_size
        };
        most.min(tenth.max(1))
    }

    /// Reads what the sidecars report of the sources' and targets' latency (once per
    /// heartbeat) and sets the copy's rate by it (`pacing: Adaptive`). With `copying` false
    /// the reports only teach the pacing each sidecar's latency without the copy.
    pub(super) async fn pace_by_latency(&mut self, copying: bool) -> Result<(), Error> {
        if self.pacing.is_none() || (copying && self.latency_read.elapsed() < HEARTBEAT_EVERY) {
            return Ok(());
        }
        self.latency_read = Instant::now();
        let policy = self.mover.policy.clone();
        let mut reports = Vec::new();
        let mut answered = 0;
        for name in self.moving_instances() {
            let instance = self.instance(&name)?;
            // An instance that does not answer at once reports nothing this round: the copy
            // loop must not wait on it (batches land, urgent keys move meanwhile), and a dead
            // end of a move is the operator's to give up, not the pacing's.
            let read = heartbeat::read_latencies(&mut instance.conn, &policy);
            match tokio::time::timeout(LATENCY_READ_TIMEOUT, read).await {
                Ok(Ok(read)) => {
                    answered += 1;
                    reports.extend(read.into_iter().map(|(id, r)| (id, name.clone(), r)));
                }
                Ok(Err(e)) => debug!(instance = %name, error = %e, "no latency reports this round"),
                Err(_) => debug!(instance = %name, "no latency reports this round: no answer"),
            }
        }
        let Some(pacing) = self.pacing.as_mut() else {
            return Ok(());
        };
        let before = pacing.rate();
        if answered == 0 {
            // Not a round with nothing to disturb: one that could not be read. Before the copy
            // it teaches nothing (the copy's starting rate still goes on the clock).
            pacing.unread();
            if copying {
                pacing.unanswered();
                let rate = pacing.rate();
                if rate < before {
                    info!(
                        keys_per_second = rate as u64,
                        "slowed: no moving instance answered the read of the sidecars' latency"
                    );
                }
                self.slowed = true;
                self.pacing_note = Some(format!(
                    "at {} keys/s: no moving instance answered the read of the sidecars' latency in {} ms",
                    rate as u64,
                    LATENCY_READ_TIMEOUT.as_millis()
                ));
            }
            self.clock
                .set_rate(pacing.rate(), self.launched, Instant::now());
            return Ok(());
        }
        let adjustment = pacing.adjust(
            reports
                .iter()
                .map(|(id, n, r)| (id.as_str(), n.as_str(), *r)),
            copying,
        );
        let rate = pacing.rate();
        match &adjustment {
            Adjustment::Slowed(over) => {
                let note = format!(
                    "slowed to {} keys/s: {over} (budget {} µs)",
                    rate as u64, over.budget_micros
                );
                if rate != before {
                    info!(keys_per_second = rate as u64, "{note}");
                }
                let by = Some((over.sidecar.clone(), over.instance.clone()));
                if self.slowed_by != by {
                    // Another sidecar (or instance) holds the copy back: news, reported soon.
                    self.slowed_sent = false;
                    self.slowed_by = by;
                }
                self.slowed = true;
                self.pacing_note = Some(note);
            }
            Adjustment::Eased(over) => {
                debug!(
                    keys_per_second = rate as u64,
                    "easing: {over} (aim {} µs)", over.aim_micros
                );
                // `slowed` stays as it was: an ease is the copy's steering, not news worth a
                // report of its own.
                let how = if rate < before {
                    format!("easing to {} keys/s", rate as u64)
                } else {
                    format!("at its slowest, {} keys/s", rate as u64)
                };
                self.pacing_note = Some(format!(
                    "{how}: {over} (aim {} µs, budget {} µs)",
                    over.aim_micros, over.budget_micros
                ));
            }
            Adjustment::Held if rate < self.keys_per_second as f64 => {
                if rate > before {
                    debug!(
                        keys_per_second = rate as u64,
                        "the sidecars' latency is within its aim: speeding the copy up"
                    );
                    self.slowed = false;
                    self.pacing_note = Some(format!(
                        "at {} keys/s, growing while the sidecars' latency stays within its aim",
                        rate as u64
                    ));
                } else if rate < before {
                    // A sidecar began sending traffic: the copy starts gently again.
                    self.slowed = false;
                    self.pacing_note = Some(format!(
                        "at {} keys/s: a sidecar began sending traffic",
                        rate as u64
                    ));
                } else if self.pacing_note.is_none() {
                    self.pacing_note = Some(format!("at {} keys/s beside traffic", rate as u64));
                }
                // (Held at the same rate: a report over its aim once, or none new; the note
                // stays.)
            }
            Adjustment::Held => {
                if before < rate {
                    info!(
                        keys_per_second = rate as u64,
                        "the copy is back at keysPerSecond"
                    );
                }
                self.slowed = false;
                self.pacing_note = None;
            }
        }
        self.clock.set_rate(rate, self.launched, Instant::now());
        Ok(())
    }

    /// What batches from `from` to `to` need, to be cloned into each batch in flight.
    fn batcher(&mut self, from: &str, to: &str, queued: bool) -> Result<Batcher, Error> {
        let from = self.instance(from)?.clone();
        let to = self.instance(to)?.clone();
        Ok(Batcher {
            from,
            to,
            mover: self.mover.clone(),
            in_transit: self.in_transit.clone(),
            groups: self.group_prefix(),
            queued,
            share: self.script_share(),
        })
    }

    /// Moves `keys` one batch at a time (leftovers, urgent keys, the sweep); adds them to
    /// `moved`.
    pub(super) async fn move_keys(
        &mut self,
        from: &str,
        to: &str,
        keys: &[Bytes],
    ) -> Result<(), Error> {
        // A key a batch of the copy has under way is that batch's to move.
        let mut queue: Vec<Bytes> = self.in_transit.not_under_way(keys);
        while !queue.is_empty() {
            let take = queue.len().min(self.batch_size);
            let chunk: Vec<Bytes> = queue.drain(..take).collect();
            let mut outcome = self.batcher(from, to, false)?.move_batch(chunk).await?;
            queue.append(&mut outcome.later);
            self.moved += self.settle(from, to, outcome).await?;
        }
        Ok(())
    }

    /// Copies the keys a batch left for piece-by-piece copying and ends their moves; returns
    /// the keys the batch moved in all. Keys the batch left for later are moved here too.
    async fn settle(&mut self, from: &str, to: &str, outcome: BatchOutcome) -> Result<u64, Error> {
        let mut moved = outcome.moved;
        for (key, expire_at) in outcome.piecewise {
            self.copy_piecewise(from, to, &key, expire_at).await?;
            self.finish_keys(from, std::slice::from_ref(&key)).await?;
            self.in_transit.leave([&key]);
            moved += 1;
        }
        if !outcome.later.is_empty() {
            let later = outcome.later;
            Box::pin(self.move_keys(from, to, &later)).await?;
        }
        Ok(moved)
    }
}

/// Which of `moves` (from [`Job::moves_from`]) application key `key` belongs to, if any (by
/// [`range_holding`], the rule by which the scans keep their keys).
pub(super) fn move_of(
    resolver: &Resolver,
    moves: &[(CategoryId, SlotRange, String)],
    key: &[u8],
) -> Option<usize> {
    range_holding(resolver, moves.iter().map(|(c, r, _)| (*c, *r)), key)
}

pub(super) fn parse_checkpoint(text: &str) -> Option<ScanCheckpoint> {
    let (pattern, cursor) = text.split_once(':')?;
    Some(ScanCheckpoint {
        pattern: pattern.parse().ok()?,
        cursor: cursor.parse().ok()?,
    })
}
