//! Moving data between instances: the per-key move protocol shared by the sidecar and the
//! rebalance Job ([`keymove`]).

pub mod keymove;
