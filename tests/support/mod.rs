//! Test support: real throwaway daemons (PostgreSQL, Redis, Mosquitto) on free
//! loopback ports in temp dirs the daemons can reach (`scratch`), stopped on drop, and hubbub itself in-process.
//! The same helpers work on Debian, in `nix develop` and in the Nix build sandbox.
#![allow(dead_code)]

pub mod app;
pub mod dns;
pub mod elastic;
pub mod follower;
pub mod haproxy;
pub mod hubbub;
pub mod mosquitto;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod scratch;
pub mod sse;
pub mod stack;
pub mod tls;
