//! Commands the sidecar answers itself: PING, ECHO, SELECT 0, QUIT, RESET, AUTH, HELLO 2/3,
//! TIME, INFO and CLIENT …; COMMAND and HELP are asked of an instance.

use bytes::{Bytes, BytesMut};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::backend::{Backend, BackendError, open};
use super::super::command::LocalCommand;
use super::{Client, Pending, backend_reply, encode, error_reply, lost, wire};
use crate::redis::resp::{Frame, Limits, Request, encode_request, parse_value};

/// The Redis version the sidecar presents (HELLO, INFO): 7.4, the first whose clients use
/// client-side caching (redis-py and Jedis require it), which the sidecar serves itself.
const REDIS_VERSION: &str = "7.4.0";

impl Client {
    pub(super) async fn local(&mut self, l: LocalCommand, request: &Request) -> Pending {
        let args = &request.args;
        let ok = || Pending::Ready(Frame::ok().to_bytes());
        match l {
            LocalCommand::Ping => match args.get(1) {
                Some(msg) => Pending::Ready(encode(&Frame::Bulk(msg.clone()))),
                None => Pending::Ready(Bytes::from_static(b"+PONG\r\n")),
            },
            LocalCommand::Echo => Pending::Ready(encode(&Frame::Bulk(args[1].clone()))),
            LocalCommand::Select => match args.get(1).map(|a| a.as_ref()) {
                Some(b"0") => ok(),
                _ => Pending::Ready(error_reply(
                    "ERR redis-fleet serves database 0 only (SELECT 0)",
                )),
            },
            LocalCommand::Quit => Pending::Close(Frame::ok().to_bytes()),
            LocalCommand::Reset => {
                self.transaction = None;
                self.unwatch().await;
                self.dedicated.clear();
                self.name = None;
                self.protocol.reset();
                self.pubsub.clear();
                self.tracking.reset();
                Pending::Ready(Bytes::from_static(b"+RESET\r\n"))
            }
            LocalCommand::Auth => self.auth(args.last()),
            LocalCommand::Hello => self.hello(args),
            LocalCommand::Time => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Pending::Ready(encode(&Frame::Array(vec![
                    Frame::Bulk(Bytes::from(now.as_secs().to_string())),
                    Frame::Bulk(Bytes::from(now.subsec_micros().to_string())),
                ])))
            }
            LocalCommand::Info => Pending::Ready(encode(&Frame::Bulk(Bytes::from(self.info())))),
            LocalCommand::ClientId => Pending::Ready(encode(&Frame::Integer(self.id as i64))),
            LocalCommand::ClientGetName => Pending::Ready(match &self.name {
                Some(n) => encode(&Frame::Bulk(n.clone())),
                None => Bytes::from_static(b"$-1\r\n"),
            }),
            LocalCommand::ClientSetName => {
                self.name = args.get(2).cloned();
                ok()
            }
            LocalCommand::ClientSetInfo | LocalCommand::ClientCapa => ok(),
            LocalCommand::ClientInfo | LocalCommand::ClientList => {
                let name = self
                    .name
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default();
                Pending::Ready(encode(&Frame::Bulk(Bytes::from(format!(
                    "id={} name={name} db=0 resp={} lib=redis-fleet-sidecar\n",
                    self.id,
                    if self.protocol.resp3 { 3 } else { 2 },
                )))))
            }
            LocalCommand::ClientTracking
            | LocalCommand::ClientCaching
            | LocalCommand::ClientGetRedir
            | LocalCommand::ClientTrackingInfo => self.tracking_command(l, args).await,
            LocalCommand::ClientReply => match args.get(2).map(|a| a.to_ascii_uppercase()) {
                Some(v) if v == b"ON" => ok(),
                _ => Pending::Ready(error_reply(
                    "ERR CLIENT REPLY OFF/SKIP is not supported by redis-fleet",
                )),
            },
            // COMMAND and its subcommands, and HELP: the instances know best.
            LocalCommand::Help
            | LocalCommand::Command
            | LocalCommand::CommandCount
            | LocalCommand::CommandDocs
            | LocalCommand::CommandGetKeys
            | LocalCommand::CommandGetKeysAndFlags
            | LocalCommand::CommandInfo
            | LocalCommand::CommandList => {
                let Some(router) = self.shared.router.load_full() else {
                    return Pending::Ready(error_reply(
                        "TRYAGAIN the routing table is not loaded yet",
                    ));
                };
                let Some(backend) = router
                    .backends
                    .iter()
                    .find(|b| b.is_up())
                    .or(router.backends.first())
                else {
                    return Pending::Ready(error_reply("ERR no instance"));
                };
                let bytes = wire(request);
                if self.protocol.resp3 {
                    // Maps and sets nested deep in COMMAND's replies: ask in RESP3.
                    let backend = backend.clone();
                    return Pending::Future(Box::pin(async move {
                        introspect_resp3(&backend, &bytes).await
                    }));
                }
                let rx = backend.send_or_refuse(self.lane(), router.version(), bytes, 1);
                Pending::Future(Box::pin(async move {
                    backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true)
                }))
            }
        }
    }

    fn auth(&mut self, password: Option<&Bytes>) -> Pending {
        match (&self.shared.password, password) {
            (None, _) => {
                self.authenticated = true;
                Pending::Ready(Frame::ok().to_bytes())
            }
            (Some(expected), Some(given)) if expected.expose().as_bytes() == given.as_ref() => {
                self.authenticated = true;
                Pending::Ready(Frame::ok().to_bytes())
            }
            _ => Pending::Ready(error_reply(
                "WRONGPASS invalid username-password pair or user is disabled.",
            )),
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Pending {
        let mut resp3 = self.protocol.resp3;
        if let Some(v) = args.get(1) {
            match crate::redis::resp::parse_i64(v) {
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => {
                    return Pending::Ready(error_reply("NOPROTO unsupported protocol version"));
                }
                None => {
                    return Pending::Ready(error_reply(
                        "ERR Protocol version is not an integer or out of range",
                    ));
                }
            }
        }
        let mut i = 2;
        while i < args.len() {
            match args[i].to_ascii_uppercase().as_slice() {
                b"AUTH" if i + 2 < args.len() => {
                    if let Pending::Ready(reply) = self.auth(Some(&args[i + 2]))
                        && reply.starts_with(b"-")
                    {
                        return Pending::Ready(reply);
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => return Pending::Ready(error_reply("ERR Syntax error in HELLO option")),
            }
        }
        if !self.authenticated {
            return Pending::Ready(error_reply(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        let field = |k: &'static str, v: Frame| [Frame::Bulk(Bytes::from_static(k.as_bytes())), v];
        let mut items = Vec::new();
        items.extend(field("server", Frame::Bulk(Bytes::from_static(b"redis"))));
        items.extend(field(
            "version",
            Frame::Bulk(Bytes::from_static(REDIS_VERSION.as_bytes())),
        ));
        items.extend(field("proto", Frame::Integer(if resp3 { 3 } else { 2 })));
        items.extend(field("id", Frame::Integer(self.id as i64)));
        items.extend(field(
            "mode",
            Frame::Bulk(Bytes::from_static(b"standalone")),
        ));
        items.extend(field("role", Frame::Bulk(Bytes::from_static(b"master"))));
        items.extend(field("modules", Frame::Array(Vec::new())));
        // The switch applies from this reply on (the caller converts it for RESP3).
        self.protocol.resp3 = resp3;
        Pending::Ready(encode(&Frame::Array(items)))
    }

    fn info(&self) -> String {
        let router = self.shared.router.load_full();
        let version = router.as_ref().map_or(0, |r| r.version());
        let instances = router.as_ref().map_or(0, |r| r.backends.len());
        let up = router
            .as_ref()
            .map_or(0, |r| r.backends.iter().filter(|b| b.is_up()).count());
        format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nserver_name:redis-fleet-sidecar\r\n\
             sidecar_version:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Keyspace\r\n\r\n\
             # Fleet\r\nrouting_version:{version}\r\ninstances:{instances}\r\ninstances_up:{up}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.metrics.clients.get(),
        )
    }
}

/// Asks `backend` a COMMAND … request on a RESP3 connection of its own, so its maps and sets
/// come back as Redis builds them; an instance that cannot speak RESP3 answers in RESP2,
/// which the caller converts as it can.
async fn introspect_resp3(backend: &Backend, request: &[u8]) -> Bytes {
    let unavailable = |reason: String| {
        BackendError::Unavailable {
            instance: backend.name().to_owned(),
            reason,
        }
        .reply()
    };
    let mut stream = match open(backend.target(), Duration::from_secs(2)).await {
        Ok(stream) => stream,
        Err(reason) => return unavailable(reason),
    };
    let mut bytes = BytesMut::new();
    encode_request(&[&b"HELLO"[..], b"3"], &mut bytes);
    bytes.extend_from_slice(request);
    if let Err(e) = stream.write_all(&bytes).await {
        return unavailable(e.to_string());
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut replies = 0;
    let read = async {
        loop {
            match parse_value(&buf, &Limits::replies()) {
                Ok(Some((_, used))) => {
                    let reply = buf.split_to(used).freeze();
                    replies += 1;
                    if replies == 2 {
                        return Ok(reply);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("protocol error from the server: {e}")),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("the server closed the connection".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(reason)) => unavailable(reason),
        Err(_) => unavailable("no reply within 5s".to_owned()),
    }
}
