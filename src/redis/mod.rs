//! Talking to Redis, for every component: the RESP codec ([`resp`], pure), INFO parsing
//! ([`info`], pure), connections ([`connect`], [`endpoint`]; the bytes under the sidecar's and
//! the operator's own, [`stream`]; the operator's, [`serial`]) and probes ([`probe`]), and what
//! the sidecar, the Job and the operator share on the instances: the data protocol — guard,
//! fences, heartbeats, moving keys ([`protocol`], `docs/protocol.md`) — key ranges ([`keys`])
//! and memory sampling ([`sample`]).

pub mod connect;
pub mod endpoint;
pub mod info;
pub mod keys;
pub mod probe;
pub mod protocol;
pub mod resp;
pub mod sample;
pub mod serial;
pub mod stream;
