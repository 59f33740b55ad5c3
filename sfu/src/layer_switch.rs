//! One subscriber track's forwarding state: the layer sent and the layer wanted, the switch on
//! a keyframe of the wanted layer, and the rewriting that hides switches from the receiver.
//!
//! Sans-IO and free of the WebRTC stack, so tests can drive it packet by packet: a
//! packet goes in with the time, a verdict comes out (forward it with these numbers and this
//! VP8 patch, or drop it). At a switch, sequence numbers continue from the last one sent,
//! timestamps advance by the capture-time gap (from the publisher's sender reports; arrival
//! time when there are none), and VP8 picture IDs, TL0PICIDX and KEYIDX continue.
//!
//! A layer the subscriber's bandwidth no longer carries can be stopped at once, after the frame
//! under way ([`LayerSwitcher::set_stop_current`]): on a saturated link its packets would
//! otherwise queue ahead of the new layer's keyframe. A stopped layer restarts only on a
//! keyframe, like any other.
//!
//! With VP8 temporal layers, frames above a maximum temporal layer can be dropped (when the
//! bandwidth cannot carry the full frame rate of even the lowest layer): sequence numbers and
//! picture IDs close up behind them. The maximum changes at frame starts only, and goes up
//! only at a base-layer frame (or keyframe), whose successors reference nothing dropped.
//!
//! A scalable (SVC) stream carries every spatial layer on one SSRC; its layers are its spatial
//! layers, and the "current layer" is the highest one forwarded, with every layer below it.
//! It goes down at the next picture (a lower spatial layer does not depend on higher ones) and
//! up at a keyframe; the packets above it are dropped as the temporal ones are, and the marker
//! bit is set on the last packet of the highest forwarded layer's frame, which ends the
//! picture for this receiver. Its upper temporal layers are thinned as VP8's are, whole
//! pictures at a time; picture IDs are left with gaps, which a VP9 receiver reads through the
//! scalability structure (the missing pictures were upper temporal layers nothing depends on)
//! and an AV1 receiver through the Dependency Descriptor's frame dependencies.

use std::time::Instant;

use str0m::format::Codec;
use str0m::rtp::Vp8Patch;

use crate::packet::{ForwardedPacket, SvcFrame};
use crate::rewrite::{Rewritten, SeqTsRewriter};
use crate::vp8_munger::Vp8Munger;

/// What to do with one packet.
#[derive(Debug)]
pub(crate) struct Forward {
    /// Outgoing extended sequence number.
    pub(crate) seq: u64,
    /// Outgoing RTP timestamp.
    pub(crate) ts: u32,
    /// VP8 descriptor rewrite, if any.
    pub(crate) vp8: Option<Vp8Patch>,
    /// The RTP marker bit to send.
    pub(crate) marker: bool,
    /// This packet starts a new layer (not the first one).
    pub(crate) switched: bool,
}

/// The forwarding state of one subscriber track.
#[derive(Debug)]
pub(crate) struct LayerSwitcher {
    video: bool,
    current: Option<u8>,
    target: Option<u8>,
    rewriter: Option<SeqTsRewriter>,
    vp8: Vp8Munger,
    /// Highest outgoing sequence number, and the capture time of that packet.
    newest: Option<(u64, Option<f64>)>,
    /// Highest temporal layer wanted (`None`: all).
    max_temporal: Option<u8>,
    /// Highest temporal layer in force (changes at frame starts).
    temporal_in_force: Option<u8>,
    /// Stop forwarding the current layer after the frame under way, while the target's
    /// keyframe is awaited.
    stop_current: bool,
    /// The current layer was stopped mid-stream: it continues only from a keyframe.
    stalled: bool,
    /// Incoming RTP timestamp of the last packet forwarded (the frame under way).
    frame_ts: Option<u32>,
    /// The track is one scalable stream (seen on its packets).
    svc: bool,
}

impl LayerSwitcher {
    /// A switcher for a video track (which starts and switches only on keyframes) or an audio
    /// track (which forwards everything).
    pub(crate) fn new(video: bool) -> Self {
        Self {
            video,
            current: None,
            target: None,
            rewriter: None,
            vp8: Vp8Munger::default(),
            newest: None,
            max_temporal: None,
            temporal_in_force: None,
            stop_current: false,
            stalled: false,
            frame_ts: None,
            svc: false,
        }
    }

    /// Sets the highest temporal layer to forward (`None`: all).
    pub(crate) fn set_max_temporal(&mut self, max: Option<u8>) {
        self.max_temporal = max;
    }

    /// The highest temporal layer being forwarded (`None`: all).
    pub(crate) fn temporal_in_force(&self) -> Option<u8> {
        self.temporal_in_force
    }

    /// The highest temporal layer wanted (`None`: all).
    pub(crate) fn wanted_max_temporal(&self) -> Option<u8> {
        self.max_temporal
    }

    /// Whether a packet of temporal layer `tid` (of the current layer) is to be dropped, after
    /// moving the maximum in force towards the wanted one at a frame (`starts`) start: down at
    /// any frame, up only at a base-layer frame or a keyframe.
    fn drops_temporal(&mut self, tid: u8, starts: bool, keyframe: bool) -> bool {
        if starts && self.temporal_in_force != self.max_temporal {
            let lowering = match (self.temporal_in_force, self.max_temporal) {
                (None, Some(_)) => true,
                (Some(now), Some(wanted)) => wanted < now,
                (_, None) => false,
            };
            if lowering || tid == 0 || keyframe {
                self.temporal_in_force = self.max_temporal;
            }
        }
        self.temporal_in_force.is_some_and(|max| tid > max)
    }

    /// The layer being forwarded.
    pub(crate) fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer wanted.
    pub(crate) fn target(&self) -> Option<u8> {
        self.target
    }

    /// Whether a keyframe of the wanted layer is awaited.
    pub(crate) fn waiting(&self) -> bool {
        // A scalable stream steps down at its next picture, without a keyframe.
        let svc_down = self.svc && !self.stalled && self.target < self.current;
        self.video
            && self.target.is_some()
            && (self.current != self.target || self.stalled)
            && !svc_down
    }

    /// Whether the current layer has been stopped (nothing is forwarded until the target's
    /// keyframe).
    pub(crate) fn stalled(&self) -> bool {
        self.stalled
    }

    /// The layers whose packets are needed: the current one (unless stopped) and the wanted
    /// one.
    pub(crate) fn wanted_layers(&self) -> u32 {
        let current = self.current.filter(|_| !self.stalled);
        [current, self.target]
            .into_iter()
            .flatten()
            .fold(0, |acc, l| acc | 1 << u32::from(l.min(31)))
    }

    /// Stops (or keeps) forwarding the current layer while the target's keyframe is awaited.
    /// Stopping takes effect after the frame under way; it ends at the switch.
    pub(crate) fn set_stop_current(&mut self, stop: bool) {
        self.stop_current = stop;
    }

    /// Sets the wanted layer. Returns `true` if a keyframe of it is now needed.
    pub(crate) fn set_target(&mut self, layer: Option<u8>) -> bool {
        if self.target == layer {
            return false;
        }
        self.target = layer;
        let lower = matches!((layer, self.current), (Some(new), Some(now)) if new < now);
        if self.svc && lower && !self.stalled {
            // A scalable stream steps down at its next picture, without a keyframe.
            return false;
        }
        self.video && layer.is_some() && (self.current != layer || self.stalled)
    }

    /// A packet of the track that is not forwarded to this subscriber (a format it did not
    /// accept, or padding alone): if its layer is being forwarded, it leaves the numbering as
    /// a dropped packet does, so the receiver sees no gap.
    pub(crate) fn skip(&mut self, p: &ForwardedPacket) {
        let forwarded = if self.svc {
            self.current.is_some()
        } else {
            self.current == Some(p.layer)
        };
        if forwarded
            && !self.stalled
            && let Some(rewriter) = self.rewriter.as_mut()
        {
            rewriter.drop_packet(p.seq);
        }
    }

    /// Decides about one packet of the track (any layer).
    pub(crate) fn on_packet(&mut self, p: &ForwardedPacket, now: Instant) -> Option<Forward> {
        if p.payload.is_empty() {
            // Nothing after its padding (a sender padding on the media SSRC): never media,
            // and never the start of a layer.
            self.skip(p);
            return None;
        }
        if let Some(frame) = p.svc {
            return self.on_svc_packet(p, frame, now);
        }
        let vp8 = p.params.spec().codec == Codec::Vp8;
        let mut switched = false;
        if !self.video {
            // Audio: one layer, forwarded from the first packet on.
            self.target = Some(p.layer);
        }
        let flowing = self.current == Some(p.layer) && !self.stalled;
        if flowing
            && self.stop_current
            && self.current != self.target
            && self.frame_ts != Some(p.ts)
        {
            // The frame under way is complete: nothing more of this layer.
            self.stalled = true;
            return None;
        }
        if !flowing {
            let starts = Some(p.layer) == self.target && (p.keyframe || !self.video);
            if !starts {
                return None; // Another layer, or the wanted one before its keyframe.
            }
            switched = self.start(p, p.layer, now);
            if vp8 {
                self.vp8.start_source(&p.payload);
            }
        }
        let drops = p
            .temporal
            .is_some_and(|t| self.drops_temporal(t.tid, t.frame_start, p.keyframe));
        if drops && self.rewriter.as_mut()?.drop_packet(p.seq) {
            if vp8 {
                self.vp8.drop_packet(&p.payload);
            }
            return None;
        }
        let (out, newest) = self.rewrite(p, now)?;
        let vp8 = if vp8 {
            self.vp8.rewrite(&p.payload, newest)
        } else {
            None
        };
        Some(Forward {
            seq: out.seq,
            ts: out.ts,
            vp8,
            marker: p.marker,
            switched,
        })
    }

    /// Starts forwarding `layer` from packet `p` (its first): numbers continue from the last
    /// packet sent. Returns whether this switches from another layer.
    fn start(&mut self, p: &ForwardedPacket, layer: u8, now: Instant) -> bool {
        // Capture-time gap since the newest packet sent, when both are known.
        let elapsed = match (self.newest.and_then(|(_, c)| c), p.capture) {
            (Some(last), Some(now)) => Some(now - last),
            _ => None,
        };
        let clock = p.params.spec().clock_rate.get();
        self.rewriter
            .get_or_insert_with(|| SeqTsRewriter::with_random_start(clock))
            .start_source_after(p.seq, p.ts, now, elapsed);
        let switched = self.current.is_some_and(|c| c != layer);
        self.current = Some(layer);
        self.stalled = false;
        self.stop_current = false;
        switched
    }

    /// The outgoing numbers of a packet that is forwarded, and whether it is the newest sent.
    fn rewrite(&mut self, p: &ForwardedPacket, now: Instant) -> Option<(Rewritten, bool)> {
        let out = self.rewriter.as_mut()?.rewrite(p.seq, p.ts, now)?;
        self.frame_ts = Some(p.ts);
        let newest = self.newest.is_none_or(|(seq, _)| out.seq > seq);
        if newest {
            self.newest = Some((out.seq, p.capture));
        }
        Some((out, newest))
    }

    /// A packet of a scalable stream (its spatial layer is `p.layer`): forwarded if that is at
    /// or below the current layer, which moves towards the target at picture starts.
    fn on_svc_packet(
        &mut self,
        p: &ForwardedPacket,
        frame: SvcFrame,
        now: Instant,
    ) -> Option<Forward> {
        self.svc = true;
        let picture_start = p.layer == 0 && frame.start && self.frame_ts != Some(p.ts);
        let mut switched = false;
        let flowing = self.current.is_some() && !self.stalled;
        if !flowing {
            let target = self.target.filter(|_| p.keyframe)?;
            switched = self.start(p, target, now);
        } else if picture_start && let (Some(current), Some(target)) = (self.current, self.target) {
            // Down at any picture; up only at a keyframe, whose upper layers depend on
            // nothing this receiver missed.
            if target < current || (target > current && p.keyframe) {
                self.current = Some(target);
                switched = true;
            }
        }
        let current = self.current?;
        let thinned = self.drops_temporal(frame.temporal, picture_start, p.keyframe);
        if p.layer > current || thinned {
            // Renumbered away; a late packet of a dropped layer is not forwarded either.
            self.rewriter.as_mut()?.drop_packet(p.seq);
            return None;
        }
        let (out, _) = self.rewrite(p, now)?;
        Some(Forward {
            seq: out.seq,
            ts: out.ts,
            vp8: None,
            marker: p.marker || (frame.end && p.layer == current),
            switched,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use str0m::format::{CodecSpec, FormatParams, PayloadParams};
    use str0m::media::{Frequency, Pt};

    use super::*;

    /// One packet of a scalable VP9 stream: picture `picture` of temporal layer `tid`, spatial
    /// layer `spatial`, one packet per layer frame.
    fn svc_packet(picture: u64, spatial: u8, tid: u8, key: bool) -> ForwardedPacket {
        let spec = CodecSpec {
            codec: Codec::Vp9,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        ForwardedPacket {
            track: crate::ids::TrackId(1),
            layer: spatial,
            params: PayloadParams::new(Pt::from(98), None, spec),
            seq: 1000 + picture * 2 + u64::from(spatial),
            ts: (picture * 3000) as u32,
            marker: spatial == 1,
            keyframe: key && spatial == 0,
            temporal: None,
            svc: Some(SvcFrame {
                start: true,
                end: true,
                temporal: tid,
            }),
            red: false,
            descriptor: None,
            payload: Arc::from(vec![picture as u8, spatial]),
            audio_level: None,
            voice_activity: None,
            video_orientation: None,
            arrival: Instant::now(),
            capture: None,
        }
    }

    /// Feeds pictures `pictures` (two spatial layers, temporal pattern 0 2 1 2, keyframe at 0)
    /// and returns what was forwarded: (picture, spatial, outgoing seq, marker).
    fn feed(s: &mut LayerSwitcher, pictures: std::ops::Range<u64>) -> Vec<(u64, u8, u64, bool)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for picture in pictures {
            let tid = [0, 2, 1, 2][(picture % 4) as usize];
            for spatial in 0..2 {
                let p = svc_packet(picture, spatial, tid, picture == 0);
                if let Some(f) = s.on_packet(&p, now) {
                    out.push((picture, spatial, f.seq, f.marker));
                }
            }
        }
        out
    }

    #[test]
    fn a_scalable_stream_is_thinned_whole_pictures_at_a_time_and_raised_at_a_base_picture() {
        let mut s = LayerSwitcher::new(true);
        s.set_target(Some(1));
        let all = feed(&mut s, 0..8);
        assert_eq!(all.len(), 16, "every picture, both layers");
        // Half the frame rate: temporal layer 2 goes at the next picture.
        s.set_max_temporal(Some(1));
        let half = feed(&mut s, 8..16);
        let pictures: Vec<u64> = half.iter().map(|f| f.0).collect();
        assert_eq!(
            pictures,
            [8, 8, 10, 10, 12, 12, 14, 14],
            "pictures of T0 and T1"
        );
        // A quarter: T0 only.
        s.set_max_temporal(Some(0));
        let quarter = feed(&mut s, 16..26);
        let pictures: Vec<u64> = quarter.iter().map(|f| f.0).collect();
        assert_eq!(pictures, [16, 16, 20, 20, 24, 24]);
        // Back to every picture: not at picture 26 (T1, which references the T0 picture 24
        // but follows the dropped 25 in its group) but from the next base-layer picture, 28.
        s.set_max_temporal(None);
        let back = feed(&mut s, 26..32);
        assert_eq!(back.first().map(|f| f.0), Some(28));
        assert_eq!(back.len(), 8, "28..32, both layers");
        // One numbering without gaps, and the marker on each picture's top layer.
        let sent: Vec<_> = [all, half, quarter, back].concat();
        for pair in sent.windows(2) {
            assert_eq!(pair[1].2, pair[0].2 + 1, "a gap at {pair:?}");
        }
        assert!(sent.iter().all(|f| f.3 == (f.1 == 1)));
    }
}
