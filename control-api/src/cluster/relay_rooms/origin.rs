//! The sending side of a link's rooms: the tracks published at this node relayed to the
//! other (a relay egress per room), what it is told of the room as it changes (members at
//! the host, tracks, mutes), and what it asks of each track (layers, keyframes, repairs).

use super::*;

impl LinkRooms {
    /// The other node serves members of `name`: relays the tracks published here (at the
    /// host: all but those the other node sent; at an edge, answering its host: its own
    /// members'). The host also subscribes in turn, to receive the edge's publishers.
    pub(super) async fn room_subscribe(self: &Arc<Self>, name: String) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if self.inner.lock().origin.contains_key(&name) {
            return;
        }
        let refuse = |reason: &str| RelayControl::RoomRefused {
            room: name.clone(),
            reason: reason.to_string(),
        };
        if self.inner.lock().origin.len() >= MAX_ROOMS_PER_LINK {
            self.send(refuse("too many rooms relayed on this link"));
            return;
        }
        let Some(room) = state.rooms.get(&name) else {
            self.send(refuse("no such room on this node"));
            return;
        };
        // An edge room answers its host only (the room is not hosted here).
        let from_its_host = self
            .inner
            .lock()
            .edge
            .get(&name)
            .is_some_and(|e| e.is(&room));
        if room.is_edge() && !from_its_host {
            // Another node takes this node for the room's host: so it is if it holds the
            // room's claim (its host was lost and this node is taking it over).
            let here = match &state.cluster {
                Some(cluster) => matches!(cluster.place(&name).await, Placement::Here),
                None => false,
            };
            if !here {
                self.send(refuse("the room is not hosted on this node"));
                return;
            }
            room.become_host();
        }
        let hosted = !room.is_edge();
        let egress = match state
            .sfu
            .add_relay_egress(room.id, EGRESS_QUEUE, hosted)
            .await
        {
            Ok(egress) => egress,
            Err(e) => {
                self.send(refuse(&format!("cannot relay it: {e}")));
                return;
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.inner.lock().origin.insert(
            name.clone(),
            OriginRoom {
                egress: egress.id,
                tracks: HashMap::new(),
                layers: HashMap::new(),
                muted: HashMap::new(),
                members: std::collections::HashSet::new(),
                room: Arc::downgrade(&room),
                stop,
            },
        );
        if hosted {
            self.host_ingress(&name, &room).await;
        }
        info!(room = %name, node = %self.link.peer(), "relaying a room to another node's viewers");
        tokio::spawn(
            self.clone()
                .origin_packets(name.clone(), egress.packets, stopped.clone()),
        );
        tokio::spawn(
            self.clone()
                .origin_events(name.clone(), egress.events, stopped.clone()),
        );
        tokio::spawn(
            self.clone()
                .sync_origin(name, Arc::downgrade(&room), stopped),
        );
    }

    /// At the host: receives the edge's publishers' tracks of `room` (an ingress that carries
    /// no data: the host's egress does) and asks the edge for them.
    pub(super) async fn host_ingress(self: &Arc<Self>, name: &str, room: &Arc<Room>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if let Err(e) = self.receive_room(&state, name, room, false).await {
            warn!(room = name, reason = %e.message, "relay: cannot receive the edge's tracks");
        }
    }

    /// The other node has no member of `name` any more (or the link closed): relaying stops
    /// both ways, and at the host the members it had admitted leave.
    pub(super) async fn room_unsubscribe(&self, name: &str) {
        let Some(origin) = self.inner.lock().origin.remove(name) else {
            return;
        };
        let _ = origin.stop.send(true);
        self.inner.lock().relayed.retain(|_, (r, _)| r != name);
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let _ = state.sfu.remove_relay_egress(origin.egress).await;
        // The room itself, even if it left the registry (deleted): its members admitted for
        // the other node must leave it for it to end.
        let Some(room) = origin.room.upgrade().filter(|r| !r.is_edge()) else {
            return;
        };
        let (ingress, admitted) = {
            let mut inner = self.inner.lock();
            let ingress = inner
                .edge
                .remove(name)
                .filter(|e| e.is(&room))
                .map(|e| e.ingress);
            if ingress.is_some() {
                inner.received.retain(|_, (r, ..)| r != name);
            }
            (ingress, inner.admitted.remove(name).unwrap_or_default())
        };
        for participant in admitted {
            room.leave(&participant, Vec::new()).await;
        }
        if let Some(ingress) = ingress {
            let _ = state.sfu.remove_relay_ingress(ingress).await;
        }
    }

    /// The egress's packets, as datagrams on the link.
    pub(super) async fn origin_packets(
        self: Arc<Self>,
        name: String,
        mut packets: mpsc::Receiver<sfu::relay::RelayPacket>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut relay_ids: HashMap<TrackId, u32> = HashMap::new();
        let mut batch = Vec::with_capacity(DATAGRAM_BATCH);
        loop {
            let received = tokio::select! {
                n = packets.recv_many(&mut batch, DATAGRAM_BATCH) => n,
                _ = stopped.changed() => 0,
            };
            if received == 0 {
                return;
            }
            // One clock read per batch: the packets of a batch left the worker together.
            let sent_at_us = unix_micros();
            for packet in batch.drain(..) {
                let relay_id = match relay_ids.get(&packet.track) {
                    Some(id) => *id,
                    None => {
                        let inner = self.inner.lock();
                        let Some(id) = inner
                            .origin
                            .get(&name)
                            .and_then(|o| o.tracks.get(&packet.track))
                        else {
                            continue;
                        };
                        relay_ids.insert(packet.track, *id);
                        *id
                    }
                };
                let datagram = MediaDatagram {
                    relay_id,
                    layer: packet.layer,
                    keyframe: packet.keyframe,
                    repair: packet.repair,
                    sent_at_us,
                    rtp: &packet.rtp,
                };
                // Written once into the buffer the link sends (no scratch buffer first).
                let mut buffer = Vec::new();
                datagram.encode_into(&mut buffer);
                if self.link.send_datagram(bytes::Bytes::from(buffer)).is_err() {
                    self.counts
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The room's data messages go to the other node's members.
    pub(super) async fn origin_events(
        self: Arc<Self>,
        name: String,
        mut events: mpsc::Receiver<sfu::relay::RelayEvent>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = stopped.changed() => None,
            };
            match event {
                Some(sfu::relay::RelayEvent::Data { binary, bytes }) => {
                    if let Some(message) = data_message(&name, binary, &bytes) {
                        self.send(message);
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Tells the other node about the room as it changes: at the host, the members elsewhere
    /// than at that node; on both sides, the tracks published here (not those received from
    /// that node) and their mutes.
    pub(super) async fn sync_origin(
        self: Arc<Self>,
        name: String,
        room: Weak<Room>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut every = tokio::time::interval(SYNC_POLL);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stopped.changed() => return,
            }
            let (Some(room), Some(state)) = (room.upgrade(), self.state.upgrade()) else {
                self.room_gone(&name).await;
                return;
            };
            if !state
                .rooms
                .get(&name)
                .is_some_and(|r| Arc::ptr_eq(&r, &room))
            {
                self.room_gone(&name).await;
                return;
            }
            let snapshot = room.snapshot().await;
            // Members admitted for the other node, and tracks received from it: its own.
            let (theirs, received): (std::collections::HashSet<String>, Vec<TrackId>) = {
                let inner = self.inner.lock();
                (
                    inner.admitted.get(&name).cloned().unwrap_or_default(),
                    inner
                        .received
                        .values()
                        .filter(|(r, ..)| *r == name)
                        .map(|(_, id, _)| *id)
                        .collect(),
                )
            };
            let members: std::collections::HashSet<&str> = snapshot
                .members
                .iter()
                .map(|m| m.info.id.as_str())
                .collect();
            let ours =
                |participant: &str| !theirs.contains(participant) && members.contains(participant);
            let mut left = Vec::new();
            if !room.is_edge() {
                let visible: Vec<&ParticipantInfo> = snapshot
                    .members
                    .iter()
                    .filter(|m| !m.hidden && ours(&m.info.id))
                    .map(|m| &m.info)
                    .collect();
                let mut joined = Vec::new();
                {
                    let mut inner = self.inner.lock();
                    let Some(origin) = inner.origin.get_mut(&name) else {
                        return;
                    };
                    for m in &visible {
                        if origin.members.insert(m.id.clone()) {
                            joined.push((*m).clone());
                        }
                    }
                    let visible_ids: std::collections::HashSet<&str> =
                        visible.iter().map(|m| m.id.as_str()).collect();
                    origin.members.retain(|id| {
                        let here = visible_ids.contains(id.as_str());
                        if !here {
                            left.push(id.clone());
                        }
                        here
                    });
                }
                for p in joined {
                    self.send(RelayControl::MemberJoined {
                        room: name.clone(),
                        participant: WireParticipant {
                            id: p.id,
                            identity: p.identity,
                            name: p.name,
                        },
                    });
                }
            }
            let tracks: Vec<&RoomTrack> = snapshot
                .tracks
                .iter()
                .filter(|t| !received.contains(&t.id) && ours(&t.info.participant))
                .collect();
            let known: HashMap<TrackId, u32> = match self.inner.lock().origin.get(&name) {
                Some(o) => o.tracks.clone(),
                None => return,
            };
            for track in tracks.iter().filter(|t| !known.contains_key(&t.id)) {
                let Some(publisher) = snapshot
                    .members
                    .iter()
                    .find(|m| m.info.id == track.info.participant)
                    .map(|m| m.info.clone())
                else {
                    continue;
                };
                self.announce_track(&state, &name, track, publisher).await;
            }
            let changed: Vec<(u32, bool)> = {
                let mut inner = self.inner.lock();
                let Some(origin) = inner.origin.get_mut(&name) else {
                    return;
                };
                // (A track announced just now was announced with its mute.)
                tracks
                    .iter()
                    .filter_map(|t| {
                        let relay_id = *origin.tracks.get(&t.id)?;
                        let was = origin.muted.insert(relay_id, t.info.muted);
                        (was != Some(t.info.muted)).then_some((relay_id, t.info.muted))
                    })
                    .collect()
            };
            for (relay_id, muted) in changed {
                self.send(RelayControl::Muted { relay_id, muted });
            }
            let gone: Vec<(TrackId, u32)> = known
                .into_iter()
                .filter(|(id, _)| !tracks.iter().any(|t| t.id == *id))
                .collect();
            for (id, relay_id) in gone {
                {
                    let mut inner = self.inner.lock();
                    if let Some(origin) = inner.origin.get_mut(&name) {
                        origin.tracks.remove(&id);
                        origin.layers.remove(&relay_id);
                        origin.muted.remove(&relay_id);
                    }
                    inner.relayed.remove(&relay_id);
                }
                self.send(RelayControl::TrackRemoved { relay_id });
            }
            for participant in left {
                self.send(RelayControl::MemberLeft {
                    room: name.clone(),
                    participant,
                });
            }
        }
    }

    /// Announces a track published here to the other node (its relay id on this link).
    pub(super) async fn announce_track(
        &self,
        state: &AppState,
        name: &str,
        track: &RoomTrack,
        publisher: ParticipantInfo,
    ) {
        let Ok(codecs) = state.sfu.track_codecs(track.id).await else {
            return;
        };
        let layers = u8::try_from(track.info.simulcast.len().clamp(1, 8)).unwrap_or(1);
        let kind = if track.info.kind == "audio" {
            TrackKind::Audio
        } else {
            TrackKind::Video
        };
        let relay_id = {
            let mut inner = self.inner.lock();
            inner.next_relay_id = inner.next_relay_id.wrapping_add(1);
            let id = inner.next_relay_id;
            let Some(origin) = inner.origin.get_mut(name) else {
                return;
            };
            origin.tracks.insert(track.id, id);
            origin.layers.insert(id, (kind, 0));
            origin.muted.insert(id, track.info.muted);
            inner.relayed.insert(id, (name.to_string(), track.id));
            id
        };
        self.send(RelayControl::TrackAdded {
            room: name.to_string(),
            relay_id,
            track: RelayedTrack {
                participant: track.info.participant.clone(),
                identity: publisher.identity,
                name: publisher.name,
                kind,
                source: track.info.source.clone(),
                simulcast: track.info.simulcast.iter().take(8).cloned().collect(),
                layers,
                muted: track.info.muted,
                codecs: codecs
                    .into_iter()
                    .take(MAX_CODECS)
                    .map(|c| WireCodec {
                        pt: c.pt,
                        name: c.name,
                        clock_rate: c.clock_rate,
                        channels: c.channels,
                        fmtp: c.fmtp,
                    })
                    .collect(),
            },
        });
    }

    /// A relayed room closed here: the other node hears that its tracks ended.
    pub(super) async fn room_gone(&self, name: &str) {
        let ids: Vec<u32> = self
            .inner
            .lock()
            .origin
            .get(name)
            .map(|o| o.tracks.values().copied().collect())
            .unwrap_or_default();
        for relay_id in ids {
            self.send(RelayControl::TrackRemoved { relay_id });
        }
        self.send(RelayControl::RoomRefused {
            room: name.to_string(),
            reason: "the room closed".into(),
        });
        self.room_unsubscribe(name).await;
    }

    /// The room's administrator at the host muted a track published here: applied here, where
    /// its packets are forwarded from (the host hears of the mute as of any other).
    pub(super) async fn on_admin_mute(&self, relay_id: u32, muted: bool) {
        let found = self.inner.lock().relayed.get(&relay_id).cloned();
        if let Some((room, id)) = found {
            self.set_muted(&room, id, muted, crate::room::MutedBy::Admin)
                .await;
        }
    }

    /// What the other node asks of a track relayed from here.
    pub(super) async fn on_track_request(&self, message: RelayControl) {
        let relay_id = match &message {
            RelayControl::SetLayers { relay_id, .. }
            | RelayControl::KeyframeRequest { relay_id, .. }
            | RelayControl::Nack { relay_id, .. } => *relay_id,
            _ => return,
        };
        let found = {
            let inner = self.inner.lock();
            inner
                .relayed
                .get(&relay_id)
                .and_then(|(room, track)| inner.origin.get(room).map(|o| (o.egress, *track)))
        };
        let (Some((egress, track)), Some(state)) = (found, self.state.upgrade()) else {
            return;
        };
        let result = match message {
            RelayControl::SetLayers { layers, .. } => {
                let result = state.sfu.relay_layers(egress, track, layers).await;
                if result.is_ok() {
                    let mut inner = self.inner.lock();
                    let room = inner.relayed.get(&relay_id).map(|(r, _)| r.clone());
                    if let Some(entry) = room
                        .and_then(|r| inner.origin.get_mut(&r))
                        .and_then(|o| o.layers.get_mut(&relay_id))
                    {
                        entry.1 = layers;
                    }
                }
                result
            }
            RelayControl::KeyframeRequest { layer, .. } => {
                state.sfu.relay_keyframe(egress, track, layer).await
            }
            RelayControl::Nack { layer, seqs, .. } => {
                state.sfu.relay_nack(egress, track, layer, seqs).await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            debug!(relay_id, error = %e, "relay: request for a track that is gone");
        }
    }
}
