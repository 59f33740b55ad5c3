//! A client's SDP: what the media core reads from it itself (the codec order of an offer, the
//! sending sections of an answer) and what a worker does with an offer str0m accepts.

use str0m::change::SdpAnswer;

use crate::codec_order::{DEFAULT_VIDEO_ORDER, sending_sections, video_codec_order};
use crate::sim::worker::Harness;

/// `sdp`: any text as an SDP offer (and as an answer).
///
/// Checks: the codec order is always the four forwarded video codecs, each once; every
/// sending section has a mid the text declares, and there are no more of them than media
/// sections; an offer str0m parses is either refused with an error or answered, as a
/// publisher and as a client-offering (WHEP) subscriber, with an answer that parses again and
/// sends only on the offer's media sections.
pub fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    let order = video_codec_order(&text);
    assert_eq!(order.len(), DEFAULT_VIDEO_ORDER.len(), "{order:?}");
    for codec in DEFAULT_VIDEO_ORDER {
        assert!(order.contains(&codec), "{codec:?} missing: {order:?}");
    }

    let sections = sending_sections(&text);
    let media = text.lines().filter(|l| l.trim().starts_with("m=")).count();
    assert!(sections.len() <= media, "{sections:?}");
    for (_, mid) in &sections {
        let declared = text
            .lines()
            .any(|l| l.trim().strip_prefix("a=mid:") == Some(mid));
        assert!(declared, "mid {mid:?} is not in the text");
    }

    // Bounded: str0m's work grows with the number of m-lines, and so would each run.
    if media > 16 || data.len() > 16 * 1024 {
        return;
    }
    // What the server does with a client's offer: its own checks (m-line count, header
    // extension ids), then str0m's parser.
    if crate::handle::parse_offer(&text).is_err() {
        return;
    }
    let mut h = Harness::new();
    let offer = |text: &str| crate::handle::parse_offer(text).ok();
    if let Some(o) = offer(&text)
        && let Ok((_, answer)) = h.add_publisher(o, order)
    {
        check_answer(&answer, media);
    }
    if let Some(o) = offer(&text)
        && let Ok((_, answer)) = h.add_offering_subscriber(o, Vec::new())
    {
        check_answer(&answer, media);
    }
    let _ = h.events();
}

fn check_answer(answer: &str, offered_sections: usize) {
    assert!(
        SdpAnswer::from_sdp_string(answer).is_ok(),
        "our answer does not parse: {answer}"
    );
    let answered = answer
        .lines()
        .filter(|l| l.trim().starts_with("m="))
        .count();
    assert!(
        answered <= offered_sections,
        "{answered} sections answered to {offered_sections}"
    );
}
