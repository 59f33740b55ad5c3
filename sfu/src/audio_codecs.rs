//! The audio formats every peer's state machine accepts: Opus first (what str0m answers with
//! when an offer has it), with RFC 2198 RED around it when configured (redundant audio,
//! forwarded to subscribers that negotiated it and stripped to plain Opus for the others),
//! then G.711 (PCMU, PCMA: RFC 7874 requires them of every WebRTC
//! endpoint, and SIP gateways and phones often send nothing else), and RFC 4733 telephone
//! events (DTMF) at the two clock rates browsers offer (48 kHz beside Opus, 8 kHz beside
//! G.711). Nothing is transcoded: a subscriber gets a track only in the publisher's own
//! codec, and telephone events only if it negotiated them at the publisher's clock rate.

use str0m::RtcConfig;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Pt};

/// Telephone events beside Opus (the payload type Chromium uses).
const PT_EVENTS_48K: u8 = 110;
/// Telephone events beside G.711 (the payload type Chromium uses).
const PT_EVENTS_8K: u8 = 126;

/// `config` with the audio codecs the server forwards enabled (RED around Opus with `red`).
pub(crate) fn enable_audio(config: RtcConfig, red: bool) -> RtcConfig {
    let mut config = config
        .enable_opus(true, red)
        .enable_pcmu(true, false)
        .enable_pcma(true, false);
    for (pt, rate) in [
        (PT_EVENTS_48K, Frequency::FORTY_EIGHT_KHZ),
        (PT_EVENTS_8K, Frequency::EIGHT_KHZ),
    ] {
        config.codec_config().add_config(
            Pt::from(pt),
            None,
            Codec::Tele,
            rate,
            None,
            FormatParams::default(),
        );
    }
    config
}
