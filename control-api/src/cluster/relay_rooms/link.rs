//! One relay link's control stream: reading and dispatching the other node's messages,
//! queueing this node's, the data messages either way, and what stops when the link closes.

use super::*;

impl LinkRooms {
    pub(super) fn send(&self, message: RelayControl) {
        if self.out.try_send(message).is_err() {
            warn!(peer = %self.link.peer(), "relay: the link's control queue is full; closing it");
            self.link.close("control queue full");
        }
    }

    /// Reads the other node's control stream and acts on each message; a malformed one ends
    /// the link.
    pub(super) async fn read_control(self: Arc<Self>) {
        let Ok(mut stream) = self.link.accept_uni().await else {
            return;
        };
        let mut decoder = ControlDecoder::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = match stream.read(&mut buf).await {
                Ok(Some(n)) => n,
                _ => return,
            };
            let Some(bytes) = buf.get(..read) else { return };
            if let Err(e) = decoder.push(bytes) {
                self.malformed(&e);
                return;
            }
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => self.on_message(message).await,
                    Ok(None) => break,
                    Err(e) => {
                        self.malformed(&e);
                        return;
                    }
                }
            }
        }
    }

    pub(super) fn malformed(&self, error: &crate::cluster::wire::WireError) {
        self.counts.control_refused.fetch_add(1, Ordering::Relaxed);
        warn!(peer = %self.link.peer(), %error, "relay: malformed control message; closing the link");
        self.link.close("malformed control message");
    }

    pub(super) async fn on_message(self: &Arc<Self>, message: RelayControl) {
        match message {
            RelayControl::RoomSubscribe { room } => self.room_subscribe(room).await,
            RelayControl::RoomUnsubscribe { room } => self.room_unsubscribe(&room).await,
            RelayControl::RoomRefused { room, reason } => {
                warn!(room = %room, %reason, "relay: the host refused (or stopped) relaying a room");
                let ids: Vec<u32> = self
                    .inner
                    .lock()
                    .received
                    .iter()
                    .filter(|(_, (r, ..))| *r == room)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.track_removed(id).await;
                }
            }
            RelayControl::TrackAdded {
                room,
                relay_id,
                track,
            } => self.track_added(room, relay_id, track).await,
            RelayControl::TrackRemoved { relay_id } => self.track_removed(relay_id).await,
            RelayControl::Muted { relay_id, muted } => self.on_muted(relay_id, muted).await,
            RelayControl::AdminMute { relay_id, muted } => {
                self.on_admin_mute(relay_id, muted).await;
            }
            RelayControl::Admit {
                room,
                request,
                participant,
                via,
                hidden,
            } => self.on_admit(room, request, participant, via, hidden).await,
            RelayControl::Admitted {
                request,
                refused,
                full,
            } => self.on_admitted(request, refused, full),
            RelayControl::MemberJoined { room, participant } => {
                self.on_member(&room, Some(participant), None).await;
            }
            RelayControl::MemberLeft { room, participant } => {
                self.on_member_left_at_host(&room, &participant).await;
                self.on_member(&room, None, Some(participant)).await;
            }
            RelayControl::Kick {
                room,
                participant,
                reason,
            } => self.on_kick(&room, &participant, &reason).await,
            RelayControl::Data { room, binary, data } => self.on_data(&room, binary, data).await,
            request @ (RelayControl::SetLayers { .. }
            | RelayControl::KeyframeRequest { .. }
            | RelayControl::Nack { .. }) => self.on_track_request(request).await,
        }
    }

    /// The link closed: relayed rooms stop both ways; edge rooms lose their tracks and the
    /// members shown from the host, and are returned to find the room's next host (their
    /// members stay meanwhile).
    pub(super) async fn close(&self, why: &str) -> Vec<(String, Weak<Room>)> {
        info!(peer = %self.link.peer(), reason = why, "relay: rooms over the link stop");
        let origin: Vec<String> = self.inner.lock().origin.keys().cloned().collect();
        for name in origin {
            self.room_unsubscribe(&name).await;
        }
        let received: Vec<u32> = self.inner.lock().received.keys().copied().collect();
        for id in received {
            self.track_removed(id).await;
        }
        let edges: Vec<(PeerId, Weak<Room>)> = self
            .inner
            .lock()
            .edge
            .drain()
            .map(|(_, e)| (e.ingress, e.room))
            .collect();
        // Admissions waiting for an answer are dropped unanswered: each is asked again of the
        // room's next host.
        self.inner.lock().pending.clear();
        self.inner.lock().asked.clear();
        let mut orphans = Vec::new();
        if let Some(state) = self.state.upgrade() {
            for (ingress, room) in edges {
                let _ = state.sfu.remove_relay_ingress(ingress).await;
                if let Some(room) = room.upgrade().filter(|r| r.is_edge()) {
                    room.clear_remote().await;
                    orphans.push((room.name.clone(), Arc::downgrade(&room)));
                }
            }
        }
        orphans
    }

    /// A data message from the other node's members of `room`, for the members here.
    pub(super) async fn on_data(&self, room: &str, binary: bool, data: String) {
        let bytes = if binary {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        } else {
            data.into_bytes()
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(edge) = state.rooms.get(room).map(|r| r.is_edge()) else {
            return;
        };
        // The endpoint that carries the room's data on this link: the edge's ingress, the
        // host's egress.
        let relay = {
            let inner = self.inner.lock();
            if edge {
                inner.edge.get(room).map(|e| e.ingress)
            } else {
                inner.origin.get(room).map(|o| o.egress)
            }
        };
        if let Some(relay) = relay {
            let _ = state.sfu.relay_data(relay, binary, bytes).await;
        }
    }
}

/// Writes this node's control messages on a stream of their own.
pub(super) async fn write_control(link: RelayLink, mut queue: mpsc::Receiver<RelayControl>) {
    let Ok(mut stream) = link.open_uni().await else {
        return;
    };
    while let Some(message) = queue.recv().await {
        let frame = match message.encode() {
            Ok(frame) => frame,
            Err(e) => {
                warn!(error = %e, "relay: a control message past the bounds was not sent");
                continue;
            }
        };
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// A data message for the link (`None`: longer than the link carries; dropped).
pub(super) fn data_message(room: &str, binary: bool, bytes: &[u8]) -> Option<RelayControl> {
    let data = if binary {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    } else {
        String::from_utf8(bytes.to_vec()).ok()?
    };
    (data.len() <= crate::cluster::wire::MAX_DATA).then(|| RelayControl::Data {
        room: room.to_string(),
        binary,
        data,
    })
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(super) fn shutting_down() -> Refusal {
    Refusal::new(ErrorCode::Draining, "the server is shutting down")
}
