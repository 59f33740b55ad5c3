//! Dynacast: the simulcast layers of a published video track that no subscriber receives or
//! is switching to are paused at the publisher, which then spends neither CPU nor uplink on
//! them; a paused layer is resumed as soon as a subscriber wants it.
//!
//! A layer is paused after nobody has wanted it for [`PAUSE_AFTER`] (so a subscriber moving
//! between layers does not make the publisher toggle encodings), and resumed at once when a
//! subscriber asks for its keyframe. The lowest layer is never paused: it is cheap, and a new
//! subscriber starts on it without waiting for the publisher. Sans-IO: time and the wanted
//! layers come in, the paused set goes out (the control plane tells the publisher).

use std::time::{Duration, Instant};

/// A layer nobody has wanted for this long is paused.
pub(crate) const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// How often the wanted layers are checked.
pub(crate) const CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Layers handled per track (bits of the masks).
const MAX_LAYERS: usize = 32;

/// The dynacast state of one simulcast track.
#[derive(Debug)]
pub(crate) struct Dynacast {
    layers: u8,
    /// Per layer: when a subscriber last wanted it.
    last_wanted: Vec<Instant>,
    /// Bit `i`: layer `i` is paused.
    paused: u32,
    next_check: Instant,
}

impl Dynacast {
    /// A track with `layers` layers, published at `now` (every layer counts as wanted then).
    pub(crate) fn new(layers: u8, now: Instant) -> Self {
        let layers = layers.min(MAX_LAYERS as u8);
        Self {
            layers,
            last_wanted: vec![now; usize::from(layers)],
            paused: 0,
            next_check: now + CHECK_PERIOD,
        }
    }

    /// When [`Self::poll`] is next due.
    pub(crate) fn deadline(&self) -> Instant {
        self.next_check
    }

    /// Bit `i`: layer `i` is paused.
    pub(crate) fn paused(&self) -> u32 {
        self.paused
    }

    /// A subscriber wants `layer` now (it asked for its keyframe). Returns the new paused
    /// set if that resumed it.
    pub(crate) fn demand(&mut self, layer: u8, now: Instant) -> Option<u32> {
        let slot = self.last_wanted.get_mut(usize::from(layer))?;
        *slot = now;
        let bit = 1u32 << layer;
        if self.paused & bit == 0 {
            return None;
        }
        self.paused &= !bit;
        Some(self.paused)
    }

    /// The periodic check, with the union of the layers subscribers want (bit `i`: layer
    /// `i`). Returns the new paused set if it changed.
    pub(crate) fn poll(&mut self, now: Instant, wanted: u32) -> Option<u32> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_PERIOD;
        let before = self.paused;
        for (layer, last) in (0u8..).zip(self.last_wanted.iter_mut()) {
            let bit = 1u32 << layer;
            if wanted & bit != 0 {
                *last = now;
                self.paused &= !bit;
            } else if layer > 0 && now.saturating_duration_since(*last) >= PAUSE_AFTER {
                self.paused |= bit;
            }
        }
        (self.paused != before).then_some(self.paused)
    }

    /// Per layer, lowest first: whether the publisher should send it.
    pub(crate) fn active_list(&self) -> Vec<bool> {
        (0..self.layers)
            .map(|l| self.paused & (1 << l) == 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn unwanted_layers_pause_after_the_grace_and_resume_on_demand() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(3, t0);
        // Everyone watches the low layer only.
        assert_eq!(d.poll(t0 + S, 0b001), None);
        assert_eq!(d.poll(t0 + 2 * S, 0b001), None);
        assert_eq!(d.poll(t0 + 3 * S, 0b001), Some(0b110));
        assert_eq!(d.active_list(), vec![true, false, false]);
        // Not polled again before its period.
        assert_eq!(d.poll(t0 + 3 * S + S / 2, 0b001), None);
        // A subscriber asks for the top layer's keyframe: resumed at once.
        assert_eq!(d.demand(2, t0 + 4 * S), Some(0b010));
        assert_eq!(d.demand(2, t0 + 4 * S), None, "already resumed");
        // It stays while wanted, and pauses again three seconds after it no longer is.
        assert_eq!(d.poll(t0 + 5 * S, 0b101), None);
        assert_eq!(d.poll(t0 + 6 * S, 0b001), None);
        assert_eq!(d.poll(t0 + 7 * S, 0b001), None);
        assert_eq!(d.poll(t0 + 8 * S, 0b001), Some(0b110));
    }

    #[test]
    fn the_lowest_layer_is_never_paused() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(3, t0);
        for i in 1..10 {
            d.poll(t0 + i * S, 0);
        }
        assert_eq!(d.paused(), 0b110);
        assert_eq!(d.active_list(), vec![true, false, false]);
    }

    #[test]
    fn a_layer_moved_between_briefly_is_not_toggled() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(3, t0);
        // The wanted layer alternates every two seconds: every layer stays on.
        for i in 1..20u32 {
            let wanted = if (i / 2) % 2 == 0 { 0b100 } else { 0b010 };
            assert_eq!(d.poll(t0 + i * S, wanted), None, "at {i} s");
        }
    }

    #[test]
    fn out_of_range_layers_are_ignored() {
        let t0 = Instant::now();
        let mut d = Dynacast::new(2, t0);
        assert_eq!(d.demand(7, t0), None);
        assert_eq!(d.poll(t0 + 5 * S, 0b1111_1100), Some(0b10));
    }
}
