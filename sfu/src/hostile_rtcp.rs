//! Reliability 15: what str0m's RTCP parser (which every RTCP packet a client sends goes
//! through after SRTCP) does with counts and lengths past the buffer. A compound packet is
//! read one sub-packet at a time, each by `Rtcp::try_from`: a sub-packet it refuses is skipped
//! and the next one read, so refusing (or reading only what is really there) is the behaviour
//! we rely on. These inputs cannot be sent through a real client (it would not build them),
//! so they are checked here, at the parser.

use str0m::rtp::rtcp::{ReportBlock, Rtcp};

/// An RTCP packet: header (version 2, `count`, `pt`) and `body`, padded to 32-bit words.
fn packet(count: u8, pt: u8, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let words = u16::try_from(body.len() / 4).unwrap_or(u16::MAX);
    let mut p = vec![0x80 | (count & 0x1f), pt];
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&body);
    p
}

#[test]
fn a_twcc_chunk_of_the_reserved_type_is_refused() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes()); // sender SSRC
    body.extend_from_slice(&2u32.to_be_bytes()); // media SSRC
    body.extend_from_slice(&100u16.to_be_bytes()); // base sequence number
    body.extend_from_slice(&20u16.to_be_bytes()); // packet status count
    body.extend_from_slice(&[0, 0, 1, 0]); // reference time, feedback count
    body.extend_from_slice(&[0xc0, 0x14]); // chunk type 0b11: reserved
    let p = packet(15, 205, &body);
    match Rtcp::try_from(p.as_slice()) {
        Err(_) => {}
        Ok(Rtcp::Twcc(twcc)) => panic!("a reserved chunk type was read: {twcc:?}"),
        Ok(other) => panic!("read as something else: {other:?}"),
    }
}

#[test]
fn twcc_claiming_more_statuses_than_its_chunks_hold_reads_no_more() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&u16::MAX.to_be_bytes()); // 65,535 statuses
    body.extend_from_slice(&[0, 0, 1, 0]);
    body.extend_from_slice(&[0x20, 0x05]); // one run-length chunk: 5 "received small"
    let p = packet(15, 205, &body);
    if let Ok(Rtcp::Twcc(twcc)) = Rtcp::try_from(p.as_slice()) {
        // Read only what is there: one chunk, no more deltas than it says arrived.
        assert!(twcc.chunks.len() <= 1 && twcc.delta.len() <= 5, "{twcc:?}");
    }
}

#[test]
fn sdes_with_many_items_or_a_short_body_is_bounded() {
    let mut body = Vec::new();
    for ssrc in 0..31u32 {
        body.extend_from_slice(&ssrc.to_be_bytes());
        for _ in 0..100 {
            body.extend_from_slice(&[1, 1, b'x']); // CNAME "x"
        }
        body.push(0);
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
    }
    let p = packet(31, 202, &body);
    if let Ok(Rtcp::SourceDescription(d)) = Rtcp::try_from(p.as_slice()) {
        assert!(d.reports.len() <= 31);
    }
    // A count of 31 chunks with the body of one: refused or read as what is there.
    let short = packet(31, 202, &body[..310]);
    if let Ok(Rtcp::SourceDescription(d)) = Rtcp::try_from(short.as_slice()) {
        assert!(d.reports.len() <= 31);
    }
}

#[test]
fn an_xr_dlrr_block_longer_than_the_packet_reads_only_what_is_there() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes()); // sender SSRC
    body.extend_from_slice(&[5, 0, 0xff, 0xff]); // DLRR, 65,535 words
    body.extend_from_slice(&[0; 12]); // one sub-block really there
    let p = packet(0, 207, &body);
    if let Ok(Rtcp::ExtendedReport(xr)) = Rtcp::try_from(p.as_slice()) {
        let items: usize = xr
            .blocks
            .iter()
            .map(|b| match b {
                ReportBlock::Dlrr(d) => d.items.len(),
                ReportBlock::Rrtr(_) => 0,
            })
            .sum();
        assert!(items <= 1, "{items} DLRR items read from one sent");
    }
}

#[test]
fn every_truncation_of_a_valid_compound_is_harmless() {
    // A sender report, a PLI and a NACK, cut at every length and read sub-packet by
    // sub-packet as the state machine does: no panic, nothing read past the cut.
    let mut sr = Vec::new();
    sr.extend_from_slice(&1u32.to_be_bytes());
    sr.extend_from_slice(&[0; 20]);
    let mut fb = Vec::new();
    fb.extend_from_slice(&1u32.to_be_bytes());
    fb.extend_from_slice(&2u32.to_be_bytes());
    let mut nack = fb.clone();
    nack.extend_from_slice(&[0, 10, 0xff, 0xff]);
    let compound = [
        packet(0, 200, &sr),
        packet(1, 206, &fb),
        packet(1, 205, &nack),
    ]
    .concat();
    for cut in 0..=compound.len() {
        let mut rest = &compound[..cut];
        while rest.len() >= 4 {
            let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let len = (words + 1) * 4;
            if len > rest.len() {
                break;
            }
            let _ = Rtcp::try_from(&rest[..len]);
            rest = &rest[len..];
        }
        let _ = Rtcp::try_from(&compound[..cut]);
    }
}
