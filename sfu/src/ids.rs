//! Identifiers of the media core: rooms, peers (one `Rtc` each) and published tracks.
//!
//! They are small `Copy` newtypes over `u64`, allocated by the core, so they cost nothing to
//! hash and pass around on the packet path. Their `Display` forms (`RM_1f`, `PE_2a`, `TR_3c`)
//! are what the control plane shows to clients.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:x}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix($prefix)
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .map($name)
                    .ok_or(ParseIdError)
            }
        }
    };
}

id_type!(
    /// A room: the unit of isolation. Media and data never cross rooms.
    RoomId,
    "RM_"
);
id_type!(
    /// One peer connection (one str0m `Rtc`): a participant's publish or subscribe side.
    PeerId,
    "PE_"
);
id_type!(
    /// One published media track (one m-line of a publisher), all its simulcast layers.
    TrackId,
    "TR_"
);

/// A string was not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct ParseIdError;

/// Allocates process-unique ids. Starts at a random offset so ids from two server runs rarely
/// collide in logs.
#[derive(Debug)]
pub(crate) struct IdAllocator(AtomicU64);

impl IdAllocator {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(u64::from(rand::random::<u16>()) << 16))
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        let id = TrackId(0xbeef);
        assert_eq!(id.to_string(), "TR_beef");
        assert_eq!("TR_beef".parse::<TrackId>(), Ok(id));
        assert_eq!("PE_beef".parse::<TrackId>(), Err(ParseIdError));
        assert_eq!("TR_".parse::<TrackId>(), Err(ParseIdError));
        assert_eq!("TR_zz".parse::<TrackId>(), Err(ParseIdError));
    }
}
