//! The routing contract, pure and free of I/O: the `routing.json` table ([`table`]), its
//! serialized forms ([`encoding`]) and how it is read out of its ConfigMap ([`config_map`]), slot maths ([`slots`]), who owns which
//! slot ([`placement`]) and key → category → slot → instance resolution ([`keyspace`]). The operator, the sidecar and the rebalance Job all
//! route through this one module.

pub mod config_map;
pub mod encoding;
pub mod keyspace;
pub mod placement;
pub mod slots;
pub mod table;

pub use keyspace::{CategoryId, InstanceId, Resolver, Route};
pub use slots::{SLOT_COUNT, SlotRange, key_slot};
pub use table::{RoutingTable, SCHEMA_VERSION, TableError};
