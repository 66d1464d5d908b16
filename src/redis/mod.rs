//! Talking to Redis, for every component: the RESP codec ([`resp`], pure), INFO parsing
//! ([`info`], pure), connections ([`connect`]) and probes ([`probe`]), and the protocols the
//! sidecar, the Job and the operator share on the instances — moving a key ([`keymove`]),
//! heartbeats ([`heartbeat`]), key ranges ([`keys`]) and memory sampling ([`sample`]).

pub mod connect;
pub mod endpoint;
pub mod heartbeat;
pub mod info;
pub mod keymove;
pub mod keys;
pub mod probe;
pub mod protocol;
pub mod resp;
pub mod sample;
