//! The receiving side of a link's rooms: a room hosted by the other node served here (an
//! edge room: its ingress, what its members ask of the host, its lifetime), and, at the host,
//! the tracks an edge's publishers send (the same ingress, without the room's data). Also
//! the media datagrams in, and an edge room finding a new host.

use super::*;

impl LinkRooms {
    /// Opens (or finds) the edge room `name`.
    pub(super) async fn edge_room(self: &Arc<Self>, name: &str) -> Result<Arc<Room>, Refusal> {
        let state = self.state.upgrade().ok_or_else(shutting_down)?;
        let _opening = self.opening.lock().await;
        let entry = self.inner.lock().edge.get(name).map(|e| e.room.clone());
        match entry.map(|r| r.upgrade()) {
            Some(Some(room))
                if state
                    .rooms
                    .get(name)
                    .is_some_and(|r| Arc::ptr_eq(&r, &room)) =>
            {
                return Ok(room);
            }
            // The room ended a moment ago and its watcher has not seen it yet: its
            // subscription ends first, so that the host relays the new one afresh.
            Some(_) => self.forget_edge(name).await,
            None => {}
        }
        let room = state.rooms.open_edge(name)?;
        self.serve_edge(&state, name, &room).await?;
        Ok(room)
    }

    /// Receives edge room `room` from the host over this link: its ingress, the subscription
    /// and the tasks that follow it.
    pub(super) async fn serve_edge(
        self: &Arc<Self>,
        state: &AppState,
        name: &str,
        room: &Arc<Room>,
    ) -> Result<(), Refusal> {
        self.receive_room(state, name, room, true).await?;
        info!(room = name, host = %self.link.peer(), "serving members of a room hosted by another node");
        tokio::spawn(
            self.clone()
                .edge_watch(name.to_string(), Arc::downgrade(room)),
        );
        Ok(())
    }

    /// Receives the tracks the other node publishes in `room` through a new relay ingress
    /// (which also carries the room's data with `carries_data`: at the edge), and asks the
    /// other node for them.
    pub(super) async fn receive_room(
        self: &Arc<Self>,
        state: &AppState,
        name: &str,
        room: &Arc<Room>,
        carries_data: bool,
    ) -> Result<(), Refusal> {
        if self.link.is_closed() {
            return Err(Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!("the link to node {} closed; join again", self.link.peer()),
            ));
        }
        let (events, event_rx) = mpsc::unbounded_channel();
        let ingress = state
            .sfu
            .add_relay_ingress(room.id, events, carries_data)
            .await
            .map_err(|e| crate::session::internal("start relaying the room", &e))?;
        let stale = {
            // Recorded and subscribed at once: whatever finds the room's link here (an
            // admission) is sent after the subscription.
            let mut inner = self.inner.lock();
            self.send(RelayControl::RoomSubscribe {
                room: name.to_string(),
            });
            inner.edge.insert(
                name.to_string(),
                EdgeRoom {
                    room: Arc::downgrade(room),
                    ingress: ingress.id,
                },
            )
        };
        if let Some(stale) = stale {
            let _ = state.sfu.remove_relay_ingress(stale.ingress).await;
        }
        tokio::spawn(
            self.clone()
                .edge_requests(name.to_string(), ingress.id, ingress.requests),
        );
        tokio::spawn(self.clone().edge_events(event_rx));
        Ok(())
    }

    /// Serves edge room `room`, whose host was lost, from its new host over this link: the
    /// host admits its members again (those it refuses are disconnected, told why).
    pub(super) async fn reattach_edge(self: &Arc<Self>, name: &str, room: &Arc<Room>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        {
            let _opening = self.opening.lock().await;
            if let Err(refusal) = self.serve_edge(&state, name, room).await {
                warn!(room = name, reason = %refusal.message, "relay: cannot serve the room from its new host");
                return;
            }
        }
        let members = room.snapshot().await.members;
        // Every request first, then the answers: one round trip for them all.
        let answers: Vec<(String, Result<_, Refusal>)> = members
            .iter()
            .filter(|m| !m.relayed)
            .map(|m| {
                (
                    m.info.id.clone(),
                    self.admit(name, &m.info, m.via, m.hidden),
                )
            })
            .collect();
        let count = answers.len();
        let deadline = tokio::time::Instant::now() + ADMIT_WITHIN;
        for (participant, answer) in answers {
            let refused = match answer {
                Ok((request, answer)) => match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Ok(Ok(()))) => continue,
                    Ok(Ok(Err(refusal))) => refusal.message,
                    _ => {
                        self.abandon(request);
                        "the room's new host did not answer; join again".to_string()
                    }
                },
                Err(refusal) => refusal.message,
            };
            room.kick(&participant, &refused).await;
        }
        info!(room = name, host = %self.link.peer(), members = count, "the room's new host serves it");
    }

    /// The ingress's requests (keyframes, lost packets) and its room's data messages go to the
    /// host.
    pub(super) async fn edge_requests(
        self: Arc<Self>,
        room: String,
        ingress: PeerId,
        mut requests: mpsc::Receiver<RelayRequest>,
    ) {
        while let Some(request) = requests.recv().await {
            let track = match &request {
                RelayRequest::Keyframe { track, .. } | RelayRequest::Nack { track, .. } => *track,
                RelayRequest::Data { binary, bytes } => {
                    if let Some(message) = data_message(&room, *binary, bytes) {
                        self.send(message);
                    }
                    continue;
                }
            };
            let Some(relay_id) = self.relay_id_of(ingress, track) else {
                continue;
            };
            self.send(match request {
                RelayRequest::Keyframe { layer, .. } => {
                    RelayControl::KeyframeRequest { relay_id, layer }
                }
                RelayRequest::Nack { layer, seqs, .. } => RelayControl::Nack {
                    relay_id,
                    layer,
                    seqs,
                },
                RelayRequest::Data { .. } => continue,
            });
        }
    }

    /// The ingress's dynacast says which layers its viewers want: the host sends only those.
    pub(super) async fn edge_events(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<PeerEvent>,
    ) {
        while let Some(event) = events.recv().await {
            if let PeerEvent::AudioLevel { peer, track, level } = event {
                self.edge_audio_level(peer, track, level).await;
                continue;
            }
            if let PeerEvent::LayersWanted {
                peer,
                track,
                active,
                ..
            } = event
                && let Some(relay_id) = self.relay_id_of(peer, track)
            {
                let layers = active
                    .iter()
                    .take(32)
                    .enumerate()
                    .filter(|(_, on)| **on)
                    .fold(0u32, |bits, (i, _)| bits | 1 << i);
                self.send(RelayControl::SetLayers { relay_id, layers });
            }
        }
    }

    /// A relayed audio track's level: its publisher speaks (or stops) in the edge room.
    pub(super) async fn edge_audio_level(&self, ingress: PeerId, track: TrackId, level: f32) {
        let room_name = self
            .inner
            .lock()
            .received
            .values()
            .find(|(_, t, i)| *t == track && *i == ingress)
            .map(|(room, ..)| room.clone());
        let (Some(room_name), Some(state)) = (room_name, self.state.upgrade()) else {
            return;
        };
        let Some(room) = state.rooms.get(&room_name) else {
            return;
        };
        let participant = room.publisher_of(track).await;
        if let Some(participant) = participant {
            room.audio_level(&participant, level).await;
        }
    }

    /// When the edge room ends (its last viewer left), unsubscribes and forgets it.
    pub(super) async fn edge_watch(self: Arc<Self>, name: String, room: Weak<Room>) {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        let mut empty_since = None;
        loop {
            every.tick().await;
            let open = room.upgrade().filter(|r| {
                self.state
                    .upgrade()
                    .and_then(|s| s.rooms.get(&name))
                    .is_some_and(|now| Arc::ptr_eq(&now, r))
            });
            if self.link.is_closed() || open.as_ref().is_some_and(|r| !r.is_edge()) {
                // Served over another link now, or hosted here.
                return;
            }
            if let Some(open) = open {
                // A room opened for a viewer whose join then failed has no member to leave
                // and end it: it ends here after a while, not relayed for nobody.
                if open.member_count() > 0 {
                    empty_since = None;
                    continue;
                }
                let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= EDGE_EMPTY_FOR
                    && let Some(state) = self.state.upgrade()
                {
                    info!(room = %name, "an edge room nobody joined is closed");
                    state.rooms.delete(&name).await;
                }
                continue;
            }
            let mine = self
                .inner
                .lock()
                .edge
                .get(&name)
                .is_some_and(|e| e.room.ptr_eq(&room));
            if mine {
                info!(room = %name, "no member of the relayed room left here; unsubscribed");
                self.forget_edge(&name).await;
            }
            return;
        }
    }

    /// Ends edge room `name`'s subscription over this link: the host hears its members left
    /// and that it is unsubscribed; its ingress and this side's egress go.
    pub(super) async fn forget_edge(&self, name: &str) {
        let (ingress, left) = {
            let mut inner = self.inner.lock();
            let ingress = inner.edge.remove(name).map(|e| e.ingress);
            inner.received.retain(|_, (r, ..)| r != name);
            (ingress, inner.asked.remove(name).unwrap_or_default())
        };
        for participant in left {
            self.send(RelayControl::MemberLeft {
                room: name.to_string(),
                participant,
            });
        }
        self.send(RelayControl::RoomUnsubscribe {
            room: name.to_string(),
        });
        self.room_unsubscribe(name).await;
        if let (Some(ingress), Some(state)) = (ingress, self.state.upgrade()) {
            let _ = state.sfu.remove_relay_ingress(ingress).await;
        }
    }

    pub(super) fn relay_id_of(&self, ingress: PeerId, track: TrackId) -> Option<u32> {
        self.inner
            .lock()
            .received
            .iter()
            .find(|(_, (_, t, i))| *t == track && *i == ingress)
            .map(|(id, _)| *id)
    }

    /// The host announced a track of an edge room: published here, all its layers asked for
    /// until the edge's dynacast says otherwise.
    pub(super) async fn track_added(&self, room_name: String, relay_id: u32, track: RelayedTrack) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let (ingress, room) = {
            let inner = self.inner.lock();
            let Some(edge) = inner.edge.get(&room_name) else {
                return;
            };
            if inner.received.contains_key(&relay_id) {
                return;
            }
            (edge.ingress, edge.room.upgrade())
        };
        let Some(room) = room else { return };
        let kind = match track.kind {
            TrackKind::Audio => sfu::TrackKind::Audio,
            TrackKind::Video => sfu::TrackKind::Video,
        };
        let codecs = track
            .codecs
            .iter()
            .take(MAX_CODECS)
            .map(|c| sfu::relay::RelayCodec {
                pt: c.pt,
                name: c.name.clone(),
                clock_rate: c.clock_rate,
                channels: c.channels,
                fmtp: c.fmtp.clone(),
            })
            .collect();
        let participant: Arc<str> = Arc::from(track.participant.as_str());
        let id = match state
            .sfu
            .relay_publish(ingress, participant, kind, track.layers.max(1), codecs)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                warn!(room = %room_name, error = %e, "relay: cannot publish a relayed track");
                return;
            }
        };
        self.inner
            .lock()
            .received
            .insert(relay_id, (room_name, id, ingress));
        let layers = u32::MAX >> (32 - u32::from(track.layers.clamp(1, 32)));
        self.send(RelayControl::SetLayers { relay_id, layers });
        let publisher = crate::protocol::ParticipantInfo {
            id: track.participant.clone(),
            identity: track.identity,
            name: track.name,
        };
        let info = TrackInfo {
            id: id.to_string(),
            participant: track.participant,
            kind: kind.as_str().to_string(),
            source: track.source,
            mid: format!("relay-{relay_id}"),
            simulcast: track.simulcast,
            muted: track.muted,
        };
        room.publish_remote_track(RoomTrack { id, info }, publisher)
            .await;
    }

    /// The host's track ended (or the room is no longer relayed): unpublished here.
    pub(super) async fn track_removed(&self, relay_id: u32) {
        let Some((room_name, id, ingress)) = self.inner.lock().received.remove(&relay_id) else {
            return;
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let _ = state.sfu.relay_unpublish(ingress, id).await;
        if let Some(room) = state.rooms.get(&room_name) {
            room.unpublish_track(id).await;
        }
    }

    /// Media from the host, batched per ingress into the media core.
    pub(super) async fn read_datagrams(self: Arc<Self>) {
        let Some(state) = self.state.upgrade().map(|s| Arc::downgrade(&s)) else {
            return;
        };
        while let Ok(first) = self.link.read_datagram().await {
            let mut datagrams = vec![first];
            while datagrams.len() < DATAGRAM_BATCH {
                match tokio::time::timeout(Duration::ZERO, self.link.read_datagram()).await {
                    Ok(Ok(more)) => datagrams.push(more),
                    _ => break,
                }
            }
            let mut batches: HashMap<PeerId, Vec<(TrackId, Vec<u8>)>> = HashMap::new();
            let now_us = unix_micros();
            {
                let inner = self.inner.lock();
                for datagram in &datagrams {
                    let Ok(media) = MediaDatagram::decode(datagram) else {
                        self.counts
                            .datagrams_refused
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some((_, track, ingress)) = inner.received.get(&media.relay_id) else {
                        self.counts
                            .datagrams_refused
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(hop) = &self.hop
                        && !media.repair
                        && now_us >= media.sent_at_us
                    {
                        hop.record((now_us - media.sent_at_us) as f64 / 1e6);
                    }
                    batches
                        .entry(*ingress)
                        .or_default()
                        .push((*track, media.rtp.to_vec()));
                }
            }
            let Some(state) = state.upgrade() else { return };
            for (ingress, packets) in batches {
                let _ = state.sfu.relay_packets(ingress, packets).await;
            }
        }
    }

    /// A relayed track was muted or unmuted at its origin: so it is here.
    pub(super) async fn on_muted(&self, relay_id: u32, muted: bool) {
        let found = self.inner.lock().received.get(&relay_id).cloned();
        if let Some((room, id, _)) = found {
            self.set_muted(&room, id, muted, crate::room::MutedBy::Publisher)
                .await;
        }
    }

    /// Mutes or unmutes `track` of room `room` here, as its publisher or the room's
    /// administrator.
    pub(super) async fn set_muted(
        &self,
        room: &str,
        track: TrackId,
        muted: bool,
        by: crate::room::MutedBy,
    ) {
        let Some(room) = self.state.upgrade().and_then(|s| s.rooms.get(room)) else {
            return;
        };
        let Some(participant) = room.publisher_of(track).await else {
            return;
        };
        if let Err(e) = room
            .set_muted(&participant, &track.to_string(), muted, by)
            .await
        {
            debug!(%track, error = %e, "relay: a relayed mute not applied");
        }
    }
}
