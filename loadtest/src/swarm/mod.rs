//! The bot swarm: a scenario (rooms, publishers, viewers, media, protocol), a run that starts
//! the bots and measures what they receive, sampling a timeline as it goes, and a report of
//! what viewers experienced and what it cost the server (a table, JSON, or an HTML page with
//! charts); and churn, for soaks.

pub mod churn;
pub mod html;
pub mod observe;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod speech;
pub mod timeline;
