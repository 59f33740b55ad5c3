//! What the media core reads from SDP text itself: which video codec a publisher prefers
//! (from its offer), and which sections a client-offered subscriber may send on (from the
//! answer).
//!
//! str0m answers with codecs in the order they were enabled, and the publisher sends the first
//! codec of the answer. So a publisher's state machine enables codecs in the order its offer
//! lists them: a browser asked to prefer H264 then really sends H264.

use str0m::format::Codec;

use crate::event::TrackKind;

/// The video codecs the server forwards, in the order used when an offer says nothing.
pub(crate) const DEFAULT_VIDEO_ORDER: [Codec; 4] =
    [Codec::Vp8, Codec::H264, Codec::Vp9, Codec::Av1];

/// The forwarded video codecs in the order of the offer's first video section, followed by
/// those it does not mention. Unparsable input gives the default order.
pub(crate) fn video_codec_order(sdp: &str) -> Vec<Codec> {
    let mut payload_types: Vec<&str> = Vec::new();
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut in_video = false;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            if in_video {
                break; // Only the first video section.
            }
            in_video = rest.starts_with("video ");
            if in_video {
                payload_types = rest.split_whitespace().skip(3).collect();
            }
        } else if in_video
            && let Some(map) = line.strip_prefix("a=rtpmap:")
            && let Some((pt, encoding)) = map.split_once(' ')
        {
            names.push((pt, encoding.split('/').next().unwrap_or_default()));
        }
    }
    let mut order = Vec::new();
    for pt in payload_types {
        let codec = names.iter().find(|(p, _)| *p == pt).and_then(|(_, name)| {
            match name.to_ascii_uppercase().as_str() {
                "VP8" => Some(Codec::Vp8),
                "H264" => Some(Codec::H264),
                "VP9" => Some(Codec::Vp9),
                "AV1" => Some(Codec::Av1),
                _ => None,
            }
        });
        if let Some(codec) = codec
            && !order.contains(&codec)
        {
            order.push(codec);
        }
    }
    for codec in DEFAULT_VIDEO_ORDER {
        if !order.contains(&codec) {
            order.push(codec);
        }
    }
    order
}

/// The `(kind, mid)` of each audio or video section of an SDP in which this side sends
/// (`a=sendonly` or `a=sendrecv`).
pub(crate) fn sending_sections(sdp: &str) -> Vec<(TrackKind, String)> {
    let mut out = Vec::new();
    let mut section: Option<(TrackKind, Option<String>, bool)> = None;
    let flush = |s: Option<(TrackKind, Option<String>, bool)>, out: &mut Vec<_>| {
        if let Some((kind, Some(mid), true)) = s {
            out.push((kind, mid));
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            flush(section.take(), &mut out);
            section = if rest.starts_with("audio ") {
                Some((TrackKind::Audio, None, false))
            } else if rest.starts_with("video ") {
                Some((TrackKind::Video, None, false))
            } else {
                None
            };
        } else if let Some((_, mid, sending)) = &mut section {
            if let Some(m) = line.strip_prefix("a=mid:") {
                *mid = Some(m.to_string());
            } else if line == "a=sendonly" || line == "a=sendrecv" {
                *sending = true;
            }
        }
    }
    flush(section, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_offer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 102 103 96 45\r\na=rtpmap:96 VP8/90000\r\n\
                   a=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\na=rtpmap:45 AV1/90000\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 VP9/90000\r\n";
        assert_eq!(
            video_codec_order(sdp),
            vec![Codec::H264, Codec::Vp8, Codec::Av1, Codec::Vp9]
        );
    }

    #[test]
    fn sending_sections_of_an_answer() {
        let sdp = "v=0\r\nm=video 9 X 96\r\na=mid:0\r\na=sendonly\r\n\
                   m=audio 9 X 111\r\na=sendrecv\r\na=mid:1\r\n\
                   m=audio 9 X 111\r\na=mid:2\r\na=recvonly\r\n\
                   m=application 9 X\r\na=mid:3\r\na=sendrecv\r\n";
        assert_eq!(
            sending_sections(sdp),
            vec![
                (TrackKind::Video, "0".to_string()),
                (TrackKind::Audio, "1".to_string())
            ]
        );
        assert!(
            sending_sections("m=video\r\na=sendonly").is_empty(),
            "no mid"
        );
    }

    #[test]
    fn nonsense_gives_the_default() {
        assert_eq!(video_codec_order(""), DEFAULT_VIDEO_ORDER.to_vec());
        assert_eq!(
            video_codec_order("m=video\r\na=rtpmap:"),
            DEFAULT_VIDEO_ORDER.to_vec()
        );
    }
}
