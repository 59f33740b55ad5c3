//! The room's data messages to one subscriber: the data channel the server opens on the
//! subscribe connection, and the messages kept (a few) while it is still opening.

use std::collections::VecDeque;
use std::sync::Arc;

use str0m::Rtc;
use str0m::channel::ChannelId;

use crate::counters::WorkerCounters;
use crate::packet::DataMessage;
use crate::peer::Ctx;

/// Label of the data channel the server opens on every subscriber connection.
pub(crate) const DATA_CHANNEL_LABEL: &str = "data";
/// Data messages kept while the data channel is still opening.
const DATA_BACKLOG: usize = 64;

/// One subscriber's data channel.
#[derive(Debug, Default)]
pub(super) struct DataRelay {
    channel: Option<ChannelId>,
    backlog: VecDeque<Arc<DataMessage>>,
}

impl DataRelay {
    /// Whether the channel is open.
    pub(super) fn is_open(&self) -> bool {
        self.channel.is_some()
    }

    /// The channel opened: what waited goes out.
    pub(super) fn opened(&mut self, rtc: &mut Rtc, id: ChannelId, ctx: &Ctx<'_>) {
        self.channel = Some(id);
        while let Some(message) = self.backlog.pop_front() {
            write(rtc, id, &message, ctx);
        }
    }

    /// A channel closed (ours, or another the client opened).
    pub(super) fn closed(&mut self, id: ChannelId) {
        if self.channel == Some(id) {
            self.channel = None;
        }
    }

    /// A message for the subscriber: sent, kept until the channel opens, or dropped (counted)
    /// past the backlog.
    pub(super) fn deliver(&mut self, rtc: &mut Rtc, message: Arc<DataMessage>, ctx: &Ctx<'_>) {
        match self.channel {
            Some(id) => write(rtc, id, &message, ctx),
            None if self.backlog.len() < DATA_BACKLOG => self.backlog.push_back(message),
            None => WorkerCounters::add(&ctx.counters().data_dropped, 1),
        }
    }
}

fn write(rtc: &mut Rtc, id: ChannelId, message: &DataMessage, ctx: &Ctx<'_>) {
    let written = rtc
        .channel(id)
        .map(|mut c| c.write(message.binary, &message.bytes));
    let counters = ctx.counters();
    match written {
        Some(Ok(true)) => WorkerCounters::add(&counters.data_relayed, 1),
        _ => WorkerCounters::add(&counters.data_dropped, 1),
    }
}
