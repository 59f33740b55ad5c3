//! ICE over TCP (RFC 6544, passive candidates; RFC 4571 framing) for clients whose network
//! blocks UDP: the listener that accepts and routes connections, the framing, and each
//! worker's open connections. Packets arriving over TCP reach the same peers and state
//! machines as UDP ones.

pub(crate) mod connections;
pub(crate) mod framing;
pub(crate) mod listener;
