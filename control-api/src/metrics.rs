//! `GET /metrics`: the media core's counters and the control plane's gauges in the Prometheus
//! text format (version 0.0.4).

use std::fmt::Write;

use sfu::CounterSnapshot;

/// Renders the metrics page.
pub fn render(
    counters: &CounterSnapshot,
    rooms: usize,
    participants: usize,
    peers: usize,
) -> String {
    let mut out = String::new();
    for (name, value) in counters.fields() {
        if name == "peers" {
            continue;
        }
        let _ = writeln!(
            out,
            "# TYPE sfu_{name}_total counter\nsfu_{name}_total {value}"
        );
    }
    for (name, help, value) in [
        ("sfu_rooms", "Rooms open.", rooms),
        ("sfu_participants", "Participants in rooms.", participants),
        ("sfu_peers", "Peer connections on the media workers.", peers),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}
