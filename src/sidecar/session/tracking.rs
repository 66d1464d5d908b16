//! One client's client-side caching: `CLIENT TRACKING`, `CLIENT CACHING`, `CLIENT GETREDIR`
//! and `CLIENT TRACKINGINFO` answered as Redis would, and the keys of its reads handed to the
//! hub before they are sent (`sidecar/pubsub/tracking.rs` holds the fleet-wide side).

use bytes::Bytes;

use super::super::command::{CommandSpec, Kind, LocalCommand};
use super::super::pubsub::TrackConfig;
use super::{Client, Pending, encode, error_reply};
use crate::redis::resp::{Frame, Request, parse_i64};

/// A client's tracking state.
#[derive(Debug, Default)]
pub(super) struct Tracking {
    /// The options while tracking is on.
    config: Option<TrackConfig>,
    /// `CLIENT CACHING yes|no` given for the next command (or transaction).
    caching: Option<bool>,
}

impl Tracking {
    /// Whether tracking is on.
    pub(super) fn on(&self) -> bool {
        self.config.is_some()
    }

    /// Tracking off (RESET; the hub forgets the client with its subscriptions).
    pub(super) fn reset(&mut self) {
        *self = Tracking::default();
    }
}

impl Client {
    /// Before dispatch: remembers the keys a read-only command reads (or a script is given),
    /// when the client tracks them in default mode.
    pub(super) fn remember_reads(&mut self, spec: &CommandSpec, keys: &[usize], request: &Request) {
        let Some(config) = &self.tracking.config else {
            return;
        };
        if config.bcast || keys.is_empty() || (spec.write && spec.kind != Kind::Script) {
            return;
        }
        let caching = self.tracking.caching;
        if (config.optin && caching != Some(true)) || (config.optout && caching == Some(false)) {
            return;
        }
        self.shared
            .pubsub
            .remember(self.id, keys.iter().filter_map(|i| request.args.get(*i)));
    }

    /// After a command: `CLIENT CACHING` applies to the next command only (a whole
    /// transaction when that is MULTI).
    pub(super) fn caching_done(&mut self, head: &[Bytes]) {
        let is = |i: usize, name: &[u8]| head.get(i).is_some_and(|a| a.eq_ignore_ascii_case(name));
        let keep = self.transaction.is_some()
            || is(0, b"multi")
            || (is(0, b"client") && is(1, b"caching"));
        if !keep {
            self.tracking.caching = None;
        }
    }

    pub(super) async fn tracking_command(&mut self, l: LocalCommand, args: &[Bytes]) -> Pending {
        match l {
            LocalCommand::ClientTracking => self.client_tracking(args).await,
            LocalCommand::ClientCaching => self.client_caching(args),
            LocalCommand::ClientGetRedir => {
                let id = match &self.tracking.config {
                    None => -1,
                    Some(c) => c.redirect.map_or(0, |r| r as i64),
                };
                Pending::Ready(encode(&Frame::Integer(id)))
            }
            _ => Pending::Ready(encode(&self.tracking_info())),
        }
    }

    fn tracking_info(&self) -> Frame {
        let bulk = |s: &'static str| Frame::Bulk(Bytes::from_static(s.as_bytes()));
        let mut flags = Vec::new();
        let (redirect, prefixes) = match &self.tracking.config {
            None => {
                flags.push(bulk("off"));
                (-1, Vec::new())
            }
            Some(c) => {
                flags.push(bulk("on"));
                if c.bcast {
                    flags.push(bulk("bcast"));
                }
                if c.optin {
                    flags.push(bulk("optin"));
                    if self.tracking.caching == Some(true) {
                        flags.push(bulk("caching-yes"));
                    }
                }
                if c.optout {
                    flags.push(bulk("optout"));
                    if self.tracking.caching == Some(false) {
                        flags.push(bulk("caching-no"));
                    }
                }
                if self.shared.pubsub.redirect_broken(self.id) {
                    flags.push(bulk("broken_redirect"));
                }
                (
                    c.redirect.map_or(0, |r| r as i64),
                    c.prefixes.iter().cloned().map(Frame::Bulk).collect(),
                )
            }
        };
        Frame::Array(vec![
            bulk("flags"),
            Frame::Array(flags),
            bulk("redirect"),
            Frame::Integer(redirect),
            bulk("prefixes"),
            Frame::Array(prefixes),
        ])
    }

    fn client_caching(&mut self, args: &[Bytes]) -> Pending {
        let Some(config) = &self.tracking.config else {
            return Pending::Ready(error_reply(
                "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
            ));
        };
        let value = args.get(2).map(|a| a.to_ascii_lowercase());
        match value.as_deref() {
            Some(b"yes") if config.optin => self.tracking.caching = Some(true),
            Some(b"yes") => {
                return Pending::Ready(error_reply(
                    "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                ));
            }
            Some(b"no") if config.optout => self.tracking.caching = Some(false),
            Some(b"no") => {
                return Pending::Ready(error_reply(
                    "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                ));
            }
            _ => return Pending::Ready(error_reply("ERR syntax error")),
        }
        Pending::Ready(Frame::ok().to_bytes())
    }

    async fn client_tracking(&mut self, args: &[Bytes]) -> Pending {
        let refuse = |text: &str| Pending::Ready(error_reply(text));
        let on = match args.get(2).map(|a| a.to_ascii_lowercase()).as_deref() {
            Some(b"on") => true,
            Some(b"off") => false,
            _ => return refuse("ERR syntax error"),
        };
        let mut wanted = TrackConfig::default();
        let mut i = 3;
        while i < args.len() {
            match args[i].to_ascii_lowercase().as_slice() {
                b"redirect" if i + 1 < args.len() => {
                    let Some(id) = parse_i64(&args[i + 1]) else {
                        return refuse("ERR value is not an integer or out of range");
                    };
                    // Redis: 0 (or a negative id) means no redirection.
                    wanted.redirect = u64::try_from(id).ok().filter(|id| *id != 0);
                    i += 2;
                }
                b"prefix" if i + 1 < args.len() => {
                    wanted.prefixes.push(args[i + 1].clone());
                    i += 2;
                }
                b"bcast" => {
                    wanted.bcast = true;
                    i += 1;
                }
                b"optin" => {
                    wanted.optin = true;
                    i += 1;
                }
                b"optout" => {
                    wanted.optout = true;
                    i += 1;
                }
                b"noloop" => {
                    return refuse(
                        "ERR NOLOOP is not supported by redis-fleet: the instances see the sidecar's shared connections, not this client, so its own writes cannot be told apart",
                    );
                }
                _ => return refuse("ERR syntax error"),
            }
        }
        if !on {
            self.tracking.reset();
            self.shared.pubsub.untrack(self.id);
            return Pending::Ready(Frame::ok().to_bytes());
        }
        if !wanted.bcast && !wanted.prefixes.is_empty() {
            return refuse("ERR PREFIX option requires BCAST mode to be enabled");
        }
        if wanted.optin && wanted.optout {
            return refuse("ERR You can't use both OPTIN and OPTOUT");
        }
        if wanted.bcast && (wanted.optin || wanted.optout) {
            return refuse("ERR OPTIN and OPTOUT are not compatible with BCAST");
        }
        if let Some(to) = wanted.redirect
            && to != self.id
            && !self.shared.pubsub.client_exists(to)
        {
            return refuse("ERR The client ID you want redirect to does not exist");
        }
        if let Some(current) = &self.tracking.config {
            if current.bcast != wanted.bcast {
                return refuse(
                    "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
                );
            }
            if current.optin != wanted.optin || current.optout != wanted.optout {
                return refuse(
                    "ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
                );
            }
            // ON again adds prefixes, as in Redis.
            for p in &current.prefixes {
                if !wanted.prefixes.contains(p) {
                    wanted.prefixes.insert(0, p.clone());
                }
            }
        }
        // Invalidations reach the client through its message queue.
        let resp3 = self.protocol.resp3;
        self.pubsub.ensure_inbox(resp3);
        self.tracking.config = Some(wanted.clone());
        self.shared.pubsub.track(self.id, wanted).await;
        Pending::Ready(Frame::ok().to_bytes())
    }
}
