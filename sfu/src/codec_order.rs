//! Which video codec a publisher prefers, read from its SDP offer.
//!
//! str0m answers with codecs in the order they were enabled, and the publisher sends the first
//! codec of the answer. So a publisher's state machine enables codecs in the order its offer
//! lists them: a browser asked to prefer H264 then really sends H264.

use str0m::format::Codec;

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
    fn nonsense_gives_the_default() {
        assert_eq!(video_codec_order(""), DEFAULT_VIDEO_ORDER.to_vec());
        assert_eq!(
            video_codec_order("m=video\r\na=rtpmap:"),
            DEFAULT_VIDEO_ORDER.to_vec()
        );
    }
}
