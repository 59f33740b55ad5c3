//! Which simulcast layer a subscriber should receive, given the layers the publisher is sending
//! and the quality the subscriber asked for.
//!
//! Layers are indexed from 0 (lowest quality). The choice is the best layer being sent that
//! does not exceed the cap; if every layer being sent is above the cap, the lowest of them (a
//! subscriber that asked for "low" still gets video when only higher layers exist).

/// The quality a subscriber asks for on one video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quality {
    /// The server decides (today: the best layer being sent).
    #[default]
    Auto,
    /// At most the lowest layer.
    Low,
    /// At most the middle layer.
    Medium,
    /// At most the top layer.
    High,
}

impl Quality {
    /// The highest layer index allowed for a track with `layers` layers (`None`: no cap).
    pub(crate) fn cap(self, layers: u8) -> Option<u8> {
        let top = layers.saturating_sub(1);
        match self {
            Quality::Auto => None,
            Quality::Low => Some(0),
            Quality::Medium => Some(top / 2),
            Quality::High => Some(top),
        }
    }
}

/// What a subscriber wants of one video track: a quality, and the largest size it shows the
/// video at (a 320-pixel-wide tile needs no 1280-wide layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VideoPreference {
    /// The quality asked for.
    pub quality: Quality,
    /// Width and height, in device pixels, of the largest view of the track (`None`: any).
    pub max_size: Option<(u32, u32)>,
}

impl VideoPreference {
    /// The highest layer index allowed, from the quality and (where the layers' sizes are
    /// known) the size: the smallest layer that covers the view. `None`: no cap.
    pub(crate) fn cap(&self, layers: u8, sizes: &[(u32, u32)]) -> Option<u8> {
        let by_quality = self.quality.cap(layers);
        let by_size = self.max_size.and_then(|max| size_cap(max, sizes, layers));
        match (by_quality, by_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The lowest layer whose known size covers `max` (as wide and as high), or the largest
/// known layer if none does. Unknown sizes (`(0, 0)`) are skipped; `None` if no size is known,
/// or if none covers the view while a layer above the largest known one (of `layers`) is
/// still unknown: it may be the one that covers it, and capping below it would keep it from
/// ever being wanted, so never sent and never measured (a call pinned low for its whole length).
fn size_cap((width, height): (u32, u32), sizes: &[(u32, u32)], layers: u8) -> Option<u8> {
    let known = || {
        sizes
            .iter()
            .enumerate()
            .take(usize::from(layers.max(1)))
            .filter(|(_, (w, h))| *w > 0 && *h > 0)
    };
    if let Some((covering, _)) = known().find(|(_, (w, h))| *w >= width && *h >= height) {
        return u8::try_from(covering).ok();
    }
    let (largest, _) = known().max_by_key(|(i, _)| *i)?;
    if largest + 1 < usize::from(layers) {
        return None;
    }
    u8::try_from(largest).ok()
}

/// The layer to forward, from the bitmask of layers being sent (bit `i` = layer `i`) and an
/// optional cap. `None` if nothing is being sent.
pub(crate) fn choose_layer(active: u32, cap: Option<u8>) -> Option<u8> {
    if active == 0 {
        return None;
    }
    let cap = u32::from(cap.unwrap_or(31).min(31));
    // Bits 0..=cap.
    let allowed = if cap == 31 {
        u32::MAX
    } else {
        (1u32 << (cap + 1)) - 1
    };
    let within = active & allowed;
    let bits = if within != 0 { within } else { active };
    let layer = if within != 0 {
        31 - bits.leading_zeros()
    } else {
        bits.trailing_zeros()
    };
    u8::try_from(layer).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_within_cap_else_lowest_above() {
        assert_eq!(choose_layer(0, None), None);
        assert_eq!(choose_layer(0b111, None), Some(2));
        assert_eq!(choose_layer(0b111, Some(0)), Some(0));
        assert_eq!(choose_layer(0b111, Some(1)), Some(1));
        assert_eq!(choose_layer(0b011, Some(2)), Some(1), "top layer not sent");
        assert_eq!(
            choose_layer(0b100, Some(0)),
            Some(2),
            "only a higher layer is sent"
        );
        assert_eq!(
            choose_layer(0b110, Some(0)),
            Some(1),
            "the lowest of those above the cap"
        );
        assert_eq!(choose_layer(1 << 31, None), Some(31));
    }

    #[test]
    fn size_caps_pick_the_smallest_layer_covering_the_view() {
        let sizes = [(320, 180), (640, 360), (1280, 720), (0, 0)];
        let pref = |quality, max_size| VideoPreference { quality, max_size };
        assert_eq!(pref(Quality::Auto, None).cap(3, &sizes), None);
        assert_eq!(
            pref(Quality::Auto, Some((300, 170))).cap(3, &sizes),
            Some(0)
        );
        assert_eq!(
            pref(Quality::Auto, Some((400, 225))).cap(3, &sizes),
            Some(1)
        );
        assert_eq!(
            pref(Quality::Auto, Some((640, 360))).cap(3, &sizes),
            Some(1)
        );
        assert_eq!(
            pref(Quality::Auto, Some((1920, 1080))).cap(3, &sizes),
            Some(2)
        );
        // A tall view: the height decides.
        assert_eq!(
            pref(Quality::Auto, Some((200, 700))).cap(3, &sizes),
            Some(2)
        );
        // The quality asked for caps further; the size never raises it.
        assert_eq!(
            pref(Quality::Low, Some((1920, 1080))).cap(3, &sizes),
            Some(0)
        );
        assert_eq!(
            pref(Quality::High, Some((300, 170))).cap(3, &sizes),
            Some(0)
        );
        // Sizes not known (yet): only the quality counts.
        assert_eq!(
            pref(Quality::Auto, Some((300, 170))).cap(3, &[(0, 0); 4]),
            None
        );
        assert_eq!(
            pref(Quality::Auto, Some((300, 170))).cap(3, &[(0, 0), (640, 360), (0, 0)]),
            Some(1)
        );
    }

    #[test]
    fn a_view_larger_than_the_known_layers_does_not_cap_below_an_unknown_one() {
        let pref = VideoPreference {
            quality: Quality::Auto,
            max_size: Some((1280, 720)),
        };
        // The top layer has not started yet: its size is unknown, so nothing caps it away.
        assert_eq!(pref.cap(3, &[(320, 180), (640, 360), (0, 0), (0, 0)]), None);
        // Once known (or when there is no layer above), the largest covers what it can.
        assert_eq!(
            pref.cap(3, &[(320, 180), (640, 360), (960, 540), (0, 0)]),
            Some(2)
        );
        assert_eq!(
            pref.cap(2, &[(320, 180), (640, 360), (0, 0), (0, 0)]),
            Some(1)
        );
    }

    #[test]
    fn quality_caps() {
        assert_eq!(Quality::Auto.cap(3), None);
        assert_eq!(
            (
                Quality::Low.cap(3),
                Quality::Medium.cap(3),
                Quality::High.cap(3)
            ),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(
            (
                Quality::Low.cap(2),
                Quality::Medium.cap(2),
                Quality::High.cap(2)
            ),
            (Some(0), Some(0), Some(1))
        );
        assert_eq!(Quality::High.cap(1), Some(0));
        assert_eq!(Quality::High.cap(0), Some(0));
    }
}
