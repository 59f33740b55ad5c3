// Shared state of the call: one plain object that the other modules read and write.
// `window.sfuDemo.state` exposes it to tests (see app.js).
//
// `session` is a generation counter: it goes up whenever a connection is opened or torn down,
// and async work started for an older generation checks it and stops (see `isCurrent`).

export const state = {
  session: 0,
  /** 'idle' (join screen), 'connecting', 'joined', 'resuming' (new socket, same session) or
   * 'reconnecting' (joining again). */
  phase: 'idle',
  /** True once this call reached `joined` at least once: later drops reconnect instead of failing. */
  everJoined: false,
  /** True after the user pressed Leave, so the socket closing is not reported as an error. */
  leaving: false,
  /** The last join-refusing `error` from the server, quoted if the socket then closes. */
  fatalError: null,
  reconnectAttempts: 0,
  reconnectTimer: null,
  /** Cluster mode: the signalling URL of the node hosting the room (from `room_elsewhere`). */
  redirectUrl: null,
  /** `room_elsewhere` hops followed since the last connection loss. */
  redirects: 0,
  /** Cluster mode: signalling URLs of the other nodes (from `joined`). */
  alternates: [],
  /** Which of `alternates` to try next. */
  alternateTurn: 0,
  /** Cluster mode: this page's server stopped answering; rejoin through `alternates`. */
  homeDown: false,
  /** The token of the last join (another node of the cluster takes it too). */
  joinToken: null,

  room: '',
  displayName: '',
  /** Our identity in tokens: one per page load, so a reconnect is the same person again. */
  identity: '',
  /** An access token given by a link or pasted (production); empty: ask /dev/token. */
  token: '',
  viewer: false,
  /** Our own participant id (`PA_...`), from `joined`; new on every (re)join. */
  participantId: null,
  /** TURN relays and their time-limited credentials, from `joined`; fresh on every (re)join. */
  iceServers: [],
  /** A media connection reached `connected` in this call (else a failure means the network
   * blocks media, and reconnecting would not help). */
  mediaEverConnected: false,
  /** Media connections that failed in this call before any got through. */
  mediaFailures: 0,
  /** Milliseconds from creating each peer connection to `connected` (first time), for tests
   * and the connection figures in BENCHMARKS.md. */
  connectMs: {},
  /** When each peer connection ('publish', 'subscribe') last became `connected` (Date.now()). */
  connectedAt: {},

  /** The signalling connection (a `Signalling` from signalling.js). */
  signalling: null,
  /** The session's numbering of messages, across its sockets (a `Journal`); new on every join. */
  journal: null,
  /** From `joined`: lets a new socket carry on the session (`resume`) if the socket drops. */
  resumeToken: null,
  /** While resuming: give up and rejoin after this time (ms since the epoch). */
  resumeDeadline: 0,
  /** Sessions resumed on a new socket, and ICE restarts, in this call (for tests). */
  resumes: 0,
  iceRestarts: 0,
  lastIceRestart: 0,
  /** Server message type -> how many arrived in this call (for tests). */
  messageCounts: {},
  /** The last `error` messages from the server, {code, message} (for tests and diagnosis). */
  errors: [],

  // Local media (media.js, publish.js).
  /** Camera and microphone; kept across reconnects, stopped on leave. */
  localStream: null,
  /** The join screen's preview, handed over as `localStream` on join. */
  previewStream: null,
  /** The screen share (video and maybe audio), while sharing. */
  screenStream: null,
  micMuted: false,
  camMuted: false,

  // Publishing (publish.js).
  pubPc: null,
  /** Our `data` channel on the publish connection, used to send chat messages. */
  dataChannel: null,
  /** Our transceivers by job: mic, camera, screen, screenAudio. */
  tx: { mic: null, camera: null, screen: null, screenAudio: null },
  /** The scalability mode our camera is sent in (`?svc=`, e.g. 'L3T3_KEY'); null for simulcast. */
  cameraSvc: null,
  /** End-to-end encryption (`?e2ee=`): `{ key, stats }`, or null (e2ee.js). */
  e2ee: null,
  /** Our own mid -> track id, learned from `track_published` for our own tracks. */
  ownTrackIds: new Map(),
  /** Publish offers are made one after the other, each after the previous answer. */
  pubChain: Promise.resolve(),
  /** {resolve, reject} of the offer waiting for its `publish_answer`. */
  pendingAnswer: null,

  // Subscribing (subscribe.js).
  subPc: null,
  /** Subscribe-connection mid -> {mid, track, participant, kind}, from `subscribe_offer.tracks`. */
  subMids: new Map(),
  /** Subscribe offers are handled strictly one after the other on this promise chain. */
  subChain: Promise.resolve(),

  // The room (tiles.js).
  /** Participant id -> {id, identity, name, tile, videoEl, audioEl, tracks: Map(trackId -> MediaStreamTrack)}. */
  remoteParticipants: new Map(),
  /** Screen-share track id -> {trackId, participant, tile, videoEl}. */
  screenTiles: new Map(),
  /** Track id -> {id, participant, kind, source, simulcast, muted}, from the server's track objects. */
  trackInfo: new Map(),
  /** Track id -> the quality chosen in its tile's menu ('auto' when absent). */
  qualities: new Map(),
  /** Track id -> the last `set_quality` sent for it (JSON), so unchanged ones are not resent. */
  sentPreferences: new Map(),
  /** Track id -> the latest `layer_state` from the server: {current, target, layers, reason, waiting_keyframe}. */
  layerStates: new Map(),
  /** Participant ids in the latest `active_speakers`. */
  speakers: new Set(),
};

/** Whether async work started in generation `session` is still wanted. */
export function isCurrent(session) {
  return session === state.session;
}
