//! Moving data between instances online: planning ([`plan`], pure), the Job manifest
//! ([`job`]), sampling instances ([`sample`]), the per-key move protocol shared with the
//! sidecar ([`keymove`]) and the Job itself ([`migrate`]).

pub mod job;
pub mod keymove;
pub mod migrate;
pub mod plan;
pub mod sample;
