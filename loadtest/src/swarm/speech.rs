//! Publishers that talk and mute like people in a meeting: per bot (seeded by its tag), a
//! repeating pattern of talk spurts with a varying audio level and silences, and optionally a
//! muted microphone for a third of every period. Pure functions of time.

use std::time::Duration;

/// Audio level (-dBov) of bot `tag` at `t` since it started: a talk spurt takes the first 40%
/// of a 6 to 12 second cycle, at -15 to -35 dBov changing every 200 ms; the rest is silence.
pub fn level_at(tag: u32, t: Duration) -> i8 {
    let cycle_ms = 6_000 + u64::from(mix(tag, 0) % 6_000);
    let offset_ms = u64::from(mix(tag, 1)) % cycle_ms;
    let phase = (t.as_millis() as u64 + offset_ms) % cycle_ms;
    if phase * 10 >= cycle_ms * 4 {
        return -127;
    }
    let step = (t.as_millis() / 200) as u32;
    -15 - (mix(tag, step.wrapping_add(2)) % 21) as i8
}

/// Whether bot `tag` has its microphone muted at `t` when it mutes for a third of every
/// `period`.
pub fn muted_at(tag: u32, t: Duration, period: Duration) -> bool {
    let period_ms = period.as_millis().max(3) as u64;
    let phase = (t.as_millis() as u64 + u64::from(mix(tag, 3)) % period_ms) % period_ms;
    phase * 3 < period_ms
}

/// A small integer hash (splitmix-like) of a tag and a counter.
fn mix(tag: u32, n: u32) -> u32 {
    let mut x = (u64::from(tag) << 32 | u64::from(n)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_talk_about_forty_percent_of_the_time_at_speech_levels() {
        for tag in 1..20 {
            let levels: Vec<i8> = (0..600)
                .map(|i| level_at(tag, Duration::from_millis(i * 100)))
                .collect();
            let talking = levels.iter().filter(|l| **l > -100).count();
            assert!((150..=330).contains(&talking), "tag {tag}: {talking}");
            assert!(levels.iter().all(|l| *l == -127 || (-35..=-15).contains(l)));
        }
    }

    #[test]
    fn muted_a_third_of_the_time() {
        let period = Duration::from_secs(9);
        let muted = (0..900)
            .filter(|i| muted_at(7, Duration::from_millis(i * 10), period))
            .count();
        assert!((290..=310).contains(&muted), "{muted}");
    }
}
