//! hubbub: live-audience services (visitor counter, chat with a live SSE
//! broadcast, buffs) in one binary with roles.

pub mod build_info;
pub mod bus;
pub mod cache;
pub mod cli;
pub mod configuration;
pub mod domain;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod roles;
pub mod startup;
pub mod storage;
pub mod streams;
pub mod telemetry;
pub mod timestamp;
