//! A room's membership across a link: the host admits (or refuses) each participant joining
//! at an edge, counts it as a member until it leaves, and forwards the room's kicks to it;
//! the edge waits for the answer and tells the host of each member that leaves.

use super::*;

impl LinkRooms {
    /// Asks the host to admit `me` to edge room `room`: the request's number, and the
    /// receiver its answer comes on. Refused at once if the request cannot cross the link (an
    /// identity longer than the link carries) or too many wait.
    pub(super) fn admit(
        &self,
        room: &str,
        me: &ParticipantInfo,
        via: Via,
        hidden: bool,
    ) -> Result<(u32, tokio::sync::oneshot::Receiver<Result<(), Refusal>>), Refusal> {
        let mut message = RelayControl::Admit {
            room: room.to_string(),
            request: 0,
            participant: WireParticipant {
                id: me.id.clone(),
                identity: me.identity.clone(),
                // A display name is cut to what the link carries, on a character boundary.
                name: truncated(&me.name, crate::cluster::wire::MAX_NAME),
            },
            via: wire_via(via),
            hidden,
        };
        if let Err(e) = message.encode() {
            return Err(Refusal::new(
                ErrorCode::BadMessage,
                format!("this participant cannot join at a node that does not host the room: {e}"),
            ));
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let request = {
            let mut inner = self.inner.lock();
            if inner.pending.len() >= MAX_PENDING_ADMITS {
                return Err(Refusal::new(
                    ErrorCode::ClusterUnavailable,
                    "too many joins waiting for the room's host node; join again in a few seconds",
                ));
            }
            inner.next_request = inner.next_request.wrapping_add(1);
            let request = inner.next_request;
            inner
                .pending
                .insert(request, (answer, room.to_string(), me.id.clone()));
            inner
                .asked
                .entry(room.to_string())
                .or_default()
                .insert(me.id.clone());
            request
        };
        if let RelayControl::Admit { request: r, .. } = &mut message {
            *r = request;
        }
        self.send(message);
        Ok((request, answered))
    }

    /// An admission not answered in time: forgotten (and, should the host have admitted the
    /// participant after all, it hears that it left).
    pub(super) fn abandon(&self, request: u32) {
        let pending = self.inner.lock().pending.remove(&request);
        if let Some((_, room, participant)) = pending {
            self.member_left(&room, &participant);
        }
    }

    /// A member this node asked the host to admit left (or its join failed here).
    pub(super) fn member_left(&self, room: &str, participant: &str) {
        let known = take_member(&mut self.inner.lock().asked, room, participant);
        if known {
            self.send(RelayControl::MemberLeft {
                room: room.to_string(),
                participant: participant.to_string(),
            });
        }
    }

    /// The host's answer to an admission.
    pub(super) fn on_admitted(&self, request: u32, refused: Option<String>, full: bool) {
        let Some((answer, room, participant)) = self.inner.lock().pending.remove(&request) else {
            return;
        };
        if refused.is_some() {
            // Not a member at the host: nothing to tell it when the session ends.
            take_member(&mut self.inner.lock().asked, &room, &participant);
        }
        let result = match refused {
            None => Ok(()),
            Some(reason) => Err(Refusal::new(
                if full {
                    ErrorCode::RoomFull
                } else {
                    ErrorCode::ClusterUnavailable
                },
                reason,
            )),
        };
        let _ = answer.send(result);
    }

    /// The host tells of a member elsewhere, or that one left.
    pub(super) async fn on_member(
        &self,
        room: &str,
        joined: Option<WireParticipant>,
        left: Option<String>,
    ) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(room) = state.rooms.get(room).filter(|r| r.is_edge()) else {
            return;
        };
        if !self.inner.lock().edge.contains_key(&room.name) {
            return;
        }
        if let Some(p) = joined {
            // One of this node's own members is not shown to it as a member elsewhere.
            let ours = self
                .inner
                .lock()
                .asked
                .get(&room.name)
                .is_some_and(|a| a.contains(&p.id));
            if ours {
                return;
            }
            room.add_remote(ParticipantInfo {
                id: p.id,
                identity: p.identity,
                name: p.name,
            })
            .await;
        }
        if let Some(participant) = left {
            room.remove_remote(&participant).await;
        }
    }

    /// The host disconnects a member it admitted for this node.
    pub(super) async fn on_kick(&self, room: &str, participant: &str, reason: &str) {
        let asked = self
            .inner
            .lock()
            .asked
            .get(room)
            .is_some_and(|m| m.contains(participant));
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(room) = state.rooms.get(room).filter(|r| r.is_edge() && asked) else {
            return;
        };
        if let Some((token, expires)) = room.kick(participant, reason).await
            && reason == crate::room::REMOVED_BY_ROOM_SERVICE
        {
            // It cannot come straight back here with the same token either.
            state.revoked.revoke(&token, expires);
        }
    }

    /// At the host: admits a participant joining at the other node as a member of the room
    /// here (connected `via` relay), or says why not.
    pub(super) async fn on_admit(
        self: &Arc<Self>,
        name: String,
        request: u32,
        participant: WireParticipant,
        via: WireVia,
        hidden: bool,
    ) {
        let refuse = |reason: String, full: bool| RelayControl::Admitted {
            request,
            refused: Some(reason),
            full,
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let room = state.rooms.get(&name).filter(|r| !r.is_edge());
        let subscribed = self.inner.lock().origin.contains_key(&name);
        let (Some(room), true) = (room, subscribed) else {
            self.send(refuse(
                format!("room {name:?} is not hosted there any more; join again"),
                false,
            ));
            return;
        };
        if self.inner.lock().admitted_count() >= MAX_ADMITTED_PER_LINK {
            self.send(refuse(
                "too many members relayed from one node".into(),
                false,
            ));
            return;
        }
        let (kick, mut kicks) = mpsc::unbounded_channel::<String>();
        let info = ParticipantInfo {
            id: participant.id.clone(),
            identity: participant.identity,
            name: participant.name,
        };
        let join = Join {
            info,
            hidden,
            via: match via {
                WireVia::Websocket => Via::WebSocket,
                WireVia::Whip => Via::Whip,
                WireVia::Whep => Via::Whep,
            },
            relayed: true,
            outbox: crate::outbox::outbox().0,
            kick,
            ice_servers: Vec::new(),
            resume_token: None,
            alternates: Vec::new(),
            token: (String::new(), 0),
            subscribe: None,
        };
        // Recorded before the room announces the member, so that it is never announced to
        // the node it is at.
        self.inner
            .lock()
            .admitted
            .entry(name.clone())
            .or_default()
            .insert(participant.id.clone());
        match room.join(join).await {
            Ok(_) if self.link.is_closed() || !self.inner.lock().origin.contains_key(&name) => {
                // The link closed (or the room was unsubscribed) meanwhile: nobody will say
                // when this member leaves.
                self.forget_admitted(&name, &participant.id);
                room.leave(&participant.id, Vec::new()).await;
                self.send(refuse(
                    "the room is no longer relayed to that node; join again".into(),
                    false,
                ));
            }
            Ok(_) => {
                self.send(RelayControl::Admitted {
                    request,
                    refused: None,
                    full: false,
                });
                // The room's kicks for the member go to the node that serves it (the channel
                // closes when the member leaves).
                let link = self.clone();
                tokio::spawn(async move {
                    while let Some(reason) = kicks.recv().await {
                        link.send(RelayControl::Kick {
                            room: name.clone(),
                            participant: participant.id.clone(),
                            reason,
                        });
                    }
                });
            }
            Err(e) => {
                self.forget_admitted(&name, &participant.id);
                let full = matches!(e, RoomError::Full { .. });
                self.send(refuse(e.to_string(), full));
            }
        }
    }

    /// At the host: `participant` is no longer a member admitted for the other node.
    fn forget_admitted(&self, room: &str, participant: &str) -> bool {
        take_member(&mut self.inner.lock().admitted, room, participant)
    }

    /// At the host: a member admitted for the other node left.
    pub(super) async fn on_member_left_at_host(&self, name: &str, participant: &str) {
        if !self.forget_admitted(name, participant) {
            return;
        }
        let room = self
            .inner
            .lock()
            .origin
            .get(name)
            .and_then(|o| o.room.upgrade());
        if let Some(room) = room.filter(|r| !r.is_edge()) {
            room.leave(participant, Vec::new()).await;
        }
    }
}

/// Removes `participant` from `room`'s set in `members` (and the set once empty); whether it
/// was there.
fn take_member(
    members: &mut HashMap<String, std::collections::HashSet<String>>,
    room: &str,
    participant: &str,
) -> bool {
    let Some(set) = members.get_mut(room) else {
        return false;
    };
    let known = set.remove(participant);
    if set.is_empty() {
        members.remove(room);
    }
    known
}

/// How a member is connected, as the link says it.
fn wire_via(via: Via) -> WireVia {
    match via {
        Via::WebSocket => WireVia::Websocket,
        Via::Whip => WireVia::Whip,
        Via::Whep => WireVia::Whep,
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}
