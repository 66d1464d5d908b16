//! The protocol a client speaks: RESP2 until it sends `HELLO 3`, then RESP3. In RESP3 every
//! reply, whatever produced it (an instance, a merge, the sidecar itself), is converted by
//! the shape of its command (`sidecar/resp3.rs`) on its way out; the replies of a
//! transaction by the shapes of the commands queued. RESP2 replies are never touched.

use bytes::Bytes;

use super::super::command::{self, Kind, TxnCommand};
use super::super::resp3::{self, Shape};
use super::Pending;

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub(super) struct Protocol {
    /// Whether the client asked for RESP3 (`HELLO 3`).
    pub(super) resp3: bool,
    /// The shapes of the commands queued since MULTI, for EXEC's reply.
    queued: Vec<Shape>,
}

fn is_hello(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"hello")
}

impl Protocol {
    /// The shape of the reply to `args`, when it may have to be converted: for a RESP3 client,
    /// and for HELLO (which may switch the protocol). `None` for a RESP2 client's commands,
    /// which costs nothing on the RESP2 path.
    pub(super) fn shape(&mut self, args: &[Bytes], in_transaction: bool) -> Option<Shape> {
        let name = args.first()?;
        if !self.resp3 && !is_hello(name) {
            return None;
        }
        let spec = command::lookup(name);
        match spec.map(|s| s.kind) {
            Some(Kind::Transaction(TxnCommand::Multi)) => {
                self.queued.clear();
                Some(Shape::SAME)
            }
            Some(Kind::Transaction(TxnCommand::Exec)) => {
                Some(Shape::Exec(std::mem::take(&mut self.queued)))
            }
            Some(Kind::Transaction(TxnCommand::Discard)) => {
                self.queued.clear();
                Some(Shape::SAME)
            }
            _ if in_transaction => {
                // Queued: +QUEUED now, the real reply inside EXEC's.
                self.queued.push(resp3::shape(args));
                Some(Shape::SAME)
            }
            _ => Some(resp3::shape(args)),
        }
    }

    /// The reply as the client gets it: converted when the client speaks RESP3 now (after a
    /// `HELLO 3`, HELLO's own reply is RESP3, as Redis does).
    pub(super) fn wrap(&self, pending: Pending, shape: Option<Shape>) -> Pending {
        match shape {
            Some(shape) if self.resp3 => Pending::Resp3(Box::new(pending), shape),
            _ => pending,
        }
    }

    /// `RESET`: back to RESP2.
    pub(super) fn reset(&mut self) {
        *self = Protocol::default();
    }
}
