//! How loud a publisher's audio track is, from the RFC 6464 audio-level header extension,
//! smoothed and reported a few times a second while someone speaks.
//!
//! The extension carries the level in -dBov (0 is the loudest, -127 silence). Each packet's
//! level becomes a loudness in 0..1 and feeds a moving average that rises fast (speech is
//! noticed within ~100 ms) and falls slowly (the pauses between words, ~1 s, do not end it).
//! Every report interval the meter says the smoothed loudness if the track is speaking, and
//! once more (0) when it stops, so a silent room costs no events.

use std::time::{Duration, Instant};

/// How often a speaking track reports its level.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(250);
/// Loudness above which a track counts as speaking (about -70 dBov).
const SPEAKING: f32 = 0.45;
/// Weight of a louder packet in the moving average (attack).
const ATTACK: f32 = 0.2;
/// Weight of a quieter packet in the moving average (release).
const RELEASE: f32 = 0.02;

/// The level meter of one audio track. Sans-IO: time comes in as `now`.
#[derive(Debug, Default)]
pub(crate) struct AudioLevelMeter {
    smoothed: f32,
    speaking: bool,
    next_report: Option<Instant>,
}

impl AudioLevelMeter {
    /// One packet's audio level (`None` when the packet has no extension).
    pub(crate) fn on_packet(
        &mut self,
        level: Option<i8>,
        voice_activity: Option<bool>,
        now: Instant,
    ) {
        let Some(level) = level else {
            return;
        };
        let dbov = f32::from(level.unsigned_abs().min(127));
        let mut loudness = (127.0 - dbov) / 127.0;
        if voice_activity == Some(false) {
            loudness = loudness.min(SPEAKING * 0.5);
        }
        let alpha = if loudness > self.smoothed {
            ATTACK
        } else {
            RELEASE
        };
        self.smoothed += alpha * (loudness - self.smoothed);
        if self.next_report.is_none() && (self.smoothed > SPEAKING || self.speaking) {
            self.next_report = Some(now);
        }
    }

    /// When [`Self::poll`] next has something to say.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next_report
    }

    /// The level to report now, if any: the smoothed loudness while speaking, then 0 once.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<f32> {
        let due = self.next_report.filter(|t| *t <= now)?;
        let speaking = self.smoothed > SPEAKING;
        let report = if speaking {
            Some(self.smoothed)
        } else if self.speaking {
            Some(0.0)
        } else {
            None
        };
        self.speaking = speaking;
        self.next_report = speaking
            .then_some(due + REPORT_INTERVAL)
            .map(|t| t.max(now));
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Duration = Duration::from_millis(20);

    /// Feeds `n` packets at `level` from `t`, polling as a worker would; returns the reports.
    fn run(m: &mut AudioLevelMeter, t: &mut Instant, n: u32, level: i8) -> Vec<f32> {
        let mut reports = Vec::new();
        for _ in 0..n {
            *t += PACKET;
            m.on_packet(Some(level), None, *t);
            if m.deadline().is_some_and(|d| d <= *t) {
                reports.extend(m.poll(*t));
            }
        }
        reports
    }

    #[test]
    fn silence_says_nothing() {
        let mut m = AudioLevelMeter::default();
        let mut t = Instant::now();
        assert!(run(&mut m, &mut t, 500, -127).is_empty());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn speech_reports_a_few_times_a_second_then_a_final_zero() {
        let mut m = AudioLevelMeter::default();
        let mut t = Instant::now();
        let speech = run(&mut m, &mut t, 100, -20); // 2 s of loud speech
        assert!(
            (7..=9).contains(&speech.len()),
            "{} reports in 2 s",
            speech.len()
        );
        assert!(speech.iter().all(|l| *l > SPEAKING && *l <= 1.0));
        let after = run(&mut m, &mut t, 100, -127);
        assert_eq!(after.last(), Some(&0.0), "one final zero when speech stops");
        assert_eq!(after.iter().filter(|l| **l == 0.0).count(), 1);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn pauses_between_words_do_not_end_speech() {
        let mut m = AudioLevelMeter::default();
        let mut t = Instant::now();
        let mut reports = Vec::new();
        for _ in 0..4 {
            reports.extend(run(&mut m, &mut t, 25, -30)); // 500 ms of words
            reports.extend(run(&mut m, &mut t, 15, -127)); // 300 ms pause
        }
        assert!(!reports.is_empty());
        assert!(
            reports.iter().all(|l| *l > 0.0),
            "never reported as stopped: {reports:?}"
        );
    }

    #[test]
    fn a_single_click_is_not_speech() {
        let mut m = AudioLevelMeter::default();
        let mut t = Instant::now();
        run(&mut m, &mut t, 50, -127);
        let click = run(&mut m, &mut t, 1, 0);
        let rest = run(&mut m, &mut t, 50, -127);
        assert!(click.is_empty() && rest.is_empty());
    }
}
