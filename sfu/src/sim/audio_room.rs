//! An audio room on a busy worker: one listener to many speakers, with congestion control on
//! (str0m's egress pacer releases one packet per timeout), on a worker that wakes once per
//! audio frame instead of at each deadline. Every packet still reaches the listener: nothing
//! is left queued in the server.

use std::time::Duration;

use str0m::format::Codec;
use str0m::media::MediaKind;

use super::world::{NodeId, World};

/// One Opus frame every 20 ms.
const FRAME: Duration = Duration::from_millis(20);
/// Speakers in the room.
const SPEAKERS: usize = 10;
/// Frames each speaker sends while the worker is busy.
const FRAMES: u64 = 100;

/// Every speaker sends Opus frame `i` (a payload that names the speaker and the frame).
fn speak(w: &mut World, speakers: &[(NodeId, u8)], i: u64) {
    for (k, &(id, pt)) in speakers.iter().enumerate() {
        let payload = vec![k as u8, i as u8, (i >> 8) as u8, 0xAA, 0x55, 0x11];
        w.send_rtp(id, (pt, 1000 + i, (i as u32) * 960), false, payload);
    }
}

/// Ten speakers to one listener, the worker turning once per 20 ms frame: the listener gets
/// every frame of every speaker by four turns after the last was sent. (Before
/// the drain ran the pacer's own steps, each turn released a packet or two per subscriber and
/// the rest queued without bound: the audio-room benchmark's memory growth.)
#[test]
fn a_listener_to_ten_speakers_gets_every_frame_from_a_worker_that_turns_once_a_frame() {
    let mut w = World::new(91);
    let speakers: Vec<(NodeId, u8)> = (0..SPEAKERS)
        .map(|_| {
            let id = w.sender(MediaKind::Audio, |c| c);
            let Some(opus) = w.nodes[id].client.pt(Codec::Opus) else {
                panic!("the server did not answer Opus");
            };
            (id, opus)
        })
        .collect();
    // Their first frames publish the tracks.
    speak(&mut w, &speakers, 0);
    w.run_for(FRAME);
    let tracks: Vec<_> = speakers
        .iter()
        .map(|&(id, _)| *w.nodes[id].tracks.first().expect("the track is published"))
        .collect();
    let listener = w.subscriber(tracks);

    let before = w.other_received(listener).len();
    for i in 1..=FRAMES {
        speak(&mut w, &speakers, i);
        w.run_in_turns(FRAME, FRAME);
    }
    // The last frames' network delay.
    w.run_in_turns(4 * FRAME, FRAME);
    let heard = w.other_received(listener).len() - before;
    let sent = SPEAKERS * FRAMES as usize;
    assert_eq!(
        heard, sent,
        "the listener heard {heard} of the {sent} frames written while the worker was busy"
    );
}
