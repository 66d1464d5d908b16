//! Commands the sidecar answers itself: PING, ECHO, SELECT 0, QUIT, RESET, AUTH, HELLO 2,
//! TIME, INFO and CLIENT …; COMMAND and HELP are asked of an instance.

use bytes::Bytes;

use super::super::command::LocalCommand;
use super::{Client, Pending, backend_reply, encode, error_reply, lost, wire};
use crate::redis::resp::{Frame, Request};

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
            LocalCommand::ClientSetInfo => ok(),
            LocalCommand::ClientInfo | LocalCommand::ClientList => {
                let name = self
                    .name
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default();
                Pending::Ready(encode(&Frame::Bulk(Bytes::from(format!(
                    "id={} name={name} db=0 resp=2 lib=redis-fleet-sidecar\n",
                    self.id
                )))))
            }
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
        if let Some(v) = args.get(1)
            && v.as_ref() != b"2"
        {
            return Pending::Ready(error_reply(
                "NOPROTO sorry, this protocol version is not supported",
            ));
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
        items.extend(field("version", Frame::Bulk(Bytes::from_static(b"7.0.0"))));
        items.extend(field("proto", Frame::Integer(2)));
        items.extend(field("id", Frame::Integer(self.id as i64)));
        items.extend(field(
            "mode",
            Frame::Bulk(Bytes::from_static(b"standalone")),
        ));
        items.extend(field("role", Frame::Bulk(Bytes::from_static(b"master"))));
        items.extend(field("modules", Frame::Array(Vec::new())));
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
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nserver_name:redis-fleet-sidecar\r\n\
             sidecar_version:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Keyspace\r\n\r\n\
             # Fleet\r\nrouting_version:{version}\r\ninstances:{instances}\r\ninstances_up:{up}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.metrics.clients.get(),
        )
    }
}
