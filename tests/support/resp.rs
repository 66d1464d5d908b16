//! A raw RESP connection for tests that must see the exact bytes of every reply (RESP2 or
//! RESP3, push frames included), spoken through `redis_fleet::redis::resp`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_fleet::redis::resp::{Limits, Value, encode_request, parse_value};

/// One connection to a server or a sidecar.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `127.0.0.1:port`; reads time out after 10 s (a test fails, never hangs).
    pub fn open(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sets how long a read may wait.
    pub fn set_timeout(&self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }

    /// Sends one command.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        let mut out = BytesMut::new();
        encode_request(args, &mut out);
        self.stream.write_all(&out).expect("writing");
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writing");
    }

    /// The next frame, raw, or None when the peer closed the connection or nothing came
    /// within the read timeout.
    pub fn read_raw(&mut self) -> Option<Bytes> {
        loop {
            if let Some((_, used)) =
                parse_value(&self.buf, &Limits::replies()).expect("a valid frame")
            {
                let raw = Bytes::copy_from_slice(&self.buf[..used]);
                self.buf.drain(..used);
                return Some(raw);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, decoded.
    pub fn read(&mut self) -> Option<Value> {
        let raw = self.read_raw()?;
        parse_value(&raw, &Limits::replies())
            .expect("valid")
            .map(|(v, _)| v)
    }

    /// Sends a command and returns its raw reply.
    pub fn call_raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Bytes {
        self.send(args);
        self.read_raw().expect("a reply")
    }

    /// Sends a command and returns its decoded reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        self.send(args);
        self.read().expect("a reply")
    }

    /// A whitespace-separated command line, decoded reply.
    pub fn cmd(&mut self, line: &str) -> Value {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.call(&args)
    }

    /// `key`'s type and value in a form that does not depend on how the server laid it out (a
    /// restored set may iterate in another order than the original): `None` when absent. For
    /// comparing an instance with its replica.
    pub fn value_of(&mut self, key: &[u8]) -> Option<String> {
        let kind = match self.call(&[b"TYPE".as_slice(), key]) {
            Value::Simple(t) => String::from_utf8(t.to_vec()).expect("a type name"),
            other => panic!("TYPE answered {other:?}"),
        };
        let read: &[&[u8]] = match kind.as_str() {
            "none" => return None,
            "string" => &[b"GET"],
            "list" => &[b"LRANGE", b"0", b"-1"],
            "hash" => &[b"HGETALL"],
            "set" => &[b"SMEMBERS"],
            "zset" => &[b"ZRANGE", b"0", b"-1", b"WITHSCORES"],
            "stream" => &[b"XRANGE", b"-", b"+"],
            other => panic!("{} is a {other}", String::from_utf8_lossy(key)),
        };
        let mut cmd = vec![read[0], key];
        cmd.extend(&read[1..]);
        let mut items = match self.call(&cmd) {
            Value::Bulk(v) => vec![String::from_utf8_lossy(&v).into_owned()],
            Value::Array(items) => items.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>(),
            other => panic!("{cmd:?} answered {other:?}"),
        };
        match kind.as_str() {
            "set" => items.sort(),
            "hash" => {
                let mut pairs: Vec<String> = items.chunks(2).map(|p| p.join("=")).collect();
                pairs.sort();
                items = pairs;
            }
            _ => {}
        }
        Some(format!("{kind} {items:?}"))
    }
}
