//! A subscriber's bandwidth: the egress estimate (str0m's raw one, every 250 ms; its
//! `EgressBitrateEstimate` event is a 3 s average used only until the first raw one), the
//! [`Allocator`] that shares it among the video tracks every half second or at once when the
//! estimate falls below what is sent, the padding and probing target given back to the
//! estimator, and the [`EstimatorRestart`] for an estimator stuck below the demand.
//!
//! The layers are kept steady where the estimate is not: a dip of the estimate below what
//! is sent is ridden out for [`DIP_GRACE`] if it is shallow (within [`DIP_MARGIN`]) and the link
//! loses nothing (GoogCC cuts its estimate to 0.85 of the acknowledged rate at every
//! delay spike, then climbs back in a second or two: measured on open links, each cut cost a
//! layer switch and two keyframe waits).
//!
//! A fall of the estimate to below [`ONSET_FALL`] of what is sent is the onset of congestion:
//! the estimator's first cut still counts the packets the link's queue was draining, and it
//! cuts again within a second. The layers are then chosen for [`ONSET_SHARE`] of the estimate,
//! so a track goes straight to the layer the link will carry rather than stopping on the way
//! (each downgrade waits for a keyframe, frozen; an upgrade costs no freeze).
//!
//! A fall that lowers the layers on a link that has lost nothing for [`LOSS_QUIET`] is
//! checked by probing for everything the tracks want, [`VERIFY_AFTER`] later if the link
//! still loses nothing (see [`RESTART_PROBING`]): a receiver starved of CPU reads its socket
//! in bursts, which the delay-based estimator takes for a queue, and an open link then
//! answers the probe at once instead of being climbed back over seconds.
//!
//! Until the estimator has measured anything its estimate is the configured starting guess
//! (1 Mbit/s by default, below a 720p top layer): it does not lower the layers a new
//! subscriber started on (that cost every join a switch down and back up within its first
//! second); the first measurement does, or the guess itself after [`UNMEASURED_GRACE`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::bwe::Bitrate;
use tracing::{debug, trace};

use super::subscription::Subscription;
use crate::allocator::{Allocator, Budget, LayerReason, TrackNeeds, UP_FACTOR};
use crate::counters::WorkerCounters;
use crate::estimator_restart::EstimatorRestart;
use crate::ids::TrackId;
use crate::peer::Ctx;

/// How often the layers are re-allocated from the bandwidth estimate.
const ALLOCATION_PERIOD: Duration = Duration::from_millis(500);
/// Bandwidth set aside per audio track.
const AUDIO_BPS: u64 = 50_000;
/// Set aside on top for an audio track sent as RED (redundant audio: about twice the bitrate).
const RED_EXTRA_BPS: u64 = 40_000;
/// Share of the egress estimate that padding may fill while a track waits to go up a layer.
const PAD_SHARE: f64 = 0.85;
/// The longest dip of the estimate below what is sent that the layers ride out.
const DIP_GRACE: Duration = Duration::from_secs(2);
/// ... if what is sent is at most this much above the estimate (the budget grows by it).
const DIP_MARGIN: f64 = 1.35;
/// An estimate below this share of what is sent is the onset of congestion...
const ONSET_FALL: f64 = 0.7;
/// ... and the layers are chosen for this share of it.
const ONSET_SHARE: f64 = 0.6;

/// How long after an estimator restart it is asked to probe for everything the tracks want,
/// and the tracks climb to what its estimate allows without waiting out a hold (on a link
/// that lost packets in the last [`LOSS_QUIET`], after [`crate::allocator::PROBED_HOLD`]: a
/// token bucket's burst fools the probes). str0m's
/// start-up probes after a restart go to 3 and 6 times the estimate, each capped at twice the
/// wanted rate: aimed at the next layer up they found only that layer, and the layer above
/// took a second probe round and hold. A restart happens only on a link losing nothing, with
/// a still estimate. (The virtual-clock capped-viewer scenario was back on the top layer
/// 10.8 s after the limit was lifted before this, the 2 s still-wait of
/// [`crate::estimator_restart::STUCK_AFTER`] and the free first climb of
/// [`crate::allocator::Allocator`]; 4.1 s after.)
const RESTART_PROBING: Duration = Duration::from_secs(3);

/// How many times a fall of the estimate on a link losing nothing is checked by probing (a
/// probe can be spoilt: a receiver that stalls in the middle of one measures it slow)...
const VERIFY_PROBES: u8 = 3;
/// ... the first this long after the fall and each next this long after the one before, if
/// the link has lost nothing for [`LOSS_QUIET`] then (the loss is measured over the last
/// second). A link that just narrowed loses packets
/// around the fall (its queue overflowed while the estimate fell) and is not probed: a
/// restarted estimator forgets that loss and starts from the fallen estimate, still above the
/// link. (With the probe at once, a CI run of the browser test saw a viewer capped at
/// 400 kbit/s go back to the top layer during the cap, 4.3 s frozen, and another switch
/// layers 7 times under the cap.)
const VERIFY_AFTER: Duration = Duration::from_secs(1);
/// Egress loss above this fraction is a narrow link, not a stuck or misled estimator.
const MAX_LOSS: f32 = 0.02;
/// How long a link must have lost nothing for a fall of its estimate to be checked by probing.
const LOSS_QUIET: Duration = Duration::from_secs(10);

/// How long the starting guess of the estimate is not taken as a measurement (it does not
/// lower the layers): the estimator's first probes answer within a second on a working
/// link, and a client that never sends feedback (its estimate never moves) gets no more
/// than this of layers above the guess.
const UNMEASURED_GRACE: Duration = Duration::from_millis(1500);

/// The bandwidth side of one subscriber.
#[derive(Debug, Default)]
pub(super) struct Bandwidth {
    /// Shares the estimate among the video tracks.
    allocator: Allocator,
    /// Latest egress bandwidth estimate (bits per second).
    estimate: Option<u64>,
    /// Whether `estimate` is the raw one from the statistics.
    raw_estimate: bool,
    /// What the last allocation sends (media plus audio allowance): an estimate below it
    /// re-allocates at once.
    in_use: u64,
    /// Egress loss fraction over the last second.
    loss: Option<f32>,
    /// When the loss last exceeded [`MAX_LOSS`].
    lossy_at: Option<Instant>,
    restart: EstimatorRestart,
    /// When the allocator runs next (while tracks are received).
    next_allocation: Option<Instant>,
    /// Since when the estimate has been below `in_use`.
    dip_since: Option<Instant>,
    /// After an estimator restart or a loss-free fall of the estimate, until when the
    /// estimator is asked to probe for all the tracks want rather than the next layer up, and
    /// the layers follow its estimate without a hold (see [`RESTART_PROBING`]).
    probe_all_until: Option<Instant>,
    /// The estimate has moved from the configured starting guess (the estimator measured), or
    /// [`UNMEASURED_GRACE`] has passed since the first estimate.
    measured: bool,
    /// When the allocator first had an estimate.
    first_estimate_at: Option<Instant>,
    /// The estimate fell on a link losing nothing: the estimator is restarted from it so that
    /// it probes, this many more times while the tracks are held back and the link loses
    /// nothing (see the module's documentation).
    verify_probes_left: u8,
    /// The earliest time of the next such probe.
    verify_after: Option<Instant>,
}

/// What an allocation did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Allocated {
    /// It told the state machine what to probe for (which must then be drained).
    pub(super) mutated: bool,
    /// A track's keyframe wait changed (the retry schedule must be recomputed).
    pub(super) waits_changed: bool,
}

impl Bandwidth {
    /// When the allocator runs next.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.next_allocation
    }

    /// Run the allocator at `now` (a track started flowing: at once, unless already due).
    pub(super) fn start(&mut self, now: Instant) {
        self.next_allocation.get_or_insert(now);
    }

    /// Run the allocator now (the subscriber's request changed).
    pub(super) fn allocate_now(&mut self, now: Instant) {
        self.next_allocation = Some(now);
    }

    /// The smoothed estimate event: taken only until the raw one arrives.
    pub(super) fn on_smoothed(&mut self, bps: u64, now: Instant) {
        if !self.raw_estimate {
            self.on_estimate(bps, now);
        }
    }

    /// The raw estimate and the egress loss fraction, from the statistics.
    pub(super) fn on_raw(&mut self, bps: u64, loss: Option<f32>, now: Instant) {
        self.raw_estimate = true;
        self.loss = loss;
        if loss.is_some_and(|l| l > MAX_LOSS) {
            self.lossy_at = Some(now);
        }
        self.on_estimate(bps, now);
    }

    /// If what is being sent no longer fits, the layers are re-allocated now rather than at
    /// the next period (a congested link should not wait).
    fn on_estimate(&mut self, bps: u64, now: Instant) {
        self.estimate = Some(bps);
        if bps < self.in_use && self.next_allocation.is_some() {
            self.next_allocation = Some(now);
        }
    }

    /// Runs the allocator if it is due: shares the estimate among the video tracks and
    /// applies the result to each subscription.
    pub(super) fn run(
        &mut self,
        rtc: &mut Rtc,
        subs: &mut HashMap<TrackId, Subscription>,
        ctx: &mut Ctx<'_>,
    ) -> Option<Allocated> {
        if self.next_allocation.is_none_or(|t| t > ctx.now) {
            return None;
        }
        let allocated = self.allocate(rtc, subs, ctx);
        let receiving = subs.values().any(|s| s.is_active());
        self.next_allocation = receiving.then_some(ctx.now + ALLOCATION_PERIOD);
        Some(allocated)
    }

    fn allocate(
        &mut self,
        rtc: &mut Rtc,
        subs: &mut HashMap<TrackId, Subscription>,
        ctx: &mut Ctx<'_>,
    ) -> Allocated {
        let mut done = Allocated::default();
        let video: Vec<(TrackId, TrackNeeds)> = subs
            .iter()
            .filter(|(_, s)| s.is_video() && s.is_active())
            .map(|(id, s)| {
                let needs = TrackNeeds {
                    active: s.route.available_layers(),
                    rates: s.route.layer_rates(),
                    cap: s.requested_cap(),
                    current: s.switcher.target(),
                    temporal: s.route.has_temporal.load(Ordering::Relaxed),
                    max_temporal: s.switcher.wanted_max_temporal(),
                };
                (*id, needs)
            })
            .collect();
        if video.is_empty() {
            return done;
        }
        let audio: u64 = subs
            .values()
            .filter(|s| !s.is_video() && s.is_active())
            .map(|s| AUDIO_BPS + if s.sending_red { RED_EXTRA_BPS } else { 0 })
            .sum();
        // Without an estimate (no transport-wide feedback from this client) there is no
        // bandwidth limit, only the requested quality.
        if let Some(estimate) = self.estimate {
            let first = *self.first_estimate_at.get_or_insert(ctx.now);
            self.measured |= estimate != ctx.shared.config.initial_egress_bitrate
                || ctx.now.saturating_duration_since(first) >= UNMEASURED_GRACE;
        }
        let mut budget = self.budget(audio, ctx.now);
        budget.probed = self.probe_all_until.is_some_and(|t| ctx.now < t);
        let quiet = self.loss_quiet(ctx.now);
        budget.lossy_lately = !quiet;
        let allocation = self.allocator.allocate(ctx.now, budget, &video);
        trace!(estimate = ?self.estimate, audio, ?budget, ?allocation, "allocated");
        for ((id, choice), max_temporal) in allocation.choices.iter().zip(&allocation.max_temporal)
        {
            if let Some(sub) = subs.get_mut(id) {
                sub.switcher.set_max_temporal(*max_temporal);
                sub.publish_demand(ctx);
                sub.bandwidth_cap = choice
                    .layer
                    .filter(|_| choice.reason == LayerReason::Bandwidth);
                sub.set_reason(Some(choice.reason), ctx);
                done.waits_changed |= sub.retarget(None, ctx);
            }
        }
        let Some(estimate) = self.estimate else {
            return done;
        };
        // While a track is held back by the bandwidth, sustain (media plus padding) the rate
        // of the next layer up with its headroom, but at most PAD_SHARE of the estimate, and
        // ask the estimator to probe for it. Without padding the estimate cannot grow past
        // 1.5 times what media carries (str0m's AIMD cap) and probes are rare, so a viewer
        // that once dropped a layer stays down; padding up to the whole estimate instead fills
        // a constrained link and causes the losses and freezes it should avoid (measured).
        let used = allocation.used.saturating_add(audio);
        self.in_use = used;
        let timings = &ctx.shared.config.timings;
        timings.subscriber_estimate.record(estimate as f64);
        timings.subscriber_target.record(used as f64);
        let held_back = allocation.next_step > allocation.used;
        let stuck = self.restart.check(ctx.now, estimate, held_back, quiet);
        if !held_back || !quiet {
            self.verify_probes_left = 0;
        }
        let verifying =
            self.verify_probes_left > 0 && self.verify_after.is_none_or(|t| ctx.now >= t);
        if verifying {
            self.verify_probes_left -= 1;
            self.verify_after = Some(ctx.now + VERIFY_AFTER);
        }
        let restarting = stuck || verifying;
        if restarting {
            self.probe_all_until = Some(ctx.now + RESTART_PROBING);
            budget.probed = true;
        }
        let with_headroom = |bps: u64| (bps.saturating_add(audio) as f64 * UP_FACTOR) as u64;
        let (minimum, wanted) = if held_back {
            let next = with_headroom(allocation.next_step);
            let padded = next.min((estimate as f64 * PAD_SHARE) as u64).max(used);
            if budget.probed {
                (padded, with_headroom(allocation.wanted).max(next))
            } else {
                (padded, next)
            }
        } else {
            (used, used)
        };
        rtc.bwe()
            .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(wanted));
        done.mutated = true;
        if restarting {
            // Stuck below what the tracks want, or fallen and lowered a layer, on a link
            // without loss: probe afresh, for everything they want (above).
            rtc.bwe().reset(Bitrate::bps(estimate));
            WorkerCounters::add(&ctx.counters().estimator_restarts, 1);
            debug!(
                estimate,
                stuck, verifying, "bandwidth estimator restarted to probe the link"
            );
        }
        done
    }

    /// The link has lost at most [`MAX_LOSS`] for [`LOSS_QUIET`].
    fn loss_quiet(&self, now: Instant) -> bool {
        self.loss.is_none_or(|l| l <= MAX_LOSS)
            && self
                .lossy_at
                .is_none_or(|t| now.saturating_duration_since(t) >= LOSS_QUIET)
    }

    /// The video budget: the estimate less `audio`; for the layers being sent, more during a
    /// shallow dip of the estimate on a link losing at most [`MAX_LOSS`] (see [`DIP_GRACE`])
    /// and until the estimator has measured anything; less at the onset of congestion (see
    /// [`ONSET_FALL`]). A fall that lowers the layers on a link quiet for [`LOSS_QUIET`] is
    /// to be checked by probing (see [`VERIFY_AFTER`]).
    fn budget(&mut self, audio: u64, now: Instant) -> Budget {
        let Some(estimate) = self.estimate else {
            return Budget::from(u64::MAX);
        };
        let fresh = estimate.saturating_sub(audio);
        if !self.measured {
            return Budget {
                fresh,
                keep: u64::MAX,
                ..Budget::from(fresh)
            };
        }
        if estimate >= self.in_use {
            self.dip_since = None;
            return Budget::from(fresh);
        }
        let lossy = self.loss.is_some_and(|l| l > MAX_LOSS);
        // The layers go down now, unless the dip is ridden out: on a quiet link the fall is
        // to be checked by probing (up to VERIFY_PROBES times, see `allocate`).
        let quiet = self.loss_quiet(now);
        let mut lower = |budget: u64| {
            if quiet && self.verify_probes_left == 0 {
                self.verify_probes_left = VERIFY_PROBES;
                self.verify_after = Some(now + VERIFY_AFTER);
            }
            Budget::from(budget)
        };
        if (estimate as f64) < self.in_use as f64 * ONSET_FALL {
            let share = (estimate as f64 * ONSET_SHARE) as u64;
            return lower(share.saturating_sub(audio));
        }
        let since = *self.dip_since.get_or_insert(now);
        let shallow = estimate as f64 * DIP_MARGIN >= self.in_use as f64;
        if shallow && !lossy && now.saturating_duration_since(since) < DIP_GRACE {
            Budget {
                fresh,
                keep: (fresh as f64 * DIP_MARGIN) as u64,
                ..Budget::from(fresh)
            }
        } else {
            lower(fresh)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sending(estimate: u64, in_use: u64, loss: f32) -> Bandwidth {
        Bandwidth {
            estimate: Some(estimate),
            in_use,
            loss: Some(loss),
            measured: true,
            ..Bandwidth::default()
        }
    }

    #[test]
    fn a_shallow_dip_is_ridden_out_for_the_grace_and_no_longer() {
        let t0 = Instant::now();
        let mut b = sending(800_000, 1_000_000, 0.0);
        let dip = b.budget(50_000, t0);
        assert_eq!(dip.fresh, 750_000);
        assert_eq!(dip.keep, (750_000.0 * DIP_MARGIN) as u64);
        assert_eq!(b.budget(50_000, t0 + DIP_GRACE / 2).keep, dip.keep);
        assert_eq!(b.budget(50_000, t0 + DIP_GRACE), Budget::from(750_000));
        // Back above what is sent: the next dip has its own grace.
        b.estimate = Some(1_100_000);
        assert_eq!(b.budget(50_000, t0 + DIP_GRACE), Budget::from(1_050_000));
        b.estimate = Some(800_000);
        assert_eq!(b.budget(50_000, t0 + 2 * DIP_GRACE).keep, dip.keep);
    }

    #[test]
    fn the_starting_guess_lowers_nothing_and_a_loss_free_fall_is_probed() {
        let t0 = Instant::now();
        let mut unmeasured = sending(1_000_000, 1_500_000, 0.0);
        unmeasured.measured = false;
        assert_eq!(unmeasured.budget(50_000, t0).keep, u64::MAX);
        // Measured: the same fall lowers the layers and is to be checked by probing, a
        // second later...
        let mut b = sending(1_000_000, 1_500_000, 0.0);
        // (an onset: below ONSET_FALL of what is sent)
        assert_eq!(b.budget(50_000, t0), Budget::from(550_000));
        assert_eq!(b.verify_probes_left, VERIFY_PROBES);
        assert_eq!(b.verify_after, Some(t0 + VERIFY_AFTER));
        // ... not on a lossy link, nor on one that lost within LOSS_QUIET.
        let mut lossy = sending(1_000_000, 1_500_000, 0.1);
        lossy.budget(50_000, t0);
        assert_eq!(lossy.verify_probes_left, 0);
        let mut lost = sending(1_000_000, 1_500_000, 0.0);
        lost.lossy_at = Some(t0);
        lost.budget(50_000, t0 + LOSS_QUIET / 2);
        assert_eq!(lost.verify_probes_left, 0);
        lost.budget(50_000, t0 + LOSS_QUIET);
        assert_eq!(lost.verify_probes_left, VERIFY_PROBES);
    }

    #[test]
    fn no_dip_is_ridden_out_under_congestion_loss_or_a_deep_fall() {
        let t0 = Instant::now();
        let lossy = sending(800_000, 1_000_000, 0.2).budget(50_000, t0);
        assert_eq!(lossy, Budget::from(750_000));
        // The onset of congestion: chosen for a share of the estimate.
        let onset = sending(400_000, 1_000_000, 0.0).budget(50_000, t0);
        assert_eq!(
            onset,
            Budget::from((400_000.0 * ONSET_SHARE) as u64 - 50_000)
        );
        assert_eq!(
            Bandwidth::default().budget(50_000, t0),
            Budget::from(u64::MAX),
            "no estimate, no limit"
        );
    }
}
