//! The services a `hubbub serve` process can run; each mounts its routes on the
//! shared public listener.

pub mod broadcast;
pub mod buffs;
pub mod chat;
pub mod visitors;
