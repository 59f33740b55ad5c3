//! Scenarios on the virtual clock: a real worker, real str0m clients, a simulated network.
//! Each asserts what a viewer would see (frames decoded, layers, freezes) or what the
//! server must do (requests, closes), and runs in well under a second of real time.

use std::time::Duration;

use super::net::PathConfig;
use super::vp8::CHROMIUM_720P;
use super::world::World;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_viewer_on_a_clean_path_gets_the_top_layer_and_decodes_every_frame() {
    let mut w = World::new(1);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    let bob = w.subscriber(vec![track]);
    let joined = w.now();
    w.run_for(10 * SECOND);
    let video = w.video(bob);
    let first = video.decoded.first().expect("nothing decoded");
    assert!(first.key, "the first decoded frame is a keyframe");
    assert!(
        first.at - joined < Duration::from_millis(500),
        "first frame after {:?}",
        first.at - joined
    );
    assert_eq!(video.undecodable, 0);
    let end = w.now();
    assert_eq!(video.layer(), Some(2), "on the top layer: {:?}", video.switches());
    let freeze = video.longest_freeze(end - 5 * SECOND, end);
    assert!(freeze < Duration::from_millis(100), "froze for {freeze:?}");
    let frames = video.frames_per_layer(end - 5 * SECOND, end);
    assert!(frames[2] >= 145, "30 frames a second on the top layer: {frames:?}");
    eprintln!("switches {:?} first at {:?}", video.switches().iter().map(|s| (w.t(s.0), s.1, s.2, s.3)).collect::<Vec<_>>(), first.at - joined);
    let _ = PathConfig::default();
}
