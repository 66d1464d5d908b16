//! One lane: a pipelined connection to an instance, kept connected with backoff. A writer
//! coalesces whatever is queued into one write; a reader hands each request its reply once the
//! fleet vouches for it ([`super::super::fleet::FleetView::vouch`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::super::fleet::FleetView;
use super::super::metrics::BackendMetrics;
use super::{
    BackendError, BackendOptions, Job, LaneSetup, Naming, Replies, SendError, Slot, Stream,
    YIELD_ROUNDS, confirm_timeout, handshake, open, unconfirmed,
};
use crate::redis::resp::{FrameScanner, Limits, encode_request};
use crate::redis::stream::write_flushed;

pub(super) async fn run_lane(
    setup: LaneSetup,
    mut rx: mpsc::UnboundedReceiver<Job>,
    up: Arc<AtomicBool>,
    gate: Arc<Mutex<u64>>,
) {
    let LaneSetup {
        legacy,
        name,
        target,
        options,
        naming,
        view,
        last_error,
        metrics,
    } = setup;
    let mut backoff = options.min_backoff;
    loop {
        let connect = async {
            let mut stream = open(&target, options.connect_timeout).await?;
            let version = *gate.lock().unwrap_or_else(|e| e.into_inner());
            let greeting = handshake(&mut stream, &naming.connection(version), &naming.policy)
                .await
                .map_err(|e| format!("{}: {e}", target.address()))?;
            view.merge(&greeting.fences);
            legacy.store(greeting.legacy, Ordering::Release);
            Ok::<_, String>((stream, view.next_round()))
        };
        let attempt = tokio::select! {
            r = connect => r,
            // The backend was dropped (table changed): stop.
            () = wait_closed(&rx) => return,
        };
        match attempt {
            Ok((stream, after)) => {
                backoff = options.min_backoff;
                up.store(true, Ordering::Release);
                metrics.connections.inc();
                debug!(instance = %name, "connected");
                let outcome = pipeline(
                    &name, stream, &mut rx, &options, &metrics, &naming, &view, after,
                )
                .await;
                up.store(false, Ordering::Release);
                metrics.connections.dec();
                match outcome {
                    Ok(()) => return,
                    Err(reason) => {
                        warn!(instance = %name, %reason, "connection lost; reconnecting");
                        if let Ok(mut e) = last_error.lock() {
                            *e = reason;
                        }
                    }
                }
            }
            Err(reason) => {
                up.store(false, Ordering::Release);
                if let Ok(mut e) = last_error.lock() {
                    if *e != reason {
                        warn!(instance = %name, %reason, "cannot connect");
                    }
                    *e = reason;
                }
            }
        }
        // Fail what was queued meanwhile, then wait before the next attempt.
        let reason = last_error.lock().map(|e| e.clone()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(Job::Request { tx, .. }) => {
                        let _ = tx.send(Err(BackendError::Unavailable {
                            instance: name.clone(),
                            reason: reason.clone(),
                        }));
                    }
                    Some(Job::Rename(_)) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Hands `replies` to the request's client once they are vouched for (at once while the
/// instance's lease is fresh; otherwise a task waits for a heartbeat round).
/// `clock` is the view's clock when the replies were read.
#[allow(clippy::too_many_arguments)]
fn deliver(
    view: &Arc<FleetView>,
    name: &str,
    fence: &AtomicU64,
    lease: &AtomicU64,
    version: Option<u64>,
    clock: u64,
    tx: oneshot::Sender<Result<Replies, BackendError>>,
    replies: Replies,
) {
    let Some(version) = version else {
        let _ = tx.send(Ok(replies));
        return;
    };
    match view.check_at(fence, lease, version, clock) {
        Some(Ok(())) => {
            let _ = tx.send(Ok(replies));
        }
        Some(Err(why)) => {
            let _ = tx.send(Err(BackendError::unvouched(name, &why)));
        }
        None => {
            let view = view.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let verdict = view.vouch(&name, version).await;
                let _ = tx.send(verdict.map(|()| replies).map_err(|why| {
                    warn!(instance = %name, ?why, "withheld a reply the fleet did not vouch for");
                    BackendError::unvouched(&name, &why)
                }));
            });
        }
    }
}

/// Resolves when every sender of `rx` is gone.
async fn wait_closed(rx: &mpsc::UnboundedReceiver<Job>) {
    while !rx.is_closed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one connected lane until the connection fails (`Err`) or the backend is dropped. The
/// lane writes nothing before a heartbeat round numbered `after` or later confirmed the
/// fleet's fences (requests wait in the queue meanwhile).
#[allow(clippy::too_many_arguments)]
async fn pipeline(
    name: &str,
    stream: Stream,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    options: &BackendOptions,
    metrics: &BackendMetrics,
    naming: &Naming,
    view: &Arc<FleetView>,
    after: u64,
) -> Result<(), String> {
    let fence = view.fence_cell(name);
    let lease = view.lease_cell(name);
    if !view.confirmed(name, after, confirm_timeout(options)).await {
        return Err(unconfirmed());
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The requests written and not yet answered, oldest first: the writer pushes, the reader
    // pops (both run in this task, so the lock is never contended).
    let slots: Mutex<VecDeque<Slot>> = Mutex::new(VecDeque::new());
    let in_flight = AtomicUsize::new(0);
    let limits = Limits::replies();

    let write = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        while let Some(job) = rx.recv().await {
            // Let the other clients that are ready run first, so that their requests join this
            // write: one write (and one read on the server) for many requests is what makes
            // the proxy cheap for Redis. Like twemproxy, which writes on the next event-loop turn.
            let mut queued = rx.len();
            for _ in 0..YIELD_ROUNDS {
                tokio::task::yield_now().await;
                let now = rx.len();
                if now == queued {
                    break;
                }
                queued = now;
            }
            buf.clear();
            // One clock reading for the whole write: its requests leave together.
            let sent = Instant::now();
            let push = |job: Job, buf: &mut BytesMut, queue: &mut VecDeque<Slot>| {
                let (tx, replies, version) = match job {
                    Job::Request {
                        bytes,
                        replies,
                        version,
                        tx,
                    } => {
                        // Checked again now: a request queued while the connection was being
                        // made was admitted before its greeting and the confirming round told
                        // the fences. One of an older table than the instance's fence must
                        // not run there (chaos seed 15): it is refused, unsent.
                        if let Err(refusal) = SendError::check_fence(name, &fence, version) {
                            let _ = tx.send(Err(refusal.into()));
                            return;
                        }
                        buf.extend_from_slice(&bytes);
                        (tx, replies, Some(version))
                    }
                    Job::Rename(version) => {
                        let name = naming.connection(version);
                        encode_request(&[b"CLIENT".as_slice(), b"SETNAME", name.as_bytes()], buf);
                        // Nobody waits for this reply.
                        (oneshot::channel().0, 1, None)
                    }
                };
                in_flight.fetch_add(1, Ordering::AcqRel);
                metrics.in_flight.inc();
                // The reader owns the slot before the bytes leave, so no reply can beat it.
                queue.push_back(Slot {
                    tx,
                    version,
                    expected: replies.max(1),
                    collected: Vec::new(),
                    sent,
                });
            };
            {
                let mut queue = slots.lock().unwrap_or_else(|e| e.into_inner());
                push(job, &mut buf, &mut queue);
                while buf.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(job) => push(job, &mut buf, &mut queue),
                        Err(_) => break,
                    }
                }
            }
            metrics.writes.inc();
            write_flushed(&mut writer, &buf)
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
        Ok::<(), String>(())
    };

    let read = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut scanner = FrameScanner::new();
        let mut current: Option<Slot> = None;
        // When the bytes in `buf` were read: one clock reading per read, for every reply in it.
        let mut read_at = Instant::now();
        loop {
            let clock = view.clock_at(read_at.into());
            // Hand out every complete reply in the buffer.
            loop {
                match scanner.scan(&buf, &limits) {
                    Ok(Some(n)) => {
                        scanner.reset();
                        let frame = buf.split_to(n).freeze();
                        let mut slot = match current.take() {
                            Some(s) => s,
                            None => slots
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .pop_front()
                                .ok_or_else(|| {
                                    "a reply arrived that nobody asked for".to_owned()
                                })?,
                        };
                        // One reply (nearly always) goes as it is, with no list for it.
                        let complete = if slot.expected == 1 {
                            Some(Replies::One(frame))
                        } else {
                            slot.collected.push(frame);
                            (slot.collected.len() >= slot.expected)
                                .then(|| Replies::Many(std::mem::take(&mut slot.collected)))
                        };
                        if let Some(replies) = complete {
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            metrics.in_flight.dec();
                            metrics.observe(read_at.saturating_duration_since(slot.sent));
                            deliver(
                                view,
                                name,
                                &fence,
                                &lease,
                                slot.version,
                                clock,
                                slot.tx,
                                replies,
                            );
                        } else {
                            current = Some(slot);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("protocol error from the server: {e}")),
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            // The server is dead to us when a request has waited `request_timeout` for its
            // reply and nothing came meanwhile. Checked against the oldest request in flight,
            // not only when the read began: a read that began on an idle connection is still
            // waiting when the next request goes out (a frozen server would hang it forever).
            let n = loop {
                let oldest = current.as_ref().map(|s| s.sent).or_else(|| {
                    slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .front()
                        .map(|s| s.sent)
                });
                let wait = match oldest {
                    Some(sent) => {
                        let since = sent.max(read_at);
                        (since + options.request_timeout)
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1))
                    }
                    None => options.request_timeout,
                };
                match tokio::time::timeout(wait, reader.read_buf(&mut buf)).await {
                    Ok(r) => break r,
                    Err(_) if oldest.is_some() && in_flight.load(Ordering::Acquire) > 0 => {
                        let since = oldest.unwrap_or(read_at).max(read_at);
                        if since.elapsed() >= options.request_timeout {
                            return Err(format!(
                                "no reply within {}ms",
                                options.request_timeout.as_millis()
                            ));
                        }
                    }
                    // Idle, or a request went out meanwhile: look again.
                    Err(_) => {}
                }
            }
            .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".to_owned());
            }
            read_at = Instant::now();
        }
    };

    let result = tokio::select! {
        r = write => r,
        r = read => r,
    };
    // Everything in flight gets an error: it may or may not have run.
    let reason = match &result {
        Ok(()) => "the sidecar dropped the connection".to_owned(),
        Err(e) => e.clone(),
    };
    let unanswered = std::mem::take(&mut *slots.lock().unwrap_or_else(|e| e.into_inner()));
    for slot in unanswered {
        metrics.in_flight.dec();
        if result.is_err() {
            metrics.unanswered(slot.sent.elapsed());
        }
        let _ = slot.tx.send(Err(BackendError::Lost {
            instance: name.to_owned(),
            reason: reason.clone(),
        }));
    }
    result
}
