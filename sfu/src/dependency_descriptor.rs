//! The Dependency Descriptor RTP header extension (AV1 RTP specification, appendix A): which
//! spatial and temporal layer each packet's frame belongs to, read through the template
//! structure the sender attaches to its keyframes, and rewritten per subscriber to say which
//! decode targets that subscriber still receives.
//!
//! An AV1 stream that carries every spatial layer on one SSRC (Chromium's
//! `scalabilityMode: 'L3T3_KEY'`) says nothing about its layers in the payload: this extension
//! is where the server learns them. A track's [`DescriptorReader`] keeps the latest structure
//! and the sender's active decode targets; each packet becomes [`SvcLayers`] for the layer
//! switch and a [`ForwardedDescriptor`] that a subscriber's [`DescriptorRewriter`] turns into
//! the bytes it sends: unchanged while the subscriber receives every layer, otherwise with the
//! active decode targets mask limited to the layers it gets (so its decoder waits for nothing
//! that will not come).
//!
//! Bad input (truncated descriptors, unknown template ids, structures with impossible layer
//! counts) reads as `None`: the packet's layers are unknown and it is not forwarded as
//! scalable. Nothing here panics or allocates without a bound: a descriptor is at most 255
//! bytes, a structure at most 64 templates and 32 decode targets.

use std::ops::Range;
use std::sync::Arc;

use str0m::rtp::{Extension, ExtensionSerializer, ExtensionValues};

use crate::keyframe::{SvcLayers, SvcStructure};

/// The extension's URI in SDP.
pub(crate) const URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// The header extension id the server offers it with (subscribers; a publisher's offer picks
/// its own).
pub(crate) const EXTENSION_ID: u8 = 12;

/// The most spatial layers a structure may describe (as many as a VP9 structure can).
const MAX_SPATIAL_LAYERS: usize = 8;
/// Temporal layers told apart in the active decode targets (higher ones count as the top).
const MAX_TEMPORAL_LAYERS: usize = 8;

/// Bit `dt` of entry `[s][t]`: decode target `dt` needs no spatial layer above `s` and no
/// temporal layer above `t`.
type TargetMasks = [[u32; MAX_TEMPORAL_LAYERS]; MAX_SPATIAL_LAYERS];
/// Template ids are 6 bits.
const MAX_TEMPLATES: usize = 64;
/// The largest extension element (two-byte form).
const MAX_LEN: usize = 255;

/// The extension for a peer's state machine, with the server's own (de)serializer.
pub(crate) fn extension() -> Extension {
    Extension::with_serializer(URI, Serializer)
}

/// One m-section of an SDP, as far as offering the descriptor goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section<'a> {
    pub(crate) mid: Option<&'a str>,
    pub(crate) video: bool,
    /// It sends simulcast (`a=simulcast`): each stream is one layer, chosen without the
    /// descriptor.
    pub(crate) simulcast: bool,
    /// The codec of its first (preferred) payload type, from the SDP's `a=rtpmap` lines.
    pub(crate) first_codec: Option<&'a str>,
}

impl Section<'_> {
    /// A single video stream whose preferred codec is AV1 or H264: the ones whose layers the
    /// server reads from the descriptor. VP8 and VP9 carry their own layer fields, and Chromium
    /// leaves VP8's picture ID, TL0PICIDX and temporal fields out when the descriptor is
    /// negotiated.
    pub(crate) fn reads_descriptor(&self) -> bool {
        self.video
            && !self.simulcast
            && self
                .first_codec
                .is_some_and(|c| c.eq_ignore_ascii_case("AV1") || c.eq_ignore_ascii_case("H264"))
    }
}

/// `sdp` with the descriptor's `a=extmap` line left only in the m-sections `keep` says;
/// returns it and the mids of the sections that still have it.
///
/// The descriptor is negotiated only where it is used (measured in the constrained-network
/// browser test): with it negotiated, a Chromium publisher's VP8 loses the payload fields its
/// viewers need, and a Chromium viewer of VP8 without the descriptor froze for seconds on a
/// thin or lossy link even when the packets carried those fields.
pub(crate) fn offer_only_where(
    sdp: &str,
    keep: impl Fn(&Section<'_>) -> bool,
) -> (String, Vec<String>) {
    let rtpmap = |pt: &str| {
        let prefix = format!("a=rtpmap:{pt} ");
        sdp.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|codec| codec.split('/').next())
    };
    let mut out = String::with_capacity(sdp.len());
    let mut kept = Vec::new();
    let mut rest = sdp;
    // The session part, then one m-section at a time.
    while !rest.is_empty() {
        let end = rest
            .match_indices("\nm=")
            .next()
            .map_or(rest.len(), |(i, _)| i + 1);
        let (part, next) = rest.split_at(end);
        rest = next;
        let Some(media) = part.strip_prefix("m=") else {
            out.push_str(part);
            continue;
        };
        let line = media.lines().next().unwrap_or_default();
        let section = Section {
            mid: part
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("a=mid:")),
            video: line.starts_with("video"),
            simulcast: part.lines().any(|l| l.starts_with("a=simulcast:")),
            first_codec: line.split_whitespace().nth(3).and_then(rtpmap),
        };
        let keeps = keep(&section);
        let mut has = false;
        for l in part.split_inclusive('\n') {
            let text = l.trim_end();
            if text.starts_with("a=extmap:") && text.ends_with(URI) {
                if !keeps {
                    continue;
                }
                has = true;
            }
            out.push_str(l);
        }
        if let (true, Some(mid)) = (has, section.mid) {
            kept.push(mid.to_string());
        }
    }
    (out, kept)
}

/// One packet's descriptor, as it arrived or as it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDescriptor(pub(crate) Box<[u8]>);

/// Reads the extension's bytes into [`RawDescriptor`] and writes them back: the parsing that
/// needs a track's history happens in [`DescriptorReader`].
#[derive(Debug)]
struct Serializer;

impl ExtensionSerializer for Serializer {
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize {
        let Some(raw) = ev.user_values.get::<RawDescriptor>() else {
            return 0;
        };
        match buf.get_mut(..raw.0.len()) {
            Some(out) if raw.0.len() <= MAX_LEN => {
                out.copy_from_slice(&raw.0);
                raw.0.len()
            }
            _ => 0,
        }
    }

    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool {
        // The mandatory fields are three bytes.
        if buf.len() < 3 {
            return false;
        }
        ev.user_values.set(RawDescriptor(buf.into()));
        true
    }

    fn is_video(&self) -> bool {
        true
    }

    fn is_audio(&self) -> bool {
        false
    }

    fn requires_two_byte_form(&self, ev: &ExtensionValues) -> bool {
        ev.user_values
            .get::<RawDescriptor>()
            .is_some_and(|raw| raw.0.len() > 16)
    }
}

/// A template dependency structure: the templates' layers, and which decode targets each
/// spatial layer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Structure {
    template_id_offset: u8,
    /// Decode targets (1-32).
    dt_count: u8,
    /// `(spatial, temporal)` of each template, in template order.
    templates: Vec<(u8, u8)>,
    /// The decode targets a receiver of some spatial and temporal layers can decode.
    up_to: Arc<TargetMasks>,
    /// Spatial layers (highest spatial id + 1).
    spatial_layers: u8,
    /// Render size of each spatial layer, `(0, 0)` when not given.
    sizes: [(u32, u32); MAX_SPATIAL_LAYERS],
    chain_count: u8,
}

impl Structure {
    /// Every decode target.
    fn all(&self) -> u32 {
        all_targets(self.dt_count)
    }
}

fn all_targets(dt_count: u8) -> u32 {
    u32::MAX >> (32 - u32::from(dt_count.clamp(1, 32)))
}

/// Where the parts of a descriptor are, to rewrite its active decode targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// It has the extended fields (more than the three mandatory bytes).
    extended: bool,
    structure_attached: bool,
    /// The three custom flags (dtis, fdiffs, chains).
    custom: u8,
    /// Bit offset of the active decode targets mask (or where it would go).
    mask_at: usize,
    /// Bits of the mask in the original (0: absent).
    mask_bits: u8,
    dt_count: u8,
}

/// One descriptor read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) start_of_frame: bool,
    pub(crate) end_of_frame: bool,
    pub(crate) template_id: u8,
    pub(crate) frame_number: u16,
    pub(crate) spatial: u8,
    pub(crate) temporal: u8,
    /// The structure this descriptor carries (keyframes).
    pub(crate) attached: Option<Structure>,
    /// The active decode targets it sets (all of them with a structure and no mask).
    pub(crate) active: Option<u32>,
    layout: Layout,
}

/// Why a descriptor cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Fewer bits than its fields need.
    Truncated,
    /// No structure attached and none known: its template id means nothing yet.
    NoStructure,
    /// A template id the structure does not have.
    UnknownTemplate,
    /// A structure with more spatial layers, templates or fdiffs than can be.
    Impossible,
}

/// Reads a descriptor, with the structure of the stream's latest keyframe when it carries
/// none itself.
pub(crate) fn read(raw: &[u8], known: Option<&Structure>) -> Result<Descriptor, ReadError> {
    if raw.len() > MAX_LEN {
        return Err(ReadError::Impossible);
    }
    let mut bits = Bits::new(raw);
    let start_of_frame = bits.flag()?;
    let end_of_frame = bits.flag()?;
    let template_id = bits.read(6)? as u8;
    let frame_number = bits.read(16)? as u16;
    let extended = raw.len() > 3;
    let (mut attach, mut active_present, mut custom) = (false, false, 0u8);
    if extended {
        attach = bits.flag()?;
        active_present = bits.flag()?;
        custom = bits.read(3)? as u8;
    }
    let attached = if attach {
        Some(read_structure(&mut bits)?)
    } else {
        None
    };
    let structure = attached.as_ref().or(known).ok_or(ReadError::NoStructure)?;
    let mask_at = bits.pos;
    let active = if active_present {
        Some(bits.read(u32::from(structure.dt_count))?)
    } else {
        attached.as_ref().map(Structure::all)
    };
    let index = (usize::from(template_id) + MAX_TEMPLATES
        - usize::from(structure.template_id_offset))
        % MAX_TEMPLATES;
    let &(spatial, temporal) = structure
        .templates
        .get(index)
        .ok_or(ReadError::UnknownTemplate)?;
    // The frame's own dependency definition: read past it to know the descriptor is whole.
    if custom & 0b100 != 0 {
        for _ in 0..structure.dt_count {
            bits.read(2)?;
        }
    }
    if custom & 0b010 != 0 {
        loop {
            let size = bits.read(2)?;
            if size == 0 {
                break;
            }
            bits.read(4 * size)?;
        }
    }
    if custom & 0b001 != 0 {
        for _ in 0..structure.chain_count {
            bits.read(8)?;
        }
    }
    Ok(Descriptor {
        start_of_frame,
        end_of_frame,
        template_id,
        frame_number,
        spatial,
        temporal,
        layout: Layout {
            extended,
            structure_attached: attach,
            custom,
            mask_at,
            mask_bits: if active_present {
                structure.dt_count
            } else {
                0
            },
            dt_count: structure.dt_count,
        },
        attached,
        active,
    })
}

/// `template_dependency_structure()`.
fn read_structure(bits: &mut Bits<'_>) -> Result<Structure, ReadError> {
    let template_id_offset = bits.read(6)? as u8;
    let dt_count = bits.read(5)? as u8 + 1;
    // template_layers(): next_layer_idc 0 same layer, 1 next temporal, 2 next spatial, 3 end.
    let mut templates = Vec::new();
    let (mut spatial, mut temporal) = (0u8, 0u8);
    loop {
        if templates.len() == MAX_TEMPLATES || usize::from(spatial) >= MAX_SPATIAL_LAYERS {
            return Err(ReadError::Impossible);
        }
        templates.push((spatial, temporal));
        match bits.read(2)? {
            1 => temporal += 1,
            2 => {
                temporal = 0;
                spatial += 1;
            }
            3 => break,
            _ => {}
        }
    }
    let spatial_layers = spatial + 1;
    // template_dtis(): a decode target needs the layers of every template that is part of it.
    let mut dt_layers = [(0u8, 0u8); 32];
    for &(template_spatial, template_temporal) in &templates {
        for needs in dt_layers.iter_mut().take(usize::from(dt_count)) {
            if bits.read(2)? != 0 {
                needs.0 = needs.0.max(template_spatial);
                needs.1 = needs.1.max(template_temporal);
            }
        }
    }
    // template_fdiffs(): each fdiff is 4 bits after a flag.
    for _ in &templates {
        while bits.flag()? {
            bits.read(4)?;
        }
    }
    // template_chains()
    let chain_count = bits.ns(u32::from(dt_count) + 1)? as u8;
    if chain_count > 0 {
        for _ in 0..dt_count {
            bits.ns(u32::from(chain_count))?;
        }
        for _ in 0..templates.len() * usize::from(chain_count) {
            bits.read(4)?;
        }
    }
    let mut sizes = [(0, 0); MAX_SPATIAL_LAYERS];
    if bits.flag()? {
        for size in sizes.iter_mut().take(usize::from(spatial_layers)) {
            *size = (bits.read(16)? + 1, bits.read(16)? + 1);
        }
    }
    let mut up_to: TargetMasks = [[0; MAX_TEMPORAL_LAYERS]; MAX_SPATIAL_LAYERS];
    for (spatial, row) in up_to.iter_mut().enumerate() {
        for (temporal, mask) in row.iter_mut().enumerate() {
            for (dt, (s, t)) in dt_layers.iter().take(usize::from(dt_count)).enumerate() {
                let top = MAX_TEMPORAL_LAYERS - 1;
                if usize::from(*s) <= spatial && (usize::from(*t) <= temporal || temporal == top) {
                    *mask |= 1 << dt;
                }
            }
        }
    }
    Ok(Structure {
        template_id_offset,
        dt_count,
        templates,
        up_to: Arc::new(up_to),
        spatial_layers,
        sizes,
        chain_count,
    })
}

/// The descriptor `raw` (laid out as `layout`) with its active decode targets set to `mask`;
/// `None` if it would not fit an extension element.
fn with_mask(raw: &[u8], layout: &Layout, mask: u32) -> Option<Box<[u8]>> {
    let mut out = BitWriter::with_capacity(raw.len() + 5);
    out.copy(raw, 0..24);
    out.put(u32::from(layout.structure_attached), 1);
    out.put(1, 1);
    out.put(u32::from(layout.custom), 3);
    if layout.extended {
        out.copy(raw, 29..layout.mask_at);
    }
    out.put(mask, u32::from(layout.dt_count));
    out.copy(
        raw,
        layout.mask_at + usize::from(layout.mask_bits)..raw.len() * 8,
    );
    let bytes = out.into_bytes();
    (bytes.len() <= MAX_LEN).then(|| bytes.into_boxed_slice())
}

/// A published track's reading of its descriptors: the structure of its latest keyframe and
/// the decode targets its sender keeps active.
#[derive(Debug, Default)]
pub(crate) struct DescriptorReader {
    structure: Option<Structure>,
    active: u32,
}

impl DescriptorReader {
    /// Reads one packet's descriptor: its layers, and what its subscribers rewrite. `None`
    /// when it cannot be read (see [`ReadError`]).
    pub(crate) fn read(
        &mut self,
        raw: Arc<RawDescriptor>,
    ) -> Option<(SvcLayers, ForwardedDescriptor)> {
        let d = read(&raw.0, self.structure.as_ref()).ok()?;
        if let Some(structure) = &d.attached {
            self.active = structure.all();
            self.structure = Some(structure.clone());
        }
        if let Some(active) = d.active {
            self.active = active;
        }
        let structure = self.structure.as_ref()?;
        let layers = SvcLayers {
            spatial: d.spatial,
            temporal: d.temporal,
            frame_start: d.start_of_frame,
            frame_end: d.end_of_frame,
            structure: d.attached.as_ref().map(|s| SvcStructure {
                spatial_layers: s.spatial_layers,
                sizes: s.sizes,
            }),
        };
        let forwarded = ForwardedDescriptor {
            raw,
            layout: d.layout,
            up_to: structure.up_to.clone(),
            active: self.active,
        };
        Some((layers, forwarded))
    }
}

/// One packet's descriptor on its way to the subscribers.
#[derive(Debug, Clone)]
pub(crate) struct ForwardedDescriptor {
    raw: Arc<RawDescriptor>,
    layout: Layout,
    /// The decode targets a subscriber receiving some layers can decode.
    up_to: Arc<TargetMasks>,
    /// The decode targets the sender keeps active.
    active: u32,
}

/// What one subscriber last told its receiver about the active decode targets.
#[derive(Debug, Default)]
pub(crate) struct DescriptorRewriter {
    /// It was told of fewer targets than the sender keeps active.
    limited: bool,
}

impl DescriptorRewriter {
    /// The descriptor to send with a packet to a subscriber that receives the spatial layers
    /// up to `spatial` and the temporal layers up to `temporal` (`None`: all).
    pub(crate) fn for_receiver(
        &mut self,
        d: &ForwardedDescriptor,
        spatial: u8,
        temporal: Option<u8>,
    ) -> Arc<RawDescriptor> {
        let s = usize::from(spatial).min(MAX_SPATIAL_LAYERS - 1);
        let t = temporal.map_or(MAX_TEMPORAL_LAYERS - 1, |t| {
            usize::from(t).min(MAX_TEMPORAL_LAYERS - 1)
        });
        let mask = d
            .up_to
            .get(s)
            .and_then(|row| row.get(t))
            .copied()
            .unwrap_or(u32::MAX)
            & d.active;
        let full = mask == d.active;
        // A structure resets the receiver's mask to every target; so does the sender's own.
        let resets = d.layout.structure_attached || d.layout.mask_bits > 0;
        if full && (!self.limited || resets) {
            self.limited = false;
            return d.raw.clone();
        }
        match with_mask(&d.raw.0, &d.layout, mask) {
            Some(bytes) => {
                self.limited = !full;
                Arc::new(RawDescriptor(bytes))
            }
            None => d.raw.clone(),
        }
    }
}

/// Reads bits, most significant first; past the end every read is [`ReadError::Truncated`].
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// `f(n)`, `n` <= 32.
    fn read(&mut self, n: u32) -> Result<u32, ReadError> {
        let mut value = 0u32;
        for _ in 0..n {
            let byte = self.bytes.get(self.pos / 8).ok_or(ReadError::Truncated)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            value = value << 1 | u32::from(bit);
            self.pos += 1;
        }
        Ok(value)
    }

    fn flag(&mut self) -> Result<bool, ReadError> {
        Ok(self.read(1)? == 1)
    }

    /// `ns(n)`: a value below `n` (>= 1) in as few bits as its range needs.
    fn ns(&mut self, n: u32) -> Result<u32, ReadError> {
        let width = u32::BITS - n.leading_zeros();
        let short = (1u32 << width) - n;
        let value = self.read(width - 1)?;
        if value < short {
            return Ok(value);
        }
        Ok((value << 1) - short + self.read(1)?)
    }
}

/// Writes bits, most significant first.
struct BitWriter {
    bytes: Vec<u8>,
    len: usize,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    /// The low `n` bits of `value`.
    fn put(&mut self, value: u32, n: u32) {
        for i in (0..n).rev() {
            self.push((value >> i) & 1 == 1);
        }
    }

    fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit && let Some(byte) = self.bytes.last_mut() {
            *byte |= 1 << (7 - self.len % 8);
        }
        self.len += 1;
    }

    /// The bits `range` of `from` (a range past its end copies what there is).
    fn copy(&mut self, from: &[u8], range: Range<usize>) {
        for pos in range {
            let Some(byte) = from.get(pos / 8) else {
                return;
            };
            self.push((byte >> (7 - pos % 8)) & 1 == 1);
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A three-spatial, three-temporal structure like Chromium's L3T3_KEY, simplified to one
/// template per layer: template `3s + t` is spatial layer `s`, temporal layer `t`; decode
/// target `3s + t` (`S{s}T{t}`) includes the templates at or below both; render sizes
/// 320x180, 640x360 and 1280x720; no fdiffs, no chains.
#[cfg(test)]
fn write_l3t3_key_structure(out: &mut BitWriter) {
    out.put(0, 6); // template_id_offset
    out.put(8, 5); // dt_cnt_minus_one
    // template_layers: (0,0) (0,1) (0,2) (1,0) (1,1) (1,2) (2,0) (2,1) (2,2)
    for idc in [1, 1, 2, 1, 1, 2, 1, 1, 3] {
        out.put(idc, 2);
    }
    // template_dtis: template (s, t) is part of every target at or above (s, t) (2:
    // required, 0: not present).
    for s in 0..3u32 {
        for t in 0..3u32 {
            for dt_s in 0..3u32 {
                for dt_t in 0..3u32 {
                    out.put(if dt_s >= s && dt_t >= t { 2 } else { 0 }, 2);
                }
            }
        }
    }
    // template_fdiffs: none.
    for _ in 0..9 {
        out.put(0, 1);
    }
    // chain_cnt = ns(10) = 0: three bits of 0.
    out.put(0, 3);
    out.put(1, 1); // resolutions_present_flag
    for (w, h) in [(320u32, 180u32), (640, 360), (1280, 720)] {
        out.put(w - 1, 16);
        out.put(h - 1, 16);
    }
}

/// One L3T3_KEY descriptor (see [`write_l3t3_key_structure`]): the template of `spatial`,
/// `temporal`, with the structure attached when `structure`.
#[cfg(test)]
pub(crate) fn l3t3_key_descriptor(
    start: bool,
    end: bool,
    spatial: u8,
    temporal: u8,
    frame_number: u16,
    structure: bool,
) -> Vec<u8> {
    let mut out = BitWriter::with_capacity(64);
    out.put(u32::from(start), 1);
    out.put(u32::from(end), 1);
    out.put(u32::from(spatial * 3 + temporal), 6);
    out.put(u32::from(frame_number), 16);
    if structure {
        out.put(0b1_0000, 5);
        write_l3t3_key_structure(&mut out);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyframe_descriptor() -> Vec<u8> {
        super::l3t3_key_descriptor(true, true, 0, 0, 7, true)
    }

    #[test]
    fn reads_the_layers_and_sizes_of_an_l3t3_key_structure() {
        let raw = keyframe_descriptor();
        let d = read(&raw, None).expect("reads");
        assert!(d.start_of_frame && d.end_of_frame);
        assert_eq!((d.spatial, d.temporal, d.frame_number), (0, 0, 7));
        let s = d.attached.expect("a structure");
        assert_eq!(s.spatial_layers, 3);
        assert_eq!(s.dt_count, 9);
        assert_eq!(
            s.sizes[..3],
            [(320, 180), (640, 360), (1280, 720)],
            "render sizes"
        );
        // Decode targets S0T0..S0T2 need layer 0 only, S1Tx up to 1, S2Tx up to 2; SxT0 no
        // temporal layer above 0.
        let top = MAX_TEMPORAL_LAYERS - 1;
        let spatial: Vec<u32> = s.up_to.iter().take(3).map(|row| row[top]).collect();
        assert_eq!(spatial, [0b000_000_111, 0b000_111_111, 0b111_111_111]);
        assert_eq!(s.up_to[2][0], 0b001_001_001, "T0 of each spatial layer");
        assert_eq!(s.up_to[0][1], 0b000_000_011);
        assert_eq!(d.active, Some(0x1ff));
        // Without the structure, the next packets read through the known one.
        let delta = l3t3_key_descriptor(true, false, 2, 1, 8, false);
        let d2 = read(&delta, Some(&s)).expect("reads with the known structure");
        assert_eq!((d2.spatial, d2.temporal), (2, 1));
        assert_eq!(read(&delta, None), Err(ReadError::NoStructure));
    }

    #[test]
    fn a_limited_receiver_is_told_its_active_targets_and_nothing_else_changes() {
        let mut reader = DescriptorReader::default();
        let key = Arc::new(RawDescriptor(keyframe_descriptor().into()));
        let (layers, fwd) = reader.read(key.clone()).expect("reads");
        assert_eq!(layers.structure.map(|s| s.spatial_layers), Some(3));
        let mut full = DescriptorRewriter::default();
        assert!(
            Arc::ptr_eq(&full.for_receiver(&fwd, 2, None), &key),
            "every layer: unchanged"
        );
        let mut low = DescriptorRewriter::default();
        let rewritten = low.for_receiver(&fwd, 0, None);
        let again = read(&rewritten.0, None).expect("the rewrite reads");
        let original = read(&key.0, None).expect("reads");
        assert_eq!(again.active, Some(0b111));
        assert_eq!(again.attached, original.attached);
        assert_eq!(
            (again.start_of_frame, again.end_of_frame, again.template_id),
            (true, true, original.template_id)
        );
        assert_eq!(again.frame_number, original.frame_number);

        // A descriptor of three bytes gains the extended fields for the mask alone.
        let short = Arc::new(RawDescriptor(
            l3t3_key_descriptor(false, true, 0, 2, 9, false).into(),
        ));
        assert_eq!(short.0.len(), 3);
        let (_, fwd) = reader.read(short).expect("reads");
        let rewritten = low.for_receiver(&fwd, 0, None);
        let structure = reader.structure.clone().expect("known");
        let d = read(&rewritten.0, Some(&structure)).expect("reads");
        assert_eq!((d.active, d.spatial, d.temporal), (Some(0b111), 0, 2));
        assert!(!d.start_of_frame && d.end_of_frame);
        assert_eq!(d.frame_number, 9);

        // Back to every layer without a structure: the receiver is told once.
        let (_, fwd) = reader
            .read(Arc::new(RawDescriptor(
                l3t3_key_descriptor(true, true, 1, 0, 10, false).into(),
            )))
            .expect("reads");
        let told = low.for_receiver(&fwd, 2, None);
        let d = read(&told.0, Some(&structure)).expect("reads");
        assert_eq!(d.active, Some(0x1ff));
        assert!(Arc::ptr_eq(&low.for_receiver(&fwd, 2, None), &fwd.raw));
    }

    #[test]
    fn the_descriptor_is_negotiated_only_where_it_is_read() {
        let answer = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96 45\r\na=extmap:12 {URI}\r\na=rtpmap:96 VP8/90000\r\n\
             a=rtpmap:45 AV1/90000\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 45 96\r\na=mid:2\r\na=extmap:12 {URI}\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 45 96\r\na=mid:3\r\na=extmap:12 {URI}\r\n\
             a=simulcast:recv q;h;f\r\n"
        );
        let (munged, kept) = offer_only_where(&answer, |s| s.reads_descriptor());
        assert_eq!(kept, ["2"]);
        let sections: Vec<&str> = munged.split("m=").collect();
        assert!(!sections[2].contains(URI), "VP8 first: no descriptor");
        assert!(sections[3].contains(URI), "AV1 first: the descriptor stays");
        assert!(
            !sections[4].contains(URI),
            "AV1 in simulcast: no descriptor"
        );
        assert_eq!(
            munged.len() + 2 * format!("a=extmap:12 {URI}\r\n").len(),
            answer.len()
        );
    }

    #[test]
    fn malformed_descriptors_are_refused() {
        let raw = keyframe_descriptor();
        for len in 0..raw.len() {
            if let Ok(d) = read(raw.get(..len).unwrap_or_default(), None) {
                panic!("a truncation to {len} bytes read as {d:?}");
            }
        }
        let structure = read(&raw, None).ok().and_then(|d| d.attached);
        // Template 40 does not exist (nine templates from offset 0).
        let mut unknown = l3t3_key_descriptor(true, true, 0, 0, 1, false);
        if let Some(first) = unknown.first_mut() {
            *first = 0xc0 | 40;
        }
        assert_eq!(
            read(&unknown, structure.as_ref()),
            Err(ReadError::UnknownTemplate)
        );
        // Nine spatial layers: next_layer_idc 2 eight times.
        let mut w = BitWriter::with_capacity(8);
        w.put(0b1100_0000, 8);
        w.put(0, 16);
        w.put(0b1_0000, 5);
        w.put(0, 6);
        w.put(0, 5);
        for _ in 0..8 {
            w.put(2, 2);
        }
        w.put(3, 2);
        assert_eq!(read(&w.into_bytes(), None), Err(ReadError::Impossible));
    }
}
