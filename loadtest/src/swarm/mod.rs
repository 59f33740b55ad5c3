//! The bot swarm: a scenario (rooms, publishers, viewers, media, protocol), a run that starts
//! the bots and measures what they receive, and a report of what viewers experienced and what
//! it cost the server; and churn, for soaks.

pub mod churn;
pub mod observe;
pub mod report;
pub mod run;
pub mod scenario;
pub mod speech;
