// The chat panel. We send on our publish connection's `data` channel; the room's messages arrive
// on the server's `data` channel of the subscribe connection as {"from", "identity", "data"}
// (or, for binary messages, [n][participant id][bytes]). PROTOCOL.md, "Data messages".

import { state } from './state.js';
import { ui } from './ui.js';

export function initChat() {
  ui.chatForm.addEventListener('submit', (event) => {
    event.preventDefault();
    sendChat();
  });
}

/** The server's `data` channel on the subscribe connection. */
export function listenForChat(channel) {
  channel.binaryType = 'arraybuffer';
  channel.addEventListener('message', (event) => {
    if (typeof event.data === 'string') onText(event.data);
    else onBinary(new Uint8Array(event.data));
  });
}

function onText(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    console.warn('ignoring a data message that is not JSON');
    return;
  }
  appendChat(senderName(msg.from, msg.identity), String(msg.data ?? ''));
}

function onBinary(bytes) {
  if (bytes.length < 1 || bytes.length < 1 + bytes[0]) return;
  const from = new TextDecoder().decode(bytes.subarray(1, 1 + bytes[0]));
  const payload = bytes.subarray(1 + bytes[0]);
  appendChat(senderName(from, ''), `(binary message, ${payload.length} bytes)`);
}

function senderName(participantId, identity) {
  return state.remoteParticipants.get(participantId)?.name || identity || participantId || 'unknown';
}

/** Adds a line to the log; `kind` is '' (someone), 'own' or 'notice' (from the app). */
export function appendChat(from, text, kind = '') {
  const item = document.createElement('li');
  item.className = kind;
  item.dataset.testid = 'chat-message';
  const time = document.createElement('time');
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const who = document.createElement('span');
  who.className = 'chat-from';
  who.textContent = from;
  const body = document.createElement('span');
  body.className = 'chat-text';
  body.textContent = text;
  item.append(time, who, body);
  const atBottom = ui.chatLog.scrollHeight - ui.chatLog.scrollTop - ui.chatLog.clientHeight < 40;
  ui.chatLog.append(item);
  if (atBottom || kind === 'own') ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function sendChat() {
  const text = ui.chatInput.value.trim();
  const channel = state.dataChannel;
  if (!text || channel?.readyState !== 'open') return;
  channel.send(text);
  appendChat(`${state.displayName} (you)`, text, 'own');
  ui.chatInput.value = '';
}

export function setChatEnabled(enabled) {
  ui.chatInput.disabled = !enabled;
  ui.chatSend.disabled = !enabled;
  ui.chatInput.placeholder = enabled ? 'Message everyone'
    : state.viewer ? 'Viewers can read the chat' : 'Connecting…';
}

export function clearChat() {
  ui.chatLog.replaceChildren();
}
